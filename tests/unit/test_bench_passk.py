"""bench/learning.py's pass@k analysis on hand-made run metrics: start/end/change per k, seeds below the start,
the difference to GRPO on the same seed, the table and the figures."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_learning():
    sys.path.insert(0, str(ROOT / "bench"))  # what `python bench/learning.py` has: its sibling common.py
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_run(name, seed, p1, p64, entropy):
    """Three validations (steps 0, 5, 10) with pass@1 / pass@64 going p1[0] -> p1[-1] etc., 10 train steps."""
    metrics = []
    for i, step in enumerate((0, 5, 10)):
        m = {"step": step, "val/accuracy": p1[i], "val/pass@1": p1[i], "val/pass@64": p64[i],
             "val/pass@1_stderr": 0.01, "val/pass@64_stderr": 0.02}
        if step:
            m.update({"val/pass@1_delta": p1[i] - p1[0], "val/pass@1_delta_stderr": 0.005,
                      "val/pass@64_delta": p64[i] - p64[0], "val/pass@64_delta_stderr": 0.01})
        metrics.append(m)
    for step in range(1, 11):
        metrics.append({"step": step, "rollout/n_total": 100, "rollout/entropy": entropy[0] + (entropy[1] - entropy[0])
                        * (step - 1) / 9, "rollout/temperature": 1.0, "groups/all_wrong": 0.3,
                        "groups/all_correct": 0.4, "groups/informative_rollouts": 0.3, "time/step": 0.1})
    metrics.sort(key=lambda m: (m["step"], "val/accuracy" in m))
    merged = {}
    for m in metrics:  # one line per step, as the engine writes
        merged.setdefault(m["step"], {}).update(m)
    return {"name": name, "seed": seed, "run_dir": "-", "metrics": list(merged.values()), "seconds": 1.0}


def test_pass_k_table_start_end_and_versus_grpo(tmp_path):
    lb = load_learning()
    runs = [fake_run("grpo", 0, (0.30, 0.36, 0.40), (0.80, 0.76, 0.70), (0.9, 0.5)),
            fake_run("grpo", 1, (0.20, 0.26, 0.30), (0.70, 0.68, 0.66), (0.9, 0.6)),
            fake_run("ts", 0, (0.30, 0.35, 0.39), (0.80, 0.80, 0.82), (0.9, 0.9)),
            fake_run("ts", 1, (0.20, 0.25, 0.31), (0.70, 0.71, 0.72), (0.9, 0.85))]
    res = lb.analyse(runs, ["grpo", "ts"], [0, 1])
    g = res["summary"]["grpo"]["pass_k"]
    assert g[64]["start"]["mean"] == pytest.approx(0.75) and g[64]["end"]["mean"] == pytest.approx(0.68)
    assert g[64]["delta"]["mean"] == pytest.approx(-0.07)
    assert g[64]["delta"]["se"] == pytest.approx(abs(-0.10 - -0.04) / 2)  # std of 2 values / sqrt(2)
    assert g[64]["seeds_below_start"] == 2
    assert g[64]["delta_problem_se"] == pytest.approx(math.sqrt(2 * 0.01 ** 2) / 2)
    t = res["summary"]["ts"]["pass_k"]
    assert t[64]["seeds_below_start"] == 0
    assert t[1]["end_minus_grpo"]["mean"] == pytest.approx(((0.39 - 0.40) + (0.31 - 0.30)) / 2)
    assert t[64]["end_minus_grpo"]["mean"] == pytest.approx(((0.82 - 0.70) + (0.72 - 0.66)) / 2)
    assert res["summary"]["grpo"]["entropy_last10"]["mean"] == pytest.approx((0.7 + 0.75) / 2)
    text = lb.report_pass_k(res)
    assert "| grpo " in text and "| ts " in text and "2/2" in text and "0/2" in text
    lines = lb.report_pass_k_per_seed(res)
    assert "grpo             seed 0: pass@1 0.3000 -> 0.4000 (+0.1000 ± 0.0050); pass@64 0.8000 -> 0.7000" in lines
    paths = lb.figures_pass_k(res, tmp_path)
    assert len(paths) == 3 and all(Path(p).stat().st_size > 1000 for p in paths)
