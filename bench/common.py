"""Shared helpers of the benchmark scripts: the local-engine configurations compared, the overrides every run of a
bench gets, running units of work in phases on a process pool, reading a run's metrics into an
accuracy-versus-cumulative-rollouts curve, rollouts-to-target by linear interpolation, mean/spread and plain tables.
"""

from __future__ import annotations

import math
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from e3.engines.local.schema import PACKAGE_CONFIG_DIR  # noqa: E402
from e3.io import atomic_write_json  # noqa: E402

CONFIG_DIR = Path(PACKAGE_CONFIG_DIR)

# name -> (overlay shipped in e3/config/local, extra dotted overrides). "informative" swaps E3's rank rule for the
# informative-rollout allocator inside full E3 (temperature + annealing on); "dr_informative" does so inside DR only;
# "knapsack" swaps in Knapsack RL's allocator (arXiv 2509.25849) inside full E3, same schedule and budget; "vip" does
# so with VIP's variance-minimising allocator (arXiv 2602.01601).
CONFIGS = {
    "grpo": ("grpo.yaml", []),
    "ts": ("ts.yaml", []),
    "ts_an": ("ts_an.yaml", []),
    "dr": ("dr.yaml", []),
    "e3": ("e3.yaml", []),
    "prepo": ("prepo.yaml", []),
    "e3_prepo": ("e3_prepo.yaml", []),
    "informative": ("e3.yaml", ["e3.allocation.policy=informative"]),
    "dr_informative": ("dr.yaml", ["e3.allocation.policy=informative"]),
    "knapsack": ("e3.yaml", ["e3.allocation.policy=knapsack"]),
    "vip": ("e3.yaml", ["e3.allocation.policy=vip"]),
}


def config_path(name: str) -> str:
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    return str(CONFIG_DIR / CONFIGS[name][0])


# task -> base config file under e3/config/local; an overlay's own keys (its ``defaults`` line dropped) go on top
TASKS = {"arithmetic": "default.yaml", "chain": "chain.yaml"}


def compose(name: str, task: str, overrides: list[str]):
    """The validated config of configuration ``name`` on ``task``: the task's base file (with its defaults), the
    overlay's own keys, the configuration's extra overrides, then ``overrides``. On the arithmetic task this is
    exactly ``load_config(config_path(name), overrides + extra)``."""
    from omegaconf import OmegaConf

    from e3.engines.local.schema import from_any, load_config

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    cfg = load_config(str(CONFIG_DIR / TASKS[task]))
    own = OmegaConf.load(config_path(name))
    own.pop("defaults", None)
    cfg = OmegaConf.merge(cfg, own, OmegaConf.from_dotlist([*overrides, *CONFIGS[name][1]]))
    return from_any(cfg)


def run_overrides(quick: list[str] | None, steps: int, val_every: int) -> list[str]:
    """Dotted overrides for every run of a bench: the ``quick`` (CI-sized) ones, or the run length; then no plots,
    one torch thread, no intermediate checkpoints."""
    ov = list(quick) if quick is not None else [f"trainer.total_steps={steps}", f"trainer.val_every={val_every}"]
    return ov + ["plots=false", "threads=1", f"trainer.save_every={10 ** 6}"]


def run_phases(fn, phases: list[list[tuple]], jobs: int, done=None) -> list:
    """``fn(*unit)`` for every unit, phase after phase (a phase starts when the previous one has finished, e.g. so
    that warm starts are trained and cached once), ``jobs`` processes at a time (spawned; ``fn`` must be importable).
    ``done(result)`` is called as each result arrives, in submission order within a phase. Returns all results."""
    out = []
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as ex:
            for phase in phases:
                for f in [ex.submit(fn, *u) for u in phase]:
                    out.append(f.result())
                    if done:
                        done(out[-1])
    else:
        for u in (u for phase in phases for u in phase):
            out.append(fn(*u))
            if done:
                done(out[-1])
    return out


def curve(metrics: list[dict], key: str = "val/accuracy") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, cumulative rollouts, accuracy) at the steps where validation ran.

    Cumulative rollouts at step t = sum of ``rollout/n_total`` over steps 1..t (0 at step 0, after the warm start).
    """
    cum, total = {}, 0
    steps, xs, ys = [], [], []
    for m in sorted(metrics, key=lambda m: m["step"]):
        total += int(m.get("rollout/n_total", 0)) if m["step"] > 0 else 0
        cum[m["step"]] = total
        if key in m:
            steps.append(m["step"])
            xs.append(total)
            ys.append(float(m[key]))
    return np.array(steps), np.array(xs, dtype=float), np.array(ys, dtype=float)


def rollouts_to_target(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """First cumulative-rollout count where the curve reaches ``target`` (linear interpolation); inf if never."""
    for i in range(len(x)):
        if y[i] >= target - 1e-12:
            if i == 0:
                return float(x[0])
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)
    return math.inf


def spread(values) -> dict:
    """mean, sample std, min, max, n over the finite values (n_inf counts the rest)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    fin = v[np.isfinite(v)]
    if fin.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0, "n_inf": int(v.size)}
    return {"mean": float(fin.mean()), "std": float(fin.std(ddof=1)) if fin.size > 1 else 0.0,
            "min": float(fin.min()), "max": float(fin.max()), "n": int(fin.size), "n_inf": int(v.size - fin.size)}


def fmt(s: dict, digits: int = 3, pct: bool = False) -> str:
    if s["n"] == 0:
        return "not reached" if s.get("n_inf") else "-"
    scale, unit = (100.0, "") if pct else (1.0, "")
    out = f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}{unit}"
    if s.get("n_inf"):
        out += f" ({s['n_inf']} not reached)"
    return out


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "loadavg_1_5_15": [round(x, 2) for x in load]}


def write_json_atomic(path, obj) -> None:
    atomic_write_json(path, obj, indent=1, default=float)
