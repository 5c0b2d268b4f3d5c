"""Learning-efficiency benchmark: accuracy versus cumulative rollouts on the local engine's embedded task.

Every configuration (``bench/common.py``: GRPO, E3 = dynamic rollout + temperature + annealing, PREPO, E3+PREPO,
the informative-rollout allocator inside E3, ...) runs with the same seeds, the same warm start per seed, the same
prompts per step, rollout.n = 8 on average and the same number of steps, hence the same total rollouts. From each
run's ``metrics.jsonl``: cumulative rollouts = sum of ``rollout/n_total`` up to the step, ``val/accuracy`` (held-out
problems x ``val.n_samples`` samples at T = 1) where validation ran.

Targets (per seed, paired: same warm start and validation problems):
  * ``full``: the GRPO run's final validation accuracy (PREPO's "same accuracy with fewer rollouts");
  * ``half``: the warm start's accuracy plus half of GRPO's final gain (reached mid-run: less censored, less noisy).
Rollouts to a target = first crossing of the validation curve, linearly interpolated between validation points;
ratio = GRPO's rollouts to the same target / the configuration's (> 1: fewer rollouts than GRPO). Not reached within
the budget counts as not reached (reported, left out of the mean).

pass@k (``val.pass_k``, k <= ``val.n_samples``; e.g. ``val.n_samples=64`` for k up to 64): every validation logs
the unbiased ``val/pass@K`` with its standard error over problems; the bench prints pass@1 and the largest pass@k
at the start (warm start) and the end of every configuration (mean ± s.e. over seeds, the paired change, how many
seeds end below the start, the difference to GRPO on the same seed), one line per run with the paired change ±
its s.e. over problems, and draws ``pass_at_k.png`` (start vs end, and the change, per k),
``entropy_temperature_all_wrong.png`` and ``pass_at_k_vs_rollouts.png``.

Tasks: ``--task arithmetic`` (``e3/config/local/default.yaml``) or ``--task chain`` (``e3/config/local/chain.yaml``, the
scratchpad task built so that GRPO narrows the policy); each configuration's overlay goes on top of the task's file.

Control: continued supervised training from the same warm start on the same (noisy) demonstrations, at equal
forward+backward work: as many optimizer steps as the RL runs, each on 256 sequences of the same length
(an RL step backpropagates through 256 rollouts; it also pays for generation, which the control does not). Learning
rate = the warm start's final one (``warm_start.min_lr``), constant; evaluated like the RL runs.

``python bench/learning.py [--quick] [--task chain] [--seeds 3] [--configs grpo e3 ...] [--steps 150] [--jobs 2]
[--out DIR] [key=value ...]``
"""

from __future__ import annotations

import argparse
import math
import re
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from common import (CONFIGS, TASKS, compose, curve, fmt, machine, rollouts_to_target,  # noqa: E402
                          run_overrides, run_phases, spread, table, write_json_atomic)
from e3.io import atomic_write_jsonl  # noqa: E402

DEFAULT_CONFIGS = ["grpo", "e3", "prepo", "e3_prepo", "informative"]


def settings(args) -> list[str]:
    """Dotted overrides shared by every run of this invocation (and the control)."""
    quick = ["trainer.total_steps=6", "trainer.val_every=3", "task.val_size=90", "val.n_samples=2",
             "val.greedy=false", "rollout.batch_size=16", "warm_start.steps=20", "task.train_size=256"]
    if args.task != "arithmetic":
        quick += ["val.n_samples=4", "task.report_samples=2"]
    ov = run_overrides(quick if args.quick else None, args.steps, args.val_every)
    if args.warm_start_cache:
        ov.append(f"warm_start.cache_dir={args.warm_start_cache}")
    return ov + list(args.override or [])


