"""Rollout-allocation benchmark: how many rollouts land in mixed-outcome (gradient-carrying) groups?

Replays E3's budget problem (arXiv 2505.18573, section 3.1) on a real difficulty distribution: each question has a
pass rate p (E3's ``all_data.parquet``: p = 1 - level / 10, level = wrong answers of Qwen2.5-Math-7B out of 10), or a
synthetic Beta mixture. Per seed, ``--prompts`` questions are drawn; every epoch visits them in a fresh order in
batches of 64 with 8 rollouts per prompt on average (total 512 per step, last partial batch dropped). Outcomes are
Bernoulli(p_i) (common random numbers across policies); with ``--improve R`` a prompt whose group was mixed gains
p <- p + R (1 - p) n_i / 8. Each policy sees only its own tracker (``e3.allocation.RolloutAllocator``), never p.

Policies: every ``e3.config.ALLOCATION_POLICIES`` entry through ``RolloutAllocator`` with the schedule 8 -> ... ->
[lo, hi] (paper: n_update 2, 8 / [6,10] / [4,12]; wider caps use the n_update that reaches them by the last epoch),
plus "oracle": the informative optimiser fed the true p (a ceiling, not a policy). Metrics (``e3.metrics.group_stats``
per step): informative-rollout fraction, all-wrong and all-correct group shares; also the expected informative
fraction under the true p. Reported on the epochs where each schedule's caps are at their widest, and over all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e3.allocation import RolloutAllocator, RolloutSchedule  # noqa: E402
from e3.allocation_informative import allocate_for_pass_rates, informative_fraction  # noqa: E402
from e3.config import ALLOCATION_POLICIES  # noqa: E402
from e3.io import atomic_write_json  # noqa: E402
from e3.metrics import group_stats  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "e3" / "all_data.parquet"
BATCH, G = 64, 8
CAPS = ((4, 12), (2, 16), (2, 32))
METRICS = ("informative", "expected_informative", "all_wrong", "all_correct")
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


def configs(epochs: int) -> list[dict]:
    """Name, policy and schedule of every compared run; n_update reaches the caps by the last epoch (paper: 2)."""
    out = []
    for lo, hi in CAPS:
        n_update = max(2, math.ceil(max(G - lo, hi - G) / max(epochs - 1, 1)))
        for policy in [p for p in ALLOCATION_POLICIES if p != "uniform"] + ["oracle"]:
            out.append({"name": policy, "caps": [lo, hi], "n_update": n_update})
    return [{"name": "uniform", "caps": [G, G], "n_update": 0}] + out


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
            mask = steps[None, :] < n[:, None]
            success = (uniforms[e, idx] < p[idx, None]) & mask
            rewards = success[mask].astype(np.float64)  # row-major: rollouts of idx[0], then idx[1], ...
            groups = np.repeat(idx, n)
            alloc.observe(groups, rewards)
            stats = group_stats(rewards, groups)
            acc["informative"].append(stats["informative_rollouts"])
            acc["all_wrong"].append(stats["all_wrong"])
            acc["all_correct"].append(stats["all_correct"])
            acc["expected_informative"].append(informative_fraction(n, p[idx]))
            if improve:
                c = success.sum(axis=1)
                mixed = (c > 0) & (c < n)
                p[idx] = np.where(mixed, p[idx] + improve * (1 - p[idx]) * n / G, p[idx]).clip(0, 1)
        alloc.end_epoch(all_idx)
        per_epoch.append({"caps": caps, **{m: float(np.mean(v)) for m, v in acc.items()}})
    return per_epoch


def run(p_pool, seeds, epochs, prompts, improve) -> dict:
    cfgs = configs(epochs)
    max_n = max(max(c["caps"]) for c in cfgs)
    runs = {i: [] for i in range(len(cfgs))}
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 0])
        chosen = rng.choice(p_pool.size, size=min(prompts, p_pool.size), replace=False)
        p_true = p_pool[chosen]
        orders = [np.random.default_rng([seed, 1, e]).permutation(p_true.size) for e in range(epochs)]
        uniforms = np.random.default_rng([seed, 2]).random((epochs, p_true.size, max_n))
        for i, cfg in enumerate(cfgs):
            runs[i].append(simulate(p_true, cfg, seed, epochs, orders, uniforms, improve))
    return {"configs": cfgs, "runs": runs}


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
               "schedule": [e["caps"] for e in runs[i][0]],
               "measured_epochs": [e + 1 for e in measured], "widest": {}, "ratio": {}, "all_epochs_ratio": {}}
        for m in METRICS:
            val = np.array([np.mean([r[e][m] for e in measured]) for r in runs[i]])
            base = np.array([np.mean([r[e][m] for e in measured]) for r in uniform])
            val_all = np.array([np.mean([e[m] for e in r]) for r in runs[i]])
            base_all = np.array([np.mean([e[m] for e in r]) for r in uniform])
            row["widest"][m] = _ms(val)
            row["ratio"][m] = _ms(_div(val, base))
            row["all_epochs"] = row.get("all_epochs", {})
            row["all_epochs"][m] = _ms(val_all)
            row["all_epochs_ratio"][m] = _ms(_div(val_all, base_all))
        rows.append(row)
    return rows


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _ms(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "per_seed": x.tolist()}


def format_table(rows) -> str:
    f = lambda d, k=3: f"{d['mean']:.{k}f}±{d['std']:.{k}f}"  # noqa: E731
    head = (f"{'policy':<12} {'caps':<8} {'epochs':<7} {'informative':<13} {'x unif':<11} {'E[inf] x unif':<13}"
            f" {'all-wrong':<13} {'x unif':<11} {'all-correct':<13} {'x unif':<11} {'all-ep inf x':<12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        w, q = r["widest"], r["ratio"]
        lines.append(f"{r['policy']:<12} {str(r['caps']).replace(' ', ''):<8} "
                     f"{','.join(map(str, r['measured_epochs'])):<7} {f(w['informative']):<13} "
                     f"{f(q['informative'], 2):<11} {f(q['expected_informative'], 2):<13} {f(w['all_wrong']):<13} "
                     f"{f(q['all_wrong'], 2):<11} {f(w['all_correct']):<13} {f(q['all_correct'], 2):<11} "
                     f"{f(r['all_epochs_ratio']['informative'], 2):<12}")
    return "\n".join(lines)


def write_json(path, obj) -> None:
    atomic_write_json(path, obj, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help=f"parquet/JSON/JSONL with a pass rate per question (default: {DEFAULT_DATA} "
                    "if present, else a synthetic Beta mixture)")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic Beta mixture even if data exists")
    ap.add_argument("--pass-rate-column", help="column with pass rates in [0, 1] (default: pass_rate, else level)")
    ap.add_argument("--level-samples", type=int, default=10, help="samples behind `level` (p = 1 - level / N)")
    ap.add_argument("--seeds", type=int, help="number of seeds (default 5; 3 with --quick)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (>= 2: caps widen after epoch 1)")
    ap.add_argument("--prompts", type=int, help="questions drawn per seed (default 4096; 640 with --quick)")
    ap.add_argument("--improve", type=float, nargs="?", const=0.05, default=0.0,
                    help="pass rates rise by R (1 - p) n/8 after a mixed group (bare flag: R = 0.05)")
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 20 s)")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 5)
    prompts = args.prompts or (640 if args.quick else 4096)
    if args.epochs < 2 or seeds < 1 or prompts < BATCH or not 0 <= args.improve <= 1:
        ap.error(f"need --epochs >= 2, --seeds >= 1, --prompts >= {BATCH}, 0 <= --improve <= 1")
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
    rows = summarise(run(pool, seeds, args.epochs, prompts, args.improve), args.epochs)
    elapsed = time.perf_counter() - t0
    print("informative = share of rollouts in mixed groups (realised); x unif = per-seed ratio to uniform, "
          "mean±std over seeds;\nE[inf] = expected under the true p; 'epochs' = the epochs averaged (caps at their "
          "widest); all-ep = averaged over all epochs.\noracle = the informative optimiser given the true p "
          "(a ceiling, not a policy).")
    seen = {}
    for r in rows[1:]:
        seen.setdefault(str(r["caps"]), r)
    print("schedules (caps per epoch): " + "; ".join(
        " -> ".join(str(c).replace(" ", "") for c in r["schedule"]) + f" (n_update {r['n_update']})"
        for r in seen.values()))
    print(format_table(rows))
    print(f"elapsed {elapsed:.1f} s")
    cands = [r for r in rows if r["caps"] == [4, 12] and r["policy"] not in ("uniform", "oracle")]
    best = max(cands, key=lambda r: r["ratio"]["informative"]["mean"])
    if args.output:
        write_json(args.output, {"data": source, "questions": int(pool.size), "seeds": seeds, "epochs": args.epochs,
                                 "prompts": min(prompts, pool.size), "batch": BATCH, "rollouts_per_prompt": G,
                                 "improve": args.improve, "elapsed_s": elapsed, "rows": rows,
                                 "best_412": {"policy": best["policy"],
                                              "ratio": best["ratio"]["informative"]["mean"]}})
    print(f"best informative-rollout ratio vs uniform at [4,12]: {best['ratio']['informative']['mean']:.2f} "
          f"(policy {best['policy']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
