"""Rollout-allocation benchmark: what each allocation policy buys, replayed on a real difficulty distribution.

Replays the per-step budget problem (E3, arXiv 2505.18573, section 3.1; Knapsack RL, arXiv 2509.25849) on real pass
rates: each question has a pass rate p (E3's ``all_data.parquet``: p = 1 - level / 10, level = wrong answers of
Qwen2.5-Math-7B out of 10), or a synthetic Beta mixture. Per seed, ``--prompts`` questions are drawn; every epoch
visits them in a fresh order in batches of 64 with 8 rollouts per prompt on average (total 512 per step, last
partial batch dropped). Outcomes are Bernoulli(p_i) (common random numbers across policies); with ``--improve R`` a
prompt whose group was mixed gains p <- p + R (1 - p) n_i / 8. Each policy sees only its own records (through
``e3.allocation.allocator.RolloutAllocator``, exactly as the engines run it), never p.

Policies: ``uniform`` (8 each), then every ``--policies`` entry (default e3, informative, knapsack, vip: VIP,
arXiv 2602.01601; any registered name or ``module.path:Class`` works unchanged) at caps [4,12] (E3's paper), [2,32]
and [2,128] (Knapsack RL's range), with the schedule 8 -> ... -> [lo, hi] (paper: n_update 2, 8 / [6,10] / [4,12]; wider caps use the n_update that
reaches them by the last epoch), plus ``oracle``: the informative optimiser fed the true p (a ceiling for the
mixed-rollout share, not a policy).

Metrics per step, reported on the epochs where each schedule's caps are at their widest (and over all epochs):
  * ``informative``: share of rollouts in mixed-outcome groups (E3 / our informative policy's objective);
  * ``nonzero_groups``: share of groups with a non-zero GRPO gradient, i.e. mixed (Knapsack RL's effective-gradient
    ratio; the paper reports +20-40 % over uniform);
  * ``all_wrong`` / ``all_correct``: shares of groups;
  * ``signal``: gradient-signal proxy, sum over groups of n_g x var_g (var_g = s_g (1 - s_g), the group's reward
    variance; zero for unanimous groups) divided by the step's rollouts: the mean squared advantage per rollout
    before GRPO's division by the group std;
  * ``expected_informative``: the informative share expected under the true p;
  * ``variance``: VIP's objective (arXiv 2602.01601) under the true p, the mean over prompts of p (1 - p) / (n - 1)
    (the per-prompt gradient variance of RLOO up to a common factor; lower is better).
Solver latency: the median time of one ``allocate`` call per policy and caps for batches of B = 64 and B = 512 drawn
from |D| = 40,000 prompts whose records all exist (one group of 8 each), on this machine; beside the informative
policy, ``informative-dp``: the same records solved by the reference DP (``allocate_max_separable_dp``), which
gives the same allocation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from e3.allocation.allocator import RolloutAllocator, RolloutSchedule  # noqa: E402
from e3.allocation.informative import (  # noqa: E402
    allocate_for_pass_rates,
    allocate_informative,
    informative_fraction,
    posterior_table,
)
from e3.allocation.separable import allocate_max_separable_dp  # noqa: E402
from e3.io import atomic_write_json  # noqa: E402
from e3.metrics import group_stats  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "e3" / "all_data.parquet"
BATCH, G = 64, 8
CAPS = ((4, 12), (2, 32), (2, 128))
DEFAULT_POLICIES = ("e3", "informative", "knapsack", "vip")
METRICS = ("informative", "nonzero_groups", "all_wrong", "all_correct", "signal", "expected_informative", "variance")
LABELS = {"informative": "share of rollouts in mixed groups", "nonzero_groups": "share of groups with a non-zero "
          "gradient", "all_wrong": "all-wrong group share", "all_correct": "all-correct group share",
          "signal": "gradient-signal proxy (sum n x var / rollouts)",
          "expected_informative": "expected mixed-rollout share under the true p",
          "variance": "VIP objective (mean p(1-p)/(n-1) under the true p)"}
LOWER_IS_BETTER = ("all_wrong", "all_correct", "variance")
LATENCY_SIZES, LATENCY_DATASET = (64, 512), 40_000
PAPER_NONZERO_GAIN = (0.20, 0.40)  # Knapsack RL: +20-40 % effective-gradient ratio over uniform
SYNTHETIC = ((0.3, 0.4, 4.0), (0.4, 2.0, 2.0), (0.3, 4.0, 0.4))  # (weight, a, b) of a Beta mixture


def load_pass_rates(path, column: str | None = None, level_samples: int = 10) -> np.ndarray:
    """Per-question pass rates from parquet / JSON / JSONL: ``column``, else ``pass_rate``, else 1 - level/N."""
    import pandas as pd

    path = Path(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix in (".json", ".jsonl"):
            df = pd.read_json(path, lines=path.suffix == ".jsonl")
        else:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .parquet, .json or .jsonl)")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read: {err}") from None
    if column is None:
        column = "pass_rate" if "pass_rate" in df.columns else "level" if "level" in df.columns else None
    if column is None or column not in df.columns:
        raise ValueError(f"{path}: no pass-rate column {column or 'pass_rate/level'!r} (columns: {list(df.columns)})")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    if column == "level":
        ok = np.isfinite(values) & (values >= 0) & (values <= level_samples) & (values == np.round(values))
        what = f"a wrong-answer count in 0..{level_samples}"
    else:
        ok = np.isfinite(values) & (values >= 0) & (values <= 1)
        what = "a pass rate in [0, 1]"
    if not ok.all():
        row = int(np.argmin(ok))
        bad = df[column].iloc[row]
        bad = bad.item() if hasattr(bad, "item") else bad
        raise ValueError(f"{path}: row {row}: field {column!r} = {bad!r} is not {what}")
    if values.size == 0:
        raise ValueError(f"{path}: no rows")
    return 1.0 - values / level_samples if column == "level" else values


def synthetic_pass_rates(size: int = 4096, seed: int = 12345) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.array([c[0] for c in SYNTHETIC])
    comp = rng.choice(len(SYNTHETIC), size=size, p=w / w.sum())
    return np.array([rng.beta(SYNTHETIC[c][1], SYNTHETIC[c][2]) for c in comp])


def configs(epochs: int, policies=DEFAULT_POLICIES) -> list[dict]:
    """Name, policy and schedule of every compared run; n_update reaches the caps by the last epoch (paper: 2)."""
    out = []
    for lo, hi in CAPS:
        n_update = max(2, math.ceil(max(G - lo, hi - G) / max(epochs - 1, 1)))
        for policy in [*policies, "oracle"]:
            out.append({"name": policy, "caps": [lo, hi], "n_update": n_update})
    return [{"name": "uniform", "caps": [G, G], "n_update": 0}] + out


def step_metrics(success: np.ndarray, n: np.ndarray, groups: np.ndarray, p: np.ndarray) -> dict:
    """The step's metrics (module docstring) from the (prompts x max n) success matrix and the budgets."""
    rewards = success[np.arange(success.shape[1])[None, :] < n[:, None]].astype(np.float64)
    stats = group_stats(rewards, groups)
    rate = success.sum(axis=1) / n
    return {"informative": stats["informative_rollouts"], "nonzero_groups": stats["informative_groups"],
            "all_wrong": stats["all_wrong"], "all_correct": stats["all_correct"],
            "signal": float((n * rate * (1 - rate)).sum() / n.sum()),
            "expected_informative": informative_fraction(n, p),
            "variance": float(np.mean(p * (1 - p) / (n - 1.0)))}