def run_config(name: str, seed: int, run_dir: str, overrides: list[str], task: str = "arithmetic") -> dict:
    """One local-engine run (fresh run directory); returns its metrics and wall time."""
    from e3.engines.local.engine import run

    t0 = time.perf_counter()
    report = [] if name == "grpo" else ["task.report_samples=0"]  # the start-up report once per seed (GRPO's run)
    res = run(compose(name, task, [f"seed={seed}", *report, *overrides]), run_dir=run_dir, quiet=True)
    return {"name": name, "seed": seed, "run_dir": res.run_dir, "metrics": res.metrics,
            "seconds": time.perf_counter() - t0}


def run_job(kind: str, name: str, seed: int, run_dir: str, overrides: list[str], task: str = "arithmetic") -> dict:
    """One run of the bench (a process-pool task): an RL configuration or the supervised control."""
    if kind == "rl":
        return run_config(name, seed, run_dir, overrides, task)
    return run_sft_control(seed, run_dir, overrides, task)


def run_sft_control(seed: int, run_dir: str, overrides: list[str], task: str = "arithmetic") -> dict:
    """Continued supervised training from the seed's warm start, evaluated like the RL runs (see module doc)."""
    from omegaconf import OmegaConf

    from e3.engines.local.engine import LocalEngine, evaluate

    cfg = compose("grpo", task, [f"seed={seed}", *overrides])
    os.makedirs(run_dir, exist_ok=True)
    eng = LocalEngine(cfg, run_dir, quiet=True)
    t0 = time.perf_counter()
    info = eng.do_warm_start()
    steps, every = int(cfg.trainer.total_steps), int(cfg.trainer.val_every)
    per_step = int(cfg.rollout.batch_size) * int(cfg.rollout.n)
    ws = OmegaConf.to_container(cfg.warm_start)
    ws.update({"steps": steps, "batch_size": per_step, "lr": ws["min_lr"], "warmup_steps": 0,
               "cache_dir": os.path.join(run_dir, "cache")})
    points, base = [], {}

    def val(step):
        m, per = evaluate(eng.model, eng.tok, eng.val_rows, cfg, eng.device, cfg.seed * 1_000_003 + step,
                          base or None, score_fn=eng.score)
        if step == 0:
            base.update(per)
        done = points[-1]["step"] if points else 0
        points.append({"step": step, "rollout/n_total": per_step * (step - done), **m})  # sequences since last point
        eng.model.train()

    val(0)
    t_train = time.perf_counter()

    def progress(i, total, loss):
        if i % every == 0 or i == total:
            val(i)

    eng.run_warm_start(ws, cfg.seed + 104729, {"bench": "sft-control", "seed": seed, "ws": ws}, progress)
    shutil.rmtree(os.path.join(run_dir, "cache"), ignore_errors=True)
    atomic_write_jsonl(os.path.join(run_dir, "metrics.jsonl"), points)  # complete runs only
    return {"name": "sft_control", "seed": seed, "run_dir": run_dir, "metrics": points, "warm_start": info,
            "seconds": time.perf_counter() - t0, "train_seconds": time.perf_counter() - t_train}


def load_runs(dirs: list[str]) -> list[dict]:
    """Completed runs found under ``dirs`` (subdirectories ``<config>-seed<N>``), for re-analysis of a bench run.

    An RL run counts when its metrics reach its config's ``trainer.total_steps``; a control run writes its
    metrics.jsonl only when complete.
    """
    from omegaconf import OmegaConf

    from e3.io import read_jsonl

    runs = []
    for d in dirs:
        for sub in sorted(Path(d).iterdir()):
            m = re.fullmatch(r"(.+)-seed(\d+)", sub.name)
            if not m or not (sub / "metrics.jsonl").is_file():
                continue
            metrics = read_jsonl(sub / "metrics.jsonl")
            if (sub / "config.yaml").is_file():
                want = int(OmegaConf.load(sub / "config.yaml").trainer.total_steps)
                if not metrics or metrics[-1]["step"] != want:
                    print(f"  skipping incomplete run {sub} (step {metrics[-1]['step'] if metrics else 0}/{want})")
                    continue
            runs.append({"name": m.group(1), "seed": int(m.group(2)), "run_dir": str(sub), "metrics": metrics,
                         "seconds": math.nan})
    return runs


