"""bench/allocation.py: runs in --quick mode, prints the tables, one summary line per metric and the last line,
writes consistent JSON; takes a user's policy module unchanged."""

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "allocation.py"
SHARED = ROOT.parent / "shared" / "data" / "e3" / "all_data.parquet"
LAST = re.compile(r"^best informative-rollout ratio vs uniform at \[4,12\]: (\d+\.\d\d) \(policy (\w+)\)$")
CAPS = ((4, 12), (2, 32), (2, 128))
METRICS = ("informative", "nonzero_groups", "all_wrong", "all_correct", "signal", "expected_informative", "variance")
LOWER = ("all_wrong", "all_correct", "variance")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_allocation", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "alloc.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--synthetic", "--output", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(out.read_text())


def test_quick_run_prints_table_and_last_line(quick):
    stdout, result = quick
    lines = stdout.strip().splitlines()
    match = LAST.match(lines[-1])
    assert match, lines[-1]
    assert match.group(2) == result["best_412"]["policy"]
    assert float(match.group(1)) == pytest.approx(result["best_412"]["ratio"], abs=0.005)
    assert "synthetic Beta mixture" in lines[0]
    for policy, caps in [("uniform", "[8,8]"), ("e3", "[4,12]"), ("informative", "[4,12]"), ("oracle", "[2,32]"),
                         ("knapsack", "[2,128]"), ("informative", "[2,32]"), ("vip", "[2,128]")]:
        assert any(re.match(rf"^{policy}\s+{re.escape(caps)}\s", line) for line in lines), (policy, caps)
    # one summary line per metric, naming the best policy and matching the JSON
    for metric in METRICS:
        best = result["summary"][metric]
        word = "lowest" if metric in LOWER else "best"
        pattern = (rf"^{word} .*: {best['value']:.3f} = {best['ratio']:.2f}x uniform \(policy {best['policy']} at "
                   rf"{re.escape(str(best['caps']).replace(' ', ''))}\)$")
        assert sum(bool(re.match(pattern, line)) for line in lines) == 1, metric
    assert any(line.startswith("knapsack vs uniform at [4,12], [2,32], [2,128]") for line in lines)
    assert any(line.startswith("solver latency per step at B = 64, caps [2,128], |D| = 40,000: uniform") for line in lines)
    assert any(line.startswith("vip vs uniform at [4,12], [2,32], [2,128]: VIP objective x") for line in lines)
    # the exact solver and its reference DP agree on every timed call
    assert any(re.match(r"^informative at B = 64, caps \[2,128\]: exact solver .* ms vs its reference DP .* ms = \d+x "
                        r"faster; same allocations in every timed call: yes$", line) for line in lines)
    assert result["summary"]["informative_vs_dp"]["agrees"] is True


def test_json_shape_and_uniform_baseline(quick):
    _, result = quick
    rows = result["rows"]
    keys = {(r["policy"], tuple(r["caps"])) for r in rows}
    assert keys == {("uniform", (8, 8))} | {(p, c) for p in ("e3", "informative", "knapsack", "vip", "oracle")
                                             for c in CAPS}
    for r in rows:
        assert r["schedule"][0] == [8, 8] and r["schedule"][-1] == (r["caps"] if r["policy"] != "uniform" else [8, 8])
        assert r["measured_epochs"] == [result["epochs"]]
        for block in ("widest", "ratio", "all_epochs", "all_epochs_ratio"):
            for metric in METRICS:
                entry = r[block][metric]
                assert len(entry["per_seed"]) == result["seeds"]
                assert entry["mean"] == pytest.approx(np.mean(entry["per_seed"]))
    uniform = next(r for r in rows if r["policy"] == "uniform")
    for metric, entry in uniform["ratio"].items():
        assert entry["per_seed"] == [1.0] * result["seeds"], metric
    # budgets are equal, so shares are comparable; fractions are fractions
    for r in rows:
        assert 0.0 < r["widest"]["informative"]["mean"] < 1.0
        assert r["widest"]["all_wrong"]["mean"] + r["widest"]["all_correct"]["mean"] < 1.0


def test_informative_policy_beats_uniform_in_expectation(quick):
    _, result = quick
    rows = {(r["policy"], tuple(r["caps"])): r for r in result["rows"]}
    base = rows[("uniform", (8, 8))]["widest"]["expected_informative"]["per_seed"]
    for caps in CAPS:
        ours = rows[("informative", caps)]["widest"]["expected_informative"]["per_seed"]
        oracle = rows[("oracle", caps)]["widest"]["expected_informative"]["per_seed"]
        assert all(o >= b for o, b in zip(ours, base)), caps
        assert all(c >= o - 1e-9 for c, o in zip(oracle, ours)), caps  # the oracle optimises the true expectation
    best = max((rows[(p, (4, 12))]["ratio"]["informative"]["mean"], p)
               for p in ("e3", "informative", "knapsack", "vip"))
    assert result["best_412"] == {"policy": best[1], "ratio": best[0]}


def test_vip_lowers_its_own_objective_below_uniform(quick):
    """VIP minimises sum p(1-p)/(n-1) with estimated p; under the true p it is still below uniform on every seed."""
    _, result = quick
    rows = {(r["policy"], tuple(r["caps"])): r for r in result["rows"]}
    base = rows[("uniform", (8, 8))]["widest"]["variance"]["per_seed"]
    for caps in CAPS:
        ours = rows[("vip", caps)]["widest"]["variance"]["per_seed"]
        assert all(o < b for o, b in zip(ours, base)), caps
    ratio = rows[("vip", (4, 12))]["ratio"]["variance"]["mean"]
    assert result["summary"]["vip_vs_uniform"]["variance"]["[4,12]"] == ratio < 1