def simulate(p_true, cfg, seed, epochs, orders, uniforms, improve) -> list[dict]:
    """One run; returns per-epoch means of the per-step metrics plus the epoch's caps."""
    lo, hi = cfg["caps"]
    p = p_true.copy()
    oracle = cfg["name"] == "oracle"
    policy = "uniform" if oracle else cfg["name"]
    alloc = RolloutAllocator(G, policy, n_update=cfg["n_update"], n_low=min(lo, G), n_high=max(hi, G), seed=seed)
    sched: RolloutSchedule = alloc.schedule
    all_idx = np.arange(p.size)
    steps = np.arange(uniforms.shape[2])
    per_epoch = []
    for e in range(epochs):
        caps = [sched.n_min, sched.n_max]
        acc = {m: [] for m in METRICS}
        for start in range(0, p.size - BATCH + 1, BATCH):
            idx = orders[e][start:start + BATCH]
            total = BATCH * G
            n = allocate_for_pass_rates(p[idx], total, *caps) if oracle else alloc.allocate(idx, total)
            success = (uniforms[e, idx] < p[idx, None]) & (steps[None, :] < n[:, None])
            groups = np.repeat(idx, n)
            alloc.observe(groups, success[steps[None, :] < n[:, None]].astype(np.float64))  # row-major: by prompt
            for m, v in step_metrics(success, n, groups, p[idx]).items():
                acc[m].append(v)
            if improve:
                c = success.sum(axis=1)
                mixed = (c > 0) & (c < n)
                p[idx] = np.where(mixed, p[idx] + improve * (1 - p[idx]) * n / G, p[idx]).clip(0, 1)
        alloc.end_epoch(all_idx)
        per_epoch.append({"caps": caps, **{m: float(np.mean(v)) for m, v in acc.items()}})
    return per_epoch