def analyse(runs: list[dict], configs: list[str], seeds: list[int]) -> dict:
    by = {(r["name"], r["seed"]): r for r in runs}
    out = {"per_run": {}, "summary": {}}
    targets = {}
    for s in seeds:
        g = by.get(("grpo", s))
        if g is None:
            continue
        _, x, y = curve(g["metrics"])
        targets[s] = {"start": float(y[0]), "full": float(y[-1]), "half": float(y[0] + 0.5 * (y[-1] - y[0]))}
    out["targets"] = targets
    names = [c for c in configs] + (["sft_control"] if any(r["name"] == "sft_control" for r in runs) else [])
    for name in names:
        rows = []
        for s in seeds:
            r = by.get((name, s))
            if r is None:
                continue
            steps, x, y = curve(r["metrics"])
            m_last = [m for m in r["metrics"] if "val/accuracy" in m][-1]
            row = {"seed": s, "steps": steps.tolist(), "rollouts": x.tolist(), "accuracy": y.tolist(),
                   "final": float(y[-1]), "gain": float(y[-1] - y[0]),
                   "gain_stderr": float(m_last.get("val/accuracy_delta_stderr", math.nan)),
                   "total_rollouts": float(x[-1]), "seconds": r["seconds"]}
            train = [m for m in r["metrics"] if m["step"] > 0 and "groups/informative_rollouts" in m]
            if train:
                row["informative_rollouts"] = float(np.mean([m["groups/informative_rollouts"] for m in train]))
                row["all_wrong"] = float(np.mean([m["groups/all_wrong"] for m in train]))
                row["all_correct"] = float(np.mean([m["groups/all_correct"] for m in train]))
                row["step_seconds"] = float(np.median([m["time/step"] for m in train]))
                row["curves"] = {key.split("/")[-1]: [float(m[key]) for m in train]
                                 for key in ("rollout/entropy", "rollout/temperature", "groups/all_wrong")}
            row.update(pass_k_points(r["metrics"]))
            if s in targets:
                g = by[("grpo", s)]
                _, gx, gy = curve(g["metrics"])
                for t in ("full", "half"):
                    need = rollouts_to_target(x, y, targets[s][t])
                    g_need = rollouts_to_target(gx, gy, targets[s][t])
                    row[f"rollouts_to_{t}"] = need
                    row[f"ratio_{t}"] = g_need / need if math.isfinite(need) and need > 0 else math.nan
            rows.append(row)
        if not rows:
            continue
        out["per_run"][name] = rows
        summ = {k: spread([r[k] for r in rows if k in r]) for k in
                ("final", "gain", "informative_rollouts", "all_wrong", "all_correct", "step_seconds",
                 "rollouts_to_full", "rollouts_to_half", "ratio_full", "ratio_half")}
        summ["seeds"] = len(rows)
        summ["pass_k"] = pass_k_summary(rows, out["per_run"].get("grpo", []))
        if all("curves" in r for r in rows):
            summ["entropy_first10"] = spread([np.mean(r["curves"]["entropy"][:10]) for r in rows])
            summ["entropy_last10"] = spread([np.mean(r["curves"]["entropy"][-10:]) for r in rows])
        out["summary"][name] = summ
    return out


