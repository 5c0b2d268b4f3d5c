"""bench/reward_pool.py --quick runs from the command line, prints its side-by-side table and writes JSON: the same
verdicts from every pool, the zygote pool serving a daemonic caller and signalling no pid it does not reap."""

import json
import subprocess
import sys
from pathlib import Path

import pebble  # noqa: F401  (the bench extra; a missing install fails here, it does not skip)
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reward_pool_bench_quick(tmp_path):
    out = tmp_path / "reward_pool.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_pool.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratios pebble (forkserver) / zygote" in proc.stdout
    res = json.loads(out.read_text())
    for impl in ("zygote", "pebble", "pebble_fork"):
        r = res[impl]
        assert r["accuracy"] == res["in_process"]["accuracy"] == 1.0 and r["items_per_s"] > 0
        assert (r["deadline_status"], r["crash_status"], r["caller_threads"]) == ("timeout", "crash", "ok")
    z = res["zygote"]
    assert z["caller_daemonic_process"] == "ok" and z["signals_by_pid_to_others_children"] == 0
    assert 1.0 <= z["deadline_1s_result_s"] < 3.0