def run(p_pool, seeds, epochs, prompts, improve, policies=DEFAULT_POLICIES) -> dict:
    cfgs = configs(epochs, policies)
    max_n = max(max(c["caps"]) for c in cfgs)
    runs = {i: [] for i in range(len(cfgs))}
    solvable = []
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 0])
        chosen = rng.choice(p_pool.size, size=min(prompts, p_pool.size), replace=False)
        p_true = p_pool[chosen]
        solvable.append(float(np.mean((p_true > 0) & (p_true < 1))))
        orders = [np.random.default_rng([seed, 1, e]).permutation(p_true.size) for e in range(epochs)]
        uniforms = np.random.default_rng([seed, 2]).random((epochs, p_true.size, max_n))
        for i, cfg in enumerate(cfgs):
            runs[i].append(simulate(p_true, cfg, seed, epochs, orders, uniforms, improve))
    return {"configs": cfgs, "runs": runs, "solvable": solvable}


def summarise(result: dict, epochs: int) -> list[dict]:
    cfgs, runs = result["configs"], result["runs"]
    uniform = runs[0]
    rows = []
    for i, cfg in enumerate(cfgs):
        final = runs[i][0][-1]["caps"]
        measured = [e for e in range(epochs) if runs[i][0][e]["caps"] == final]
        if cfg["name"] == "uniform":  # its row uses the paper schedule's widest epochs
            paper = next(j for j, c in enumerate(cfgs) if c["caps"] == [4, 12])
            measured = [e for e in range(epochs) if runs[paper][0][e]["caps"] == runs[paper][0][-1]["caps"]]
        row = {"policy": cfg["name"], "caps": cfg["caps"], "n_update": cfg["n_update"],
               "schedule": [e["caps"] for e in runs[i][0]], "measured_epochs": [e + 1 for e in measured],
               "widest": {}, "ratio": {}, "all_epochs": {}, "all_epochs_ratio": {}}
        for m in METRICS:
            val = np.array([np.mean([r[e][m] for e in measured]) for r in runs[i]])
            base = np.array([np.mean([r[e][m] for e in measured]) for r in uniform])
            val_all = np.array([np.mean([e[m] for e in r]) for r in runs[i]])
            base_all = np.array([np.mean([e[m] for e in r]) for r in uniform])
            row["widest"][m] = _ms(val)
            row["ratio"][m] = _ms(_div(val, base))
            row["all_epochs"][m] = _ms(val_all)
            row["all_epochs_ratio"][m] = _ms(_div(val_all, base_all))
        rows.append(row)
    return rows


def solver_latency(pool, specs, sizes=LATENCY_SIZES, dataset=LATENCY_DATASET, reps=5, seed=0) -> list[dict]:
    """Median seconds of one ``allocate`` call per policy x caps x batch size, |D| = ``dataset`` prompts with records.

    Every prompt has one group of 8 Bernoulli(p) outcomes in the allocator's records and the tracker has ranked all
    of them once (E3's epoch end), so each policy looks up real records; ``oracle`` times the exact solver on the
    true p; ``informative-dp`` (beside ``informative``) the reference DP on the same records, and checks that both
    give the same allocation (``agrees``).
    """
    rng = np.random.default_rng([seed, 3])
    p = pool[rng.integers(0, pool.size, dataset)]
    everyone = np.arange(dataset)
    outcomes = (rng.random((dataset, G)) < p[:, None]).astype(np.float64).ravel()
    batches = {b: [rng.choice(dataset, b, replace=False) for _ in range(reps)] for b in sizes}
    names = ["uniform", *specs, "oracle"]
    if "informative" in specs:
        names.insert(names.index("informative") + 1, "informative-dp")
    out = []
    for spec in names:
        alloc = RolloutAllocator(G, "uniform" if spec in ("oracle", "informative-dp") else spec, n_update=0, n_low=2,
                                 n_high=G)
        alloc.observe(np.repeat(everyone, G), outcomes)
        alloc.end_epoch(everyone)
        for lo, hi in CAPS:
            alloc.schedule.n_min, alloc.schedule.n_max = lo, hi
            for b in sizes:
                times, agrees = [], True
                for idx in batches[b]:
                    if spec == "informative-dp":
                        c = alloc.tracker.counts(idx).astype(np.float64)
                        s = np.where(c > 0, np.clip(alloc.tracker.accuracy(idx), 0.0, 1.0) * c, 0.0)
                    t0 = time.perf_counter()
                    if spec == "oracle":
                        allocate_for_pass_rates(p[idx], b * G, lo, hi)
                    elif spec == "informative-dp":
                        n = allocate_max_separable_dp(posterior_table(s, c, lo, hi), b * G, lo, hi)
                    else:
                        alloc.allocate(idx, b * G)
                    times.append(time.perf_counter() - t0)
                    if spec == "informative-dp":
                        agrees &= bool(np.array_equal(n, allocate_informative(s, c, b * G, lo, hi)))
                row = {"policy": spec, "caps": [lo, hi], "batch": b, "dataset": dataset,
                       "median_s": float(np.median(times)), "max_s": float(np.max(times)), "reps": len(times)}
                if spec == "informative-dp":
                    row["agrees"] = agrees
                out.append(row)
    return out


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _ms(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "per_seed": x.tolist()}