def pass_k_points(metrics: list[dict]) -> dict:
    """pass@k at every validation of a run: {"pass_k": {k: {start, end, delta, delta_stderr, curve}}}."""
    vals = [m for m in metrics if "val/accuracy" in m]
    ks = sorted(int(k.split("@")[1]) for k in vals[0] if re.fullmatch(r"val/pass@\d+", k)) if vals else []
    if not ks:
        return {}
    out = {}
    for k in ks:
        key = f"val/pass@{k}"
        first, last = vals[0], vals[-1]
        out[k] = {"start": float(first[key]), "end": float(last[key]),
                  "start_stderr": float(first[f"{key}_stderr"]), "end_stderr": float(last[f"{key}_stderr"]),
                  "delta": float(last.get(f"{key}_delta", last[key] - first[key])),
                  "delta_stderr": float(last.get(f"{key}_delta_stderr", math.nan)),
                  "curve": [float(v[key]) for v in vals]}
    return {"pass_k": out}


def read_levels(run_dir: str) -> list:
    """``task.levels`` of a run, from the config.yaml the engine saved in its run directory."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    return list(OmegaConf.load(path).task.levels) if path.is_file() else []


def mean_se(values) -> dict:
    """Mean over seeds with its standard error (sample std / sqrt(seeds))."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": math.nan, "se": math.nan, "n": 0}
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan,
            "n": int(v.size)}


def pass_k_summary(rows: list[dict], grpo_rows: list[dict]) -> dict:
    """Per k: start, end and paired change (mean ± s.e. over seeds), seeds whose end is below the start, the
    problem-sampling s.e. of the mean change, and the end minus GRPO's end on the same seed."""
    rows = [r for r in rows if "pass_k" in r]
    if not rows:
        return {}
    grpo = {g["seed"]: g for g in grpo_rows if "pass_k" in g}
    out = {}
    for k in rows[0]["pass_k"]:
        pk = [r["pass_k"][k] for r in rows if k in r["pass_k"]]
        vs = [r["pass_k"][k]["end"] - grpo[r["seed"]]["pass_k"][k]["end"] for r in rows
              if r["seed"] in grpo and k in grpo[r["seed"]]["pass_k"]]
        out[k] = {"start": mean_se([p["start"] for p in pk]), "end": mean_se([p["end"] for p in pk]),
                  "delta": mean_se([p["delta"] for p in pk]),
                  "delta_problem_se": float(math.sqrt(sum(p["delta_stderr"] ** 2 for p in pk)) / len(pk)),
                  "seeds_below_start": int(sum(p["delta"] < 0 for p in pk)), "seeds": len(pk),
                  "end_minus_grpo": mean_se(vs)}
    return out


def ms(d: dict, digits: int = 3, sign: bool = False) -> str:
    if not d or d.get("n", 0) == 0 or not math.isfinite(d["mean"]):
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(d["mean"]) + ("" if not math.isfinite(d["se"]) else f" ± {d['se']:.{digits}f}")


def report_pass_k(res: dict) -> str:
    """pass@1 and the largest pass@k at the start and the end of every configuration (mean ± s.e. over seeds)."""
    s = res["summary"]
    ks = sorted({int(k) for m in s.values() for k in m.get("pass_k", {})})
    if not ks:
        return ""
    big = ks[-1]
    header = ["config", "seeds", "pass@1 start", "pass@1 end", "Δ pass@1", f"pass@{big} start", f"pass@{big} end",
              f"Δ pass@{big}", f"seeds Δpass@{big}<0", "pass@1 − GRPO", f"pass@{big} − GRPO", "entropy first→last 10",
              "all-wrong groups", "rollouts to GRPO-final pass@1", "x GRPO"]
    rows = []
    for name, m in s.items():
        p = {int(k): v for k, v in m.get("pass_k", {}).items()}
        if 1 not in p or big not in p:
            continue
        ent = (f"{m['entropy_first10']['mean']:.3f}→{m['entropy_last10']['mean']:.3f}"
               if "entropy_first10" in m else "-")
        need = m["rollouts_to_full"]
        rows.append([name, m["seeds"], ms(p[1]["start"]), ms(p[1]["end"]), ms(p[1]["delta"], sign=True),
                     ms(p[big]["start"]), ms(p[big]["end"]), ms(p[big]["delta"], sign=True),
                     f"{p[big]['seeds_below_start']}/{p[big]['seeds']}",
                     ms(p[1]["end_minus_grpo"], sign=True) if name != "grpo" else "-",
                     ms(p[big]["end_minus_grpo"], sign=True) if name != "grpo" else "-", ent,
                     fmt(m["all_wrong"]), "not reached" if need["n"] == 0 and need.get("n_inf") else fmt(need, 0),
                     fmt(m["ratio_full"], 2)])
    return table(header, rows)


