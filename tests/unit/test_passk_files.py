"""main_metric on hand-built scored files: the JSON equals the unbiased estimator computed here by brute-force
combinatorics (math.comb), per source and over all problems, averaged over problems, then mean/std over runs."""

import json
import subprocess
import sys
from math import comb

import numpy as np
import pytest

from e3 import main_metric


def write_run(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        for pid, source, scores in rows:
            fh.write(json.dumps({"id": pid, "source": source, "answer": "1", "responses": ["x"] * len(scores),
                                 "scores": scores}) + "\n")
    return path


def brute_pass_at_k(n, c, k):
    return 1.0 - comb(n - c, k) / comb(n, k)


RUN_A = [("p1", "aime", [1, 0, 0, 0, 0, 0, 0, 0]), ("p2", "aime", [0] * 8), ("p3", "math", [1, 1, 0, 1, 0, 1, 1, 1]),
         ("p4", "math", [1] * 8), ("p5", "math", [0, 0, 0, 0, 0, 0, 1, 0])]
RUN_B = [("p1", "aime", [0, 0, 1, 1, 0, 0, 0, 0]), ("p2", "aime", [0] * 8), ("p3", "math", [1, 0, 0, 0, 0, 0, 0, 0]),
         ("p4", "math", [1, 1, 1, 1, 1, 1, 0, 1]), ("p5", "math", [0] * 8)]
RUN_C = [("p1", "aime", [0] * 8), ("p2", "aime", [0, 1, 0, 0, 0, 0, 0, 0]), ("p3", "math", [1] * 8),
         ("p4", "math", [0, 1, 1, 1, 1, 1, 1, 1]), ("p5", "math", [0, 0, 0, 1, 1, 0, 0, 0])]


def expected(runs, ks):
    """Independent reference: per run, mean over problems (percent); then mean and sample std over runs."""
    out = {}
    for group in ("aime", "math", "all"):
        entry = {}
        for k in ks:
            per_run = [100 * np.mean([brute_pass_at_k(len(s), sum(s), k) for _, src, s in run
                                      if group in ("all", src)]) for run in runs]
            entry[f"pass@{k}"] = np.mean(per_run)
            entry[f"pass@{k}_std"] = np.std(per_run, ddof=1) if len(runs) > 1 else 0.0
        out[group] = entry
    return out


@pytest.mark.parametrize("runs", [[RUN_A], [RUN_A, RUN_B, RUN_C]], ids=["one_run", "three_runs"])
def test_json_equals_estimator(tmp_path, runs):
    ks = [1, 2, 4, 8]
    paths = [write_run(tmp_path / f"run{i}.scored.jsonl", r) for i, r in enumerate(runs)]
    got = main_metric.compute([str(p) for p in paths], ks)
    want = expected(runs, ks)
    assert set(got) == {"aime", "math", "all"}
    for group, entry in want.items():
        for key, value in entry.items():
            assert got[group][key] == pytest.approx(value, abs=1e-9), (group, key)
        assert got[group]["runs"] == len(runs)
    assert got["aime"]["problems"] == 2 and got["math"]["problems"] == 3 and got["all"]["problems"] == 5
    # sanity of the numbers themselves: pass@1 is the plain accuracy; pass@k grows with k
    acc = np.mean([np.mean([np.mean(s) for _, _, s in r]) for r in runs]) * 100
    assert got["all"]["pass@1"] == pytest.approx(acc)
    assert all(got["all"][f"pass@{a}"] <= got["all"][f"pass@{b}"] for a, b in zip(ks, ks[1:]))


def test_cli_by_script_path_writes_json_table_and_plot(tmp_path, repo_root):
    paths = [write_run(tmp_path / f"r{i}.jsonl", r) for i, r in enumerate([RUN_A, RUN_B])]
    out, png = tmp_path / "metric.json", tmp_path / "passk.png"
    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_metric.py"), "--input", *map(str, paths),
                           "--k", "1", "2", "4", "--output", str(out), "--plot", str(png)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    want = expected([RUN_A, RUN_B], [1, 2, 4])
    assert got["all"]["pass@4"] == pytest.approx(want["all"]["pass@4"])
    assert got["math"]["pass@2_std"] == pytest.approx(want["math"]["pass@2_std"])
    assert "pass@4" in proc.stdout and "aime" in proc.stdout
    assert f"{want['all']['pass@1']:.2f}" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_k_larger_than_samples_names_the_problem(tmp_path):
    rows = RUN_A[:2] + [("short-one", "math", [1, 0, 1, 0])]
    path = write_run(tmp_path / "run.jsonl", rows)
    with pytest.raises(ValueError, match=r"k=8.*'short-one'.*line 3"):
        main_metric.compute([str(path)], [1, 8])
    assert main_metric.compute([str(path)], [1, 4])["all"]["problems"] == 3


def test_cli_error_exits_nonzero_and_writes_nothing(tmp_path, repo_root):
    path = write_run(tmp_path / "run.jsonl", [("q", "math", [1, 0])])
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_metric.py"), "--input", str(path), "--k", "4",
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0 and "'q'" in proc.stderr and "k=4" in proc.stderr
    assert not out.exists()


def test_mixed_sample_counts_across_runs_is_an_error(tmp_path):
    a = write_run(tmp_path / "a.jsonl", RUN_A)
    b = write_run(tmp_path / "b.jsonl", RUN_B[:2] + [("p3", "math", [1, 0, 1, 1])] + RUN_B[3:])
    with pytest.raises(ValueError, match=r"'p3'.*8 samples.*4 in"):
        main_metric.compute([str(a), str(b)], [1])


def test_problem_missing_from_a_run_is_an_error(tmp_path):
    a = write_run(tmp_path / "a.jsonl", RUN_A)
    b = write_run(tmp_path / "b.jsonl", RUN_B[:-1])
    with pytest.raises(ValueError, match=r"'p5'.*missing from"):
        main_metric.compute([str(a), str(b)], [1])


def test_bad_scores_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "source": "s", "scores": [1, 0]}) + "\n"
                    + json.dumps({"id": "b", "source": "s", "scores": [1, 0.5]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: field 'scores\[1\]'"):
        main_metric.compute([str(path)], [1])
    path.write_text(json.dumps({"id": "a", "source": "s"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'scores': missing"):
        main_metric.compute([str(path)], [1])


def test_same_run_file_twice_is_an_error(tmp_path):
    a = write_run(tmp_path / "a.jsonl", RUN_A)
    with pytest.raises(ValueError, match="same file is given twice"):
        main_metric.compute([str(a), str(tmp_path / "." / "a.jsonl")], [1])