def _caps(c) -> str:
    return str(list(c)).replace(" ", "")


def format_table(rows) -> str:
    """Values (mean±std over seeds, widest epochs) and per-seed ratios to uniform (mean)."""
    w = max(12, max(len(r["policy"]) for r in rows) + 1)
    cols = [("informative", "mixed rollouts", 3), ("nonzero_groups", "non-zero groups", 3),
            ("all_wrong", "all-wrong", 3), ("all_correct", "all-correct", 3), ("signal", "signal proxy", 3),
            ("variance", "VIP variance", 4)]
    head = (f"{'policy':<{w}} {'caps':<8} {'epochs':<7}" + "".join(f" {t:<{17 + 2 * d}}" for _, t, d in cols)
            + " E[mixed] x unif")
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f" {r['widest'][m]['mean']:.{d}f}±{r['widest'][m]['std']:.{d}f} x{r['ratio'][m]['mean']:<5.2f}"
                        for m, _, d in cols)
        lines.append(f"{r['policy']:<{w}} {_caps(r['caps']):<8} {','.join(map(str, r['measured_epochs'])):<7}"
                     f"{cells} {r['ratio']['expected_informative']['mean']:.2f}")
    return "\n".join(lines)


def format_latency(lat) -> str:
    specs = list(dict.fromkeys(x["policy"] for x in lat))
    w = max(12, max(len(s) for s in specs) + 1)
    sizes = sorted({x["batch"] for x in lat})
    keys = [(tuple(c), b) for c in CAPS for b in sizes]
    head = f"{'policy':<{w}}" + "".join(f" {_caps(c) + ' B=' + str(b):<15}" for c, b in keys)
    lines = [f"solver latency per step (median ms of one allocate call, |D| = {lat[0]['dataset']:,} prompts)",
             head, "-" * len(head)]
    for s in specs:
        by = {(tuple(x["caps"]), x["batch"]): x["median_s"] for x in lat if x["policy"] == s}
        lines.append(f"{s:<{w}}" + "".join(f" {by[k] * 1e3:<15.2f}" for k in keys))
    return "\n".join(lines)