def report_pass_k_per_seed(res: dict) -> str:
    """Per run: pass@1 and the largest pass@k start -> end with the paired change ± its s.e. over problems."""
    lines = []
    for name, rows in res["per_run"].items():
        for r in rows:
            if "pass_k" not in r:
                continue
            ks = sorted(int(k) for k in r["pass_k"])
            parts = []
            for k in (ks[0], ks[-1]):
                p = r["pass_k"][k] if k in r["pass_k"] else r["pass_k"][str(k)]
                parts.append(f"pass@{k} {p['start']:.4f} -> {p['end']:.4f} ({p['delta']:+.4f} ± {p['delta_stderr']:.4f})")
            lines.append(f"  {name:<16} seed {r['seed']}: " + "; ".join(parts))
    return "\n".join(lines)


def report(res: dict) -> str:
    s = res["summary"]
    header = ["config", "seeds", "final val acc", "gain vs warm start", "informative rollouts", "all-wrong groups",
              "rollouts to GRPO-final", "x GRPO", "rollouts to half-gain", "x GRPO (half)"]
    rows = []
    for name, m in s.items():
        def k(key):
            v = m[key]
            if v["n"] == 0:
                return "not reached" if v.get("n_inf") else "-"
            return fmt(v, 0) + ("" if not v["n_inf"] else "")
        rows.append([name, m["seeds"], fmt(m["final"]), fmt(m["gain"]), fmt(m["informative_rollouts"]),
                     fmt(m["all_wrong"]), k("rollouts_to_full"), fmt(m["ratio_full"], 2), k("rollouts_to_half"),
                     fmt(m["ratio_half"], 2)])
    return table(header, rows)


