"""e3.plots: the four figures from runs' metrics.jsonl, overlaid; absent metrics skipped; no metrics.jsonl = error."""

import json
import subprocess
import sys

import numpy as np
import pytest

from e3.plots import make_figures, smooth

ALL = {"entropy.png", "temperature_accuracy.png", "all_wrong.png", "rollout_budget.png"}


def write_metrics(run_dir, steps=30, hist=True, seed=0, drop=(), truncated_tail=False):
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    lines = []
    for t in range(1, steps + 1):
        m = {"step": t, "rollout/temperature": 1 + 0.01 * t, "rollout/entropy": 0.5 - 0.005 * t + 0.01 * rng.random(),
             "rollout/target_entropy": 0.5, "groups/all_wrong": float(rng.random()), "rollout/n_min": 6,
             "rollout/n_max": 10, "rollout/n_alloc_min": 6 + t % 2, "rollout/n_alloc_max": 10 - t % 3}
        if hist:
            m["rollout/n_hist"] = rng.integers(6, 11, size=16).tolist()
        if t % 10 == 0:
            m["val/accuracy"] = 0.2 + 0.01 * t
        for k in drop:
            m.pop(k, None)
        lines.append(json.dumps(m) + "\n")
    text = "".join(lines) + ('{"step": 31, "rollout/entr' if truncated_tail else "")
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def assert_real_png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_all_figures_for_two_overlaid_runs(tmp_path):
    a = write_metrics(tmp_path / "grpo", hist=False, seed=1)
    b = write_metrics(tmp_path / "e3", hist=True, seed=2, truncated_tail=True)
    paths = make_figures([a, b], tmp_path / "fig", labels=["GRPO", "E3"])
    assert {p.name for p in paths} == ALL
    for p in paths:
        assert_real_png(p)


def test_absent_metrics_are_skipped(tmp_path):
    # a verl-like run that only logs entropy and the all-wrong share
    run = write_metrics(tmp_path / "verl", hist=False, drop=("rollout/temperature", "val/accuracy",
                        "rollout/target_entropy", "rollout/n_min", "rollout/n_max", "rollout/n_alloc_min",
                        "rollout/n_alloc_max"))
    paths = make_figures([run], tmp_path / "fig")
    assert {p.name for p in paths} == {"entropy.png", "all_wrong.png"}
    assert not (tmp_path / "fig" / "temperature_accuracy.png").exists()


def test_constant_budget_histogram(tmp_path):
    """Plain GRPO: every prompt gets the same n, a one-row histogram."""
    run = tmp_path / "grpo"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": t, "rollout/n_hist": [8] * 4}) + "\n"
                                               for t in range(1, 4)))
    paths = make_figures([run], tmp_path / "fig")
    assert [p.name for p in paths] == ["rollout_budget.png"]
    assert paths[0].stat().st_size > 5000


def test_missing_metrics_file_is_an_error(tmp_path):
    ok = write_metrics(tmp_path / "ok")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*metrics.jsonl"):
        make_figures([ok, tmp_path / "empty"], tmp_path / "fig")


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    run = write_metrics(tmp_path / "run", steps=3)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write("{not json}\n" + json.dumps({"step": 5}) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 4: malformed JSON"):
        make_figures([run], tmp_path / "fig")


def test_cli(tmp_path):
    a = write_metrics(tmp_path / "a")
    b = write_metrics(tmp_path / "b", seed=3)
    out = tmp_path / "fig"
    proc = subprocess.run([sys.executable, "-m", "e3.plots", str(a), str(b), "--out", str(out), "--labels", "A", "B"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == ALL
    proc = subprocess.run([sys.executable, "-m", "e3.plots", str(a), "--out", str(out), "--labels", "A", "B"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "2 labels for 1 run" in proc.stderr


def test_smooth_is_a_trailing_mean():
    y = np.array([0.0, 2.0, 4.0, 6.0])
    assert np.allclose(smooth(y, 2), [0.0, 1.0, 3.0, 5.0])
    assert np.allclose(smooth(y, 1), y)