def summary_lines(rows, lat, solvable=None) -> tuple[list[str], dict]:
    """One line per metric naming the best policy (oracle excluded), Knapsack RL's claim, the latency line.

    ``solvable``: per seed, the share of drawn prompts with 0 < p < 1, the most groups any allocation can make mixed.
    """
    lines, out = [], {}
    cands = [r for r in rows if r["policy"] != "oracle"]
    for m in METRICS:
        low = m in LOWER_IS_BETTER
        best = (min if low else max)(cands, key=lambda r: r["widest"][m]["mean"])
        out[m] = {"policy": best["policy"], "caps": best["caps"], "value": best["widest"][m]["mean"],
                  "ratio": best["ratio"][m]["mean"]}
        lines.append(f"{'lowest' if low else 'best'} {LABELS[m]}: {best['widest'][m]['mean']:.3f} = "
                     f"{best['ratio'][m]['mean']:.2f}x uniform (policy {best['policy']} at {_caps(best['caps'])})")
    knap = {tuple(r["caps"]): r for r in rows if r["policy"] == "knapsack"}
    if knap:
        lo, hi = PAPER_NONZERO_GAIN
        parts, out["knapsack_vs_uniform"] = [], {}
        for m, what in (("informative", "rollouts in mixed groups"), ("nonzero_groups", "groups with a non-zero "
                                                                                           "gradient")):
            gains = {c: r["ratio"][m]["mean"] - 1 for c, r in knap.items()}
            g = gains[CAPS[-1]]
            verdict = ("reproduced" if lo <= g <= hi else "exceeded" if g > hi else
                       "not reproduced (smaller gain)" if g > 0 else "not reproduced (no gain)")
            out["knapsack_vs_uniform"][m] = {"gain": {_caps(c): v for c, v in gains.items()}, "verdict": verdict}
            parts.append(f"{what} " + ", ".join(f"{v * 100:+.0f} %" for v in gains.values()) + f" ({verdict})")
        if solvable:
            base = rows[0]["widest"]["nonzero_groups"]["per_seed"]
            ceiling = float(np.mean(np.asarray(solvable) / np.asarray(base)))
            out["nonzero_groups_ceiling"] = {"share": float(np.mean(solvable)), "ratio": ceiling}
            lines.append(f"ceiling on groups with a non-zero gradient here: {np.mean(solvable):.3f} of the prompts have "
                         f"0 < p < 1 = {ceiling:.2f}x uniform's share (no allocation can mix the others' groups)")
        lines.append(f"knapsack vs uniform at {', '.join(_caps(c) for c in knap)} (paper: +{lo * 100:.0f} to "
                     f"+{hi * 100:.0f} % effective-gradient ratio; verdict at {_caps(CAPS[-1])}): " + "; ".join(parts))
    vip = {tuple(r["caps"]): r for r in rows if r["policy"] == "vip"}
    if vip:
        what = (("variance", "VIP objective"), ("informative", "rollouts in mixed groups"), ("signal", "signal proxy"))
        out["vip_vs_uniform"] = {m: {_caps(c): r["ratio"][m]["mean"] for c, r in vip.items()} for m, _ in what}
        lines.append(f"vip vs uniform at {', '.join(_caps(c) for c in vip)}: " + "; ".join(
            f"{label} " + ", ".join(f"x{r['ratio'][m]['mean']:.2f}" for r in vip.values()) for m, label in what))
    if lat:
        b = max(x["batch"] for x in lat)
        big = [x for x in lat if x["batch"] == b and tuple(x["caps"]) == CAPS[-1] and x["policy"] != "informative-dp"]
        lines.append(f"solver latency per step at B = {b}, caps {_caps(CAPS[-1])}, |D| = "
                     f"{lat[0]['dataset']:,}: " + ", ".join(f"{x['policy']} {x['median_s'] * 1e3:.1f} ms" for x in big)
                     + f"; slowest {max(big, key=lambda x: x['median_s'])['policy']}")
        dp = {(tuple(x["caps"]), x["batch"]): x for x in lat if x["policy"] == "informative-dp"}
        fast = {(tuple(x["caps"]), x["batch"]): x for x in lat if x["policy"] == "informative"}
        if dp and fast:
            key = (CAPS[-1], b)
            ratio = dp[key]["median_s"] / fast[key]["median_s"]
            same = all(x["agrees"] for x in dp.values())
            out["informative_vs_dp"] = {"ratio": ratio, "agrees": same}
            lines.append(f"informative at B = {b}, caps {_caps(CAPS[-1])}: exact solver "
                         f"{fast[key]['median_s'] * 1e3:.1f} ms vs its reference DP {dp[key]['median_s'] * 1e3:.1f} ms = {ratio:.0f}x faster; same "
                         f"allocations in every timed call: {'yes' if same else 'NO'}")
    return lines, out


