"""``bench/verl_overhead.py --quick`` runs stock verl GRPO and the E3 trainer on the CPU config, prints the step-time
ratio and writes JSON a reader can rely on (both runs measured on the same work, the ratio from the numbers shown)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_verl_overhead_quick_compares_e3_with_stock_grpo(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "verl_overhead.py"), "--quick", "--out",
                           str(tmp_path / "vo.json")], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "vo.json").read_text())
    runs = {r["name"]: r for r in res["runs"]}
    assert set(runs) == {"stock", "e3"}
    assert not runs["stock"]["controller_metrics"] and runs["e3"]["controller_metrics"]  # really two trainers
    for r in runs.values():
        assert r["steps_logged"] == 3 and r["steps_measured"] == 2
        assert all(t > 0 for t in r["step_s"]) and r["phases_median_s"]["gen"] > 0
        assert r["tokens_mean"] > 8 * 8 * 5  # 64 rollouts of a >= 5-token prompt + response each
    s = res["summary"]
    assert s["ratio_median"] == pytest.approx(s["e3"]["median_s"] / s["stock"]["median_s"])
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: e3 / stock verl GRPO step time ratio") and f"{s['ratio_median']:.3f}" in last
