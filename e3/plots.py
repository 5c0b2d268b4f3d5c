"""The README figures from training logs: ``python -m e3.plots RUN_DIR [RUN_DIR ...] --out fig/ [--labels ...]``.

Reads each run's ``metrics.jsonl`` (one JSON object per step, the metric names shared by the local and verl
engines) and overlays the runs, like the E3 paper's figures (Liao et al. 2025):
- ``entropy.png``: policy entropy ``rollout/entropy`` and the scheduler's target ``rollout/target_entropy`` (Eq. 4-5);
- ``temperature_accuracy.png``: ``rollout/temperature`` with ``val/accuracy`` on a twin axis;
- ``all_wrong.png``: share of all-wrong groups ``groups/all_wrong`` (raw, faint; moving average, solid);
- ``rollout_budget.png``: the per-prompt budgets n_i over time (``rollout/n_hist``, one heat map per run) or,
  when the histogram is not logged, the band between the smallest and largest budget.
A figure whose metrics no run has is skipped; a run directory without ``metrics.jsonl`` is an error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from e3.io import DataError, atomic_path, iter_jsonl


def load_run(run_dir) -> list[dict]:
    """The metric lines of one run (a kill-truncated last line is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    rows = [row for _, row in iter_jsonl(path, allow_truncated_tail=True)]
    if not rows:
        raise DataError(path, None, None, "no metric lines")
    return rows


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the lines that carry a finite number under ``key``; step = ``step`` or line index."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i + 1))
            ys.append(float(v))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what is available)."""
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _has(runs, *keys) -> bool:
    return any(series(rows, k)[0].size for rows in runs for k in keys)


def fig_entropy(runs, labels, colors, out: Path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for rows, lab, col in zip(runs, labels, colors):
        x, y = series(rows, "rollout/entropy")
        if x.size:
            ax.plot(x, y, color=col, label=f"{lab}: entropy")
        x, y = series(rows, "rollout/target_entropy")
        if x.size:
            ax.plot(x, y, color=col, ls="--", lw=1, label=f"{lab}: target")
    ax.set(xlabel="step", ylabel="policy entropy (nats/token)", title="Entropy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "entropy.png")


def fig_temperature(runs, labels, colors, out: Path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax2 = ax.twinx()
    for rows, lab, col in zip(runs, labels, colors):
        x, y = series(rows, "rollout/temperature")
        if x.size:
            ax.plot(x, y, color=col, label=f"{lab}: temperature")
        x, y = series(rows, "val/accuracy")
        if x.size:
            ax2.plot(x, y, color=col, ls=":", marker="o", ms=3, label=f"{lab}: val accuracy")
    ax.set(xlabel="step", ylabel="temperature", title="Temperature and validation accuracy")
    ax2.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    return _save(fig, out / "temperature_accuracy.png")


def fig_all_wrong(runs, labels, colors, out: Path, window: int):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for rows, lab, col in zip(runs, labels, colors):
        x, y = series(rows, "groups/all_wrong")
        if x.size:
            ax.plot(x, y, color=col, alpha=0.25, lw=1)
            ax.plot(x, smooth(y, window), color=col, label=lab)
    ax.set(xlabel="step", ylabel="share of groups with all rollouts wrong",
           title=f"All-wrong groups (moving average over {window} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "all_wrong.png")


def _hist_matrix(rows):
    steps, hists = [], []
    for i, r in enumerate(rows):
        h = r.get("rollout/n_hist")
        if isinstance(h, list) and h and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h):
            steps.append(r.get("step", i + 1))
            hists.append(np.asarray(h, dtype=np.int64))
    return steps, hists


def fig_budget(runs, labels, colors, out: Path):
    import matplotlib.pyplot as plt

    with_hist = [(rows, lab) for rows, lab in zip(runs, labels) if _hist_matrix(rows)[0]]
    panels = len(with_hist) + (1 if len(with_hist) < len(runs) else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(6.5, 3 * panels), squeeze=False)
    for ax, (rows, lab) in zip(axes[:, 0], with_hist):
        steps, hists = _hist_matrix(rows)
        lo = int(min(h.min() for h in hists))
        hi = int(max(h.max() for h in hists))
        order = np.argsort(np.asarray(steps, dtype=np.float64), kind="stable")
        mat = np.stack([np.bincount(hists[j] - lo, minlength=hi - lo + 1) / hists[j].size for j in order], axis=1)
        x = np.asarray(steps, dtype=np.float64)[order]
        if x.size == 1:
            x, mat = np.array([x[0] - 0.5, x[0] + 0.5]), np.repeat(mat, 2, axis=1)
        im = ax.pcolormesh(x, np.arange(lo, hi + 1), mat, shading="nearest", cmap="viridis")
        fig.colorbar(im, ax=ax, label="share of prompts")
        ax.set(xlabel="step", ylabel="rollouts per prompt n_i", title=f"Rollout budget: {lab}")
    if len(with_hist) < len(runs):  # runs without histograms: the min..max band
        ax = axes[-1, 0]
        for rows, lab, col in zip(runs, labels, colors):
            if _hist_matrix(rows)[0]:
                continue
            for lo_key, hi_key in (("rollout/n_alloc_min", "rollout/n_alloc_max"), ("rollout/n_min", "rollout/n_max")):
                x, lo = series(rows, lo_key)
                x2, hi = series(rows, hi_key)
                if x.size and x.size == x2.size:
                    ax.fill_between(x, lo, hi, color=col, alpha=0.3, step="mid", label=f"{lab}: {lo_key}..{hi_key}")
                    break
        ax.set(xlabel="step", ylabel="rollouts per prompt", title="Rollout budget range")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "rollout_budget.png")


def make_figures(run_dirs, out_dir, labels=None, smooth_window: int = 10) -> list[Path]:
    """Write the figures whose metrics exist in at least one run; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("make_figures: no run directories")
    labels = list(labels) if labels else [d.name or str(d) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    written = []
    if _has(runs, "rollout/entropy", "rollout/target_entropy"):
        written.append(fig_entropy(runs, labels, colors, out))
    if _has(runs, "rollout/temperature", "val/accuracy"):
        written.append(fig_temperature(runs, labels, colors, out))
    if _has(runs, "groups/all_wrong"):
        written.append(fig_all_wrong(runs, labels, colors, out, smooth_window))
    if any(_hist_matrix(r)[0] for r in runs) or _has(runs, "rollout/n_alloc_min", "rollout/n_min"):
        written.append(fig_budget(runs, labels, colors, out))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="e3.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="run directories containing metrics.jsonl")
    p.add_argument("--out", default="fig", help="output directory")
    p.add_argument("--labels", nargs="+", default=None, help="one label per run (default: directory names)")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window for the all-wrong curve")
    args = p.parse_args(argv)
    try:
        paths = make_figures(args.run_dirs, args.out, args.labels, args.smooth)
    except (FileNotFoundError, DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not paths:
        print("[e3] no known metrics in these runs: nothing plotted", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