def write_json(path, obj) -> None:
    atomic_write_json(path, obj, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help=f"parquet/JSON/JSONL with a pass rate per question (default: {DEFAULT_DATA} "
                    "if present, else a synthetic Beta mixture)")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic Beta mixture even if data exists")
    ap.add_argument("--pass-rate-column", help="column with pass rates in [0, 1] (default: pass_rate, else level)")
    ap.add_argument("--level-samples", type=int, default=10, help="samples behind `level` (p = 1 - level / N)")
    ap.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES),
                    help="allocation policies compared with uniform and the oracle: registered names or "
                         "module.path:Class (default: %(default)s)")
    ap.add_argument("--seeds", type=int, help="number of seeds (default 5; 3 with --quick)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (>= 2: caps widen after epoch 1)")
    ap.add_argument("--prompts", type=int, help="questions drawn per seed (default 4096; 640 with --quick)")
    ap.add_argument("--improve", type=float, nargs="?", const=0.05, default=0.0,
                    help="pass rates rise by R (1 - p) n/8 after a mixed group (bare flag: R = 0.05)")
    ap.add_argument("--latency-reps", type=int, help="allocate calls timed per cell (default 5; 3 with --quick, "
                    "which times B = 64 only; 0 skips the latency table)")
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 20 s)")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 5)
    prompts = args.prompts or (640 if args.quick else 4096)
    reps = args.latency_reps if args.latency_reps is not None else (3 if args.quick else 5)
    if args.epochs < 2 or seeds < 1 or prompts < BATCH or not 0 <= args.improve <= 1 or reps < 0:
        ap.error(f"need --epochs >= 2, --seeds >= 1, --prompts >= {BATCH}, 0 <= --improve <= 1, --latency-reps >= 0")
    policies = list(dict.fromkeys(p for p in args.policies if p not in ("uniform", "oracle")))
    try:  # resolve every policy before any work, so that a typo fails at once, naming the policy
        for spec in policies:
            RolloutAllocator(G, spec)
    except ValueError as err:
        print(f"error: --policies: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.data or (DEFAULT_DATA.exists() and not args.synthetic):
        source = str(args.data or DEFAULT_DATA)
        try:
            pool = load_pass_rates(source, args.pass_rate_column, args.level_samples)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        source = "synthetic Beta mixture " + " + ".join(f"{w}*Beta({a},{b})" for w, a, b in SYNTHETIC)
        pool = synthetic_pass_rates()
    print(f"data: {source}: {pool.size} questions, mean p {pool.mean():.3f}, p=0: {np.mean(pool == 0):.1%}, "
          f"p=1: {np.mean(pool == 1):.1%}")
    print(f"{seeds} seeds x {min(prompts, pool.size)} prompts x {args.epochs} epochs, batch {BATCH}, "
          f"{G} rollouts/prompt on average, improve={args.improve}")
    result = run(pool, seeds, args.epochs, prompts, args.improve, policies)
    rows = summarise(result, args.epochs)
    replay_s = time.perf_counter() - t0
    print("values: mean±std over seeds on the epochs listed (caps at their widest); xR = per-seed ratio to uniform, "
          "mean.\nmixed rollouts = share of rollouts in mixed-outcome groups; non-zero groups = share of groups with a "
          "non-zero GRPO gradient;\nsignal proxy = sum over groups of n x reward variance / rollouts; E[mixed] = "
          "mixed-rollout share expected under the true p.\noracle = the informative optimiser given the true p "
          "(a ceiling, not a policy).")
    seen = {}
    for r in rows[1:]:
        seen.setdefault(str(r["caps"]), r)
    print("schedules (caps per epoch): " + "; ".join(
        " -> ".join(_caps(c) for c in r["schedule"]) + f" (n_update {r['n_update']})" for r in seen.values()))
    print(format_table(rows))
    sizes = LATENCY_SIZES[:1] if args.quick else LATENCY_SIZES
    lat = solver_latency(pool, policies, sizes=sizes, reps=reps) if reps else []
    if lat:
        print(format_latency(lat))
    elapsed = time.perf_counter() - t0
    print(f"elapsed {elapsed:.1f} s (replay {replay_s:.1f} s, latency {elapsed - replay_s:.1f} s)")
    lines, summary = summary_lines(rows, lat, result["solvable"])
    cands = [r for r in rows if r["caps"] == [4, 12] and r["policy"] not in ("uniform", "oracle")]
    best = max(cands, key=lambda r: r["ratio"]["informative"]["mean"])
    if args.output:
        write_json(args.output, {"data": source, "questions": int(pool.size), "seeds": seeds, "epochs": args.epochs,
                                 "prompts": min(prompts, pool.size), "batch": BATCH, "rollouts_per_prompt": G,
                                 "improve": args.improve, "policies": policies, "elapsed_s": elapsed, "rows": rows,
                                 "latency": lat, "summary": summary,
                                 "best_412": {"policy": best["policy"],
                                              "ratio": best["ratio"]["informative"]["mean"]}})
    print("\n".join(lines))
    print(f"best informative-rollout ratio vs uniform at [4,12]: {best['ratio']['informative']['mean']:.2f} "
          f"(policy {best['policy']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