def figure(res: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in res["per_run"].items():
        if not rows:
            continue
        n = min(len(r["accuracy"]) for r in rows)
        x = np.array(rows[0]["rollouts"][:n])
        ys = np.array([r["accuracy"][:n] for r in rows])
        ys = ys - ys[:, :1]  # gain over each seed's warm start (seeds start at different accuracies)
        line, = ax.plot(x, ys.mean(0), marker="o", ms=3, label=name, ls="--" if name == "sft_control" else "-")
        if len(rows) > 1:
            ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("cumulative rollouts (control: sequences trained on)")
    ax.set_ylabel("val accuracy gain over warm start")
    ax.set_title("mean over seeds; band = min-max", fontsize=9)
    ax.axhline(0, color="gray", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_figure(fig, path) -> str:
    """Lay out, write (120 dpi) and close a figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def figures_pass_k(res: dict, out: Path) -> list[str]:
    """pass@k of the start vs the end, entropy, pass@1 / pass@K vs rollouts and all-wrong groups per configuration
    (mean over seeds). Returns the paths written (none without matplotlib or pass@k metrics)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from e3.plots import smooth

    per = {n: [r for r in rows if "pass_k" in r] for n, rows in res["per_run"].items()}
    per = {n: rows for n, rows in per.items() if rows}
    if not per:
        return []
    paths = []
    ks = sorted(int(k) for k in next(iter(per.values()))[0]["pass_k"])
    big = ks[-1]

    def pk(r, k):
        return r["pass_k"][k] if k in r["pass_k"] else r["pass_k"][str(k)]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    start = np.mean([[pk(r, k)["start"] for k in ks] for rows in per.values() for r in rows], axis=0)
    a1.plot(ks, start, "k--", marker="s", ms=4, label="start (warm start)")
    for name, rows in per.items():
        end = np.mean([[pk(r, k)["end"] for k in ks] for r in rows], axis=0)
        delta = np.array([[pk(r, k)["delta"] for k in ks] for r in rows])
        a1.plot(ks, end, marker="o", ms=3, label=f"{name} (end)")
        line, = a2.plot(ks, delta.mean(0), marker="o", ms=3, label=name)
        if len(rows) > 1:
            se = delta.std(0, ddof=1) / math.sqrt(len(rows))
            a2.fill_between(ks, delta.mean(0) - se, delta.mean(0) + se, color=line.get_color(), alpha=0.12)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    a1.set(ylabel="pass@k (held-out problems)", title="pass@k at the start and the end (mean over seeds)")
    a2.axhline(0, color="gray", lw=0.8)
    a2.set(ylabel="end − start", title="change of pass@k (band: ± s.e. over seeds)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    paths.append(save_figure(fig, out / "pass_at_k.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, rows in per.items():
        for ax, key in zip(axes, ("entropy", "temperature", "all_wrong")):
            if not all("curves" in r for r in rows):
                continue
            n = min(len(r["curves"][key]) for r in rows)
            y = np.mean([r["curves"][key][:n] for r in rows], axis=0)
            ax.plot(np.arange(1, n + 1), smooth(y, 10), label=name)
    for ax, lab in zip(axes, ("rollout entropy (nats/token)", "sampling temperature", "all-wrong share of groups")):
        ax.set(xlabel="step", ylabel=lab, title=f"{lab} (mean over seeds, 10-step average)")
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=7)
    paths.append(save_figure(fig, out / "entropy_temperature_all_wrong.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in per.items():
        n = min(len(r["rollouts"]) for r in rows)
        x = np.array(rows[0]["rollouts"][:n])
        for ax, k in zip(axes, (1, big)):
            ax.plot(x, np.mean([pk(r, k)["curve"][:n] for r in rows], axis=0), marker="o", ms=3, label=name)
    for ax, k in zip(axes, (1, big)):
        ax.set(xlabel="cumulative rollouts", ylabel=f"pass@{k}", title=f"held-out pass@{k} (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    paths.append(save_figure(fig, out / "pass_at_k_vs_rollouts.png"))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (1 seed, 6 steps, tiny warm start)")
    ap.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default 3; 1 with --quick)")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    ap.add_argument("--task", default="arithmetic", choices=list(TASKS),
                    help="embedded task: arithmetic (e3/config/local/default.yaml) or chain (e3/config/local/chain.yaml)")
    ap.add_argument("--steps", type=int, default=150, help="RL steps per run (256 rollouts per step)")
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--no-control", action="store_true", help="skip the supervised-training control")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one torch thread each)")
    ap.add_argument("--warm-start-cache", help="warm_start.cache_dir (default: the engine's, ~/.cache/e3)")
    ap.add_argument("--out", default="outputs/bench/learning", help="output directory (runs, JSON, figure)")
    ap.add_argument("--control-only", action="store_true", help="run only the supervised-training control")
    ap.add_argument("--analyse", nargs="+", metavar="RUNS_DIR",
                    help="no training: re-analyse the completed runs under these runs-* directories")
    ap.add_argument("override", nargs="*", help="extra dotted overrides for every run, e.g. val.n_samples=2")
    args = ap.parse_args(argv)
    if "grpo" not in args.configs and not args.control_only:
        args.configs = ["grpo", *args.configs]
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = out / f"runs-{stamp}"
    overrides = settings(args)
    t0 = time.perf_counter()
    jobs = [] if args.control_only else [("rl", c, s) for s in seeds for c in args.configs]
    if not args.no_control:
        jobs += [("sft", "sft_control", s) for s in seeds]
    runs = []
    if args.analyse:
        runs, jobs = load_runs(args.analyse), []
        names = list(dict.fromkeys(r["name"] for r in runs))
        args.configs = [n for n in dict.fromkeys(["grpo", *args.configs]) if n in names and n != "sft_control"]
        args.configs += [n for n in names if n not in args.configs and n != "sft_control"]
        seeds = sorted({r["seed"] for r in runs})
        found = ", ".join(f"{r['name']}/seed{r['seed']}" for r in runs)
        print(f"re-analysing {len(runs)} completed runs: {found}")
    else:
        what = "control only" if args.control_only else ", ".join(args.configs) + ("" if args.no_control else " + control")
        print(f"learning bench: {len(jobs)} runs ({what})"
              f" x seeds {seeds}; overrides {' '.join(overrides)}", flush=True)

    # warm starts first (one per seed, cached by the engine) so parallel jobs do not train the same one twice
    phases = [[(*j, str(runs_dir / f"{j[1]}-seed{j[2]}"), overrides, args.task) for j in jobs
               if (j[1] == "grpo") == first] for first in (True, False)]
    runs += run_phases(run_job, phases, args.jobs,
                       lambda r: print(f"  done {r['name']} seed {r['seed']} in {r['seconds']:.0f} s", flush=True))
    res = analyse(runs, args.configs, seeds)
    res.update({"command": " ".join(["python", "bench/learning.py", *(argv if argv is not None else sys.argv[1:])]),
                "overrides": overrides, "seeds": seeds, "elapsed_s": time.perf_counter() - t0,
                "machine": machine(), "runs_dir": str(runs_dir), "task": args.task})
    write_json_atomic(out / "learning.json", res)
    fig = figure(res, str(out / "learning_accuracy_vs_rollouts.png"))
    print(report(res))
    for r in runs:  # the start-up difficulty report of each seed's warm start (logged at step 0 of its GRPO run)
        if r["name"] == "grpo" and r["metrics"] and "task/never_solved" in r["metrics"][0]:
            from e3.engines.local.report import format_report

            levels = [str(v) for v in read_levels(r["run_dir"])]
            print(f"seed {r['seed']}: " + format_report(r["metrics"][0], levels).replace("[e3] ", ""))
    passk = report_pass_k(res)
    if passk:
        print("\npass@k on the held-out problems, start (warm start) vs end; mean ± s.e. over seeds:")
        print(passk)
        print(report_pass_k_per_seed(res))
        for path in figures_pass_k(res, out):
            print(f"figure {path}")
    t = res["targets"]
    print("targets per seed (val accuracy): " + "; ".join(
        f"seed {s}: start {v['start']:.4f}, GRPO final {v['full']:.4f}, half-gain {v['half']:.4f}" for s, v in t.items()))
    # a configuration counts as reaching GRPO's final accuracy only if it did on every seed; partial ones are named
    cands = [n for n in res["summary"] if n not in ("grpo", "sft_control")]
    full = [n for n in cands if res["summary"][n]["ratio_full"]["n"] == res["summary"][n]["seeds"]]
    print(f"elapsed {res['elapsed_s']:.0f} s; JSON {out / 'learning.json'}" + (f"; figure {fig}" if fig else ""))
    if full:
        best = max(full, key=lambda n: res["summary"][n]["ratio_full"]["mean"])
        r = res["summary"][best]["ratio_full"]
        print(f"best rollouts-to-GRPO-final ratio vs GRPO: {r['mean']:.2f} ± {r['std']:.2f} (config {best}, "
              f"all {r['n']} seeds reached)")
    elif cands:
        part = [n for n in cands if res["summary"][n]["ratio_full"]["n"] > 0]
        note = "; ".join(f"{n} {res['summary'][n]['ratio_full']['mean']:.2f} on {res['summary'][n]['ratio_full']['n']}"
                         f" of {res['summary'][n]['seeds']} seeds" for n in part)
        print("best rollouts-to-GRPO-final ratio vs GRPO: none (no configuration reached GRPO's final accuracy on "
              f"every seed{'; partial: ' + note if note else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