def test_custom_data_with_pass_rate_column(tmp_path, capsys):
    bench = load_bench()
    path = tmp_path / "rates.json"
    rng = np.random.default_rng(0)
    pd.DataFrame({"q": range(300), "solve": rng.random(300)}).to_json(path, orient="records")
    assert bench.main(["--data", str(path), "--pass-rate-column", "solve", "--quick", "--seeds", "1",
                       "--prompts", "128"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 300 questions" in out
    assert LAST.match(out.strip().splitlines()[-1])


def test_bad_data_names_file_row_and_field(tmp_path, capsys):
    bench = load_bench()
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"level": [0, 3, 11, 10]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"bad\.parquet: row 2: field 'level' = 11"):
        bench.load_pass_rates(path)
    assert bench.main(["--data", str(path), "--quick"]) == 2
    assert "row 2" in capsys.readouterr().err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"pass_rate": 0.5}, {"pass_rate": "x"}]')
    with pytest.raises(ValueError, match=r"bad\.json: row 1: field 'pass_rate'"):
        bench.load_pass_rates(bad_json)
    with pytest.raises(ValueError, match="no pass-rate column"):
        bench.load_pass_rates(bad_json, column="p")
    good = tmp_path / "ok.parquet"
    pd.DataFrame({"level": [0, 3, 10]}).to_parquet(good)
    np.testing.assert_allclose(bench.load_pass_rates(good), [1.0, 0.7, 0.0])  # p = 1 - level / 10


@pytest.mark.skipif(not SHARED.exists(), reason="shared E3 data not present")
def test_quick_run_on_shared_e3_difficulties(capsys):
    bench = load_bench()
    assert bench.main(["--quick", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "all_data.parquet: 15888 questions" in out
    assert LAST.match(out.strip().splitlines()[-1])


def test_summary_picks_the_best_row_and_the_verdict_follows_the_numbers(quick):
    _, result = quick
    rows = [r for r in result["rows"] if r["policy"] != "oracle"]
    for metric in METRICS:
        pick = (min if metric in LOWER else max)(rows, key=lambda r: r["widest"][metric]["mean"])
        assert result["summary"][metric]["value"] == pick["widest"][metric]["mean"]
    knap = {tuple(r["caps"]): r for r in result["rows"] if r["policy"] == "knapsack"}
    for metric, entry in result["summary"]["knapsack_vs_uniform"].items():
        gain = knap[(2, 128)]["ratio"][metric]["mean"] - 1
        assert entry["gain"]["[2,128]"] == pytest.approx(gain)
        expected = ("reproduced" if 0.2 <= gain <= 0.4 else "exceeded" if gain > 0.4 else
                    "not reproduced (smaller gain)" if gain > 0 else "not reproduced (no gain)")
        assert entry["verdict"] == expected
    lat = result["latency"]
    assert {(x["policy"], tuple(x["caps"]), x["batch"]) for x in lat} == {
        (p, c, 64) for p in ("uniform", "e3", "informative", "informative-dp", "knapsack", "vip", "oracle")
        for c in CAPS}
    assert all(x["dataset"] == 40_000 and x["median_s"] > 0 for x in lat)


USER_POLICY = '''
import numpy as np
from e3.allocation.policy import AllocationPolicy


class HardestFirst(AllocationPolicy):
    """Fills the prompts with the lowest mean reward so far up to n_max, the rest get n_min."""

    def allocate(self, indices, total, n_min, n_max):
        n = np.full(len(indices), n_min, dtype=np.int64)
        spare = total - n.sum()
        for i in np.argsort(self.tracker.accuracy(indices), kind="stable"):
            take = min(spare, n_max - n_min)
            n[i] += take
            spare -= take
        return n
'''


def test_a_users_policy_module_runs_in_the_replay_unchanged(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_alloc.py").write_text(textwrap.dedent(USER_POLICY))
    monkeypatch.syspath_prepend(str(tmp_path))
    bench = load_bench()
    out_json = tmp_path / "out.json"
    assert bench.main(["--quick", "--synthetic", "--seeds", "1", "--prompts", "128", "--latency-reps", "1",
                       "--policies", "user_alloc:HardestFirst", "knapsack", "--output", str(out_json)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    for caps in ("[4,12]", "[2,32]", "[2,128]"):
        assert any(re.match(rf"^user_alloc:HardestFirst\s+{re.escape(caps)}\s", line) for line in lines), caps
    result = json.loads(out_json.read_text())
    mine = [r for r in result["rows"] if r["policy"] == "user_alloc:HardestFirst"]
    assert [r["schedule"][-1] for r in mine] == [[4, 12], [2, 32], [2, 128]]
    assert any(x["policy"] == "user_alloc:HardestFirst" for x in result["latency"])
    assert LAST.match(lines[-1])


def test_unknown_policy_is_refused_before_any_work(capsys):
    bench = load_bench()
    assert bench.main(["--quick", "--synthetic", "--policies", "no_such_mod:Nope"]) == 2
    err = capsys.readouterr().err
    assert "e3.allocation.policy='no_such_mod:Nope': cannot import module 'no_such_mod'" in err
