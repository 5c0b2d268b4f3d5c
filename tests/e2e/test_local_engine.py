"""End to end: tiny real runs of the local engine (warm start, GRPO steps, controllers, checkpoints, resume).

What a user checks after ``bash scripts/train.sh``: parameters moved, the temperature moved, budgets varied within
[n_min, n_max] with a constant total, metrics and checkpoints written, a killed run resumes and makes exactly the
decisions an uninterrupted run makes, bad input stops before anything is written.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from e3.engines.local import checkpoint as ckpt
from e3.engines.local.engine import main, run
from e3.io import read_jsonl
from e3.engines.local.schema import ConfigError
from e3.io import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = ["step", "rollout/temperature", "rollout/entropy", "rollout/target_entropy", "rollout/n_min",
          "rollout/n_max", "rollout/n_total", "rollout/n_hist", "reward/mean", "groups/all_correct",
          "groups/all_wrong", "groups/informative_rollouts"]


@pytest.fixture(scope="session")
def ws_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("warm_start_cache"))


def tiny(ws_cache, **extra) -> dict:
    """A run of a few seconds: 2-layer 32-wide model, 24 training prompts (3 steps per epoch)."""
    cfg = {
        "threads": 1, "device": "cpu", "plots": False,
        "task": {"levels": ["2d+-1d", "2d*1d"], "train_size": 24, "val_size": 40},
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "warm_start": {"steps": 30, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
                       "cache_dir": ws_cache},
        "rollout": {"batch_size": 8, "n": 4},
        "trainer": {"total_steps": 8, "save_every": 2, "val_every": 4, "lr": 1e-3},
        "val": {"n_samples": 2},
        "e3": {"allocation": {"n_low": 2, "n_high": 6, "n_update": 2}},
    }
    return OmegaConf.to_container(OmegaConf.merge(cfg, extra))


def strip_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("time/") and not k.startswith("warm_start/")}


def test_a_tiny_run_trains_and_every_controller_acts(tmp_path, ws_cache):
    res = run(tiny(ws_cache, plots=True), run_dir=str(tmp_path / "run"), quiet=True)
    ms = res.metrics
    steps = [m for m in ms if m["step"] > 0]
    assert [m["step"] for m in ms] == list(range(0, 9))
    for m in steps:
        assert set(SHARED) <= set(m), set(SHARED) - set(m)
        n = m["rollout/n_hist"]
        assert m["rollout/n_total"] == sum(n) == 8 * 4  # sum of budgets constant every step
        assert all(m["rollout/n_min"] <= x <= m["rollout/n_max"] for x in n)
    # budgets varied once the first epoch (3 steps) ranked the prompts
    assert any(len(set(m["rollout/n_hist"])) > 1 for m in steps)
    assert min(min(m["rollout/n_hist"]) for m in steps) < 4 < max(max(m["rollout/n_hist"]) for m in steps)
    # the temperature moved away from tau_0 = 1 while the target came from step 1's entropy
    assert steps[0]["rollout/temperature"] == 1.0
    assert abs(steps[-1]["rollout/temperature"] - 1.0) > 1e-3
    assert steps[0]["rollout/target_entropy"] == pytest.approx(steps[0]["rollout/entropy"])
    # validation at step 0 (after the warm start), at val_every and at the last step
    assert [m["step"] for m in ms if "val/accuracy" in m] == [0, 4, 8]
    assert "val/accuracy_delta_stderr" in ms[-1] and ms[0]["val/problems"] == 40
    # parameters changed between the step-0 checkpoint and the final model
    assert ckpt.list_steps(res.run_dir) == [6, 8]  # keep_checkpoints = 2
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(os.path.join(res.run_dir, "final_model"))
    cached = torch.load(os.path.join(ws_cache, os.listdir(ws_cache)[0]), weights_only=True)["model"]
    moved = [k for k, v in final.state_dict().items() if k in cached and not torch.equal(v, cached[k])]
    assert len(moved) > 0.9 * len(cached)
    assert res.figures and all(os.path.isfile(f) and f.endswith(".png") for f in res.figures)
    with open(os.path.join(res.run_dir, "metrics.jsonl")) as fh:
        assert len(fh.readlines()) == 9


def test_prepo_curriculum_and_weights_drive_the_run(tmp_path, ws_cache):
    cfg = tiny(ws_cache, task={"train_size": 80}, trainer={"total_steps": 3},
               e3={"curriculum": {"enable": True, "window_ratio": 0.2}, "weighting": {"enable": True}})
    ms = run(cfg, run_dir=str(tmp_path / "run"), quiet=True).metrics[1:]
    # |B| = 8 / 0.2 = 40 candidates scored per step; window start l(rho) = floor(rho * (40 - 8)), rho = step / 2
    # over the steps completed before each batch (0, 1, 2): the last step's window is the 8 hardest candidates
    assert [m["curriculum/window_start"] for m in ms] == [0, 16, 32]
    assert all(m["curriculum/ppl_min"] <= m["curriculum/ppl_max"] for m in ms)
    assert ms[-1]["curriculum/ppl_mean"] > ms[0]["curriculum/ppl_mean"]  # easy -> hard
    assert all(abs(m["weights/mean"] - 1.0) < 1e-9 and m["weights/std"] > 0 for m in ms)


def test_offline_prepo_paces_over_the_dataset_scored_once(tmp_path, ws_cache):
    cfg = tiny(ws_cache, task={"train_size": 80}, trainer={"total_steps": 3},
               e3={"curriculum": {"enable": True, "mode": "offline", "window_ratio": 0.2}})
    ms = run(cfg, run_dir=str(tmp_path / "run"), quiet=True).metrics[1:]
    # window of max(8, 0.2 * 80) = 16 sorted prompts starting at floor(step / 2 * (80 - 16)), step = 0, 1, 2
    assert [m["curriculum/window_start"] for m in ms] == [0, 32, 64]
    assert ms[-1]["curriculum/ppl_mean"] > ms[0]["curriculum/ppl_mean"]


def test_bad_input_stops_before_anything_is_written(tmp_path, ws_cache, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown config key trainer.bogus"):
        run(None, run_dir=str(run_dir), overrides=["trainer.bogus=1"], quiet=True)
    assert main(["--run-dir", str(run_dir), "e3.temperature.nope=1"]) == 2
    assert "unknown config key e3.temperature.nope" in capsys.readouterr().err
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "3+4=", "answer": "7"}\n{"prompt": "5+5="}\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: field 'answer': no ground truth"):
        run(tiny(ws_cache, data={"train_file": str(bad)}), run_dir=str(run_dir), quiet=True)
    with pytest.raises(DataError, match="not found"):
        run(tiny(ws_cache, data={"val_file": str(tmp_path / "missing.parquet")}), run_dir=str(run_dir), quiet=True)
    assert not run_dir.exists()


def test_existing_run_dir_is_never_overwritten(tmp_path, ws_cache):
    run_dir = tmp_path / "run"
    run(tiny(ws_cache, trainer={"total_steps": 2}), run_dir=str(run_dir), quiet=True)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        run(tiny(ws_cache, trainer={"total_steps": 2}), run_dir=str(run_dir), quiet=True)
    with pytest.raises(ConfigError, match="differs from the run's saved config at trainer.lr"):
        run(tiny(ws_cache, trainer={"total_steps": 2, "lr": 5e-4}), run_dir=str(run_dir), resume=True, quiet=True)
    with pytest.raises(ConfigError, match="not a run directory"):
        run(tiny(ws_cache), run_dir=str(tmp_path / "empty"), resume=True, quiet=True)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resume_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, ws_cache):
    run_dir = tmp_path / "run"

    def crash(event, info):
        if event == "checkpoint_partial":
            raise RuntimeError("simulated crash while writing the step-0 checkpoint")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny(ws_cache, trainer={"total_steps": 2}), run_dir=str(run_dir), hooks=[crash], quiet=True)
    assert ckpt.list_steps(str(run_dir)) == [] and (run_dir / "metrics.jsonl").exists()
    res = run(None, run_dir=str(run_dir), resume=True, quiet=True)
    assert [m["step"] for m in res.metrics] == [0, 1, 2] and ckpt.list_steps(str(run_dir)) == [0, 2]


def _spawn(cfg: dict, run_dir: str, resume: bool = False, kill_at: tuple = None) -> subprocess.CompletedProcess:
    """Run the engine in a fresh interpreter; ``kill_at=(event, step)`` SIGKILLs it from inside at that point."""
    code = textwrap.dedent(f"""
        import json, os, signal, sys
        from e3.engines.local.engine import run
        kill_at = {kill_at!r}
        def hook(event, info):
            if kill_at and event == kill_at[0] and info["step"] == kill_at[1]:
                os.kill(os.getpid(), signal.SIGKILL)
        run(json.loads(sys.argv[1]), run_dir=sys.argv[2], resume={resume}, hooks=[hook], quiet=True)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", code, json.dumps(cfg), run_dir], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_and_resume_make_the_same_decisions_as_an_uninterrupted_run(tmp_path, ws_cache):
    cfg = tiny(ws_cache, trainer={"total_steps": 7, "save_every": 2, "val_every": 7})
    ref = _spawn(cfg, str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    reference = [strip_timing(m) for m in read_jsonl(tmp_path / "ref" / "metrics.jsonl")]

    # killed mid-step 6 (after sampling): resumes from the step-4 checkpoint
    run_dir = str(tmp_path / "killed")
    p = _spawn(cfg, run_dir, kill_at=("after_rollout", 6))
    assert p.returncode == -signal.SIGKILL
    assert ckpt.list_steps(run_dir) == [2, 4]
    # killed while writing the step-6 checkpoint: the partial directory is ignored, resume from step 4 again
    p = _spawn(cfg, run_dir, resume=True, kill_at=("checkpoint_partial", 6))
    assert p.returncode == -signal.SIGKILL
    assert ckpt.list_steps(run_dir) == [2, 4]
    assert any(n.startswith(".tmp-step_000006") for n in os.listdir(os.path.join(run_dir, "checkpoints")))
    p = _spawn(cfg, run_dir, resume=True)
    assert p.returncode == 0, p.stderr
    resumed = [strip_timing(m) for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]
    assert [m["step"] for m in resumed] == list(range(8))
    for a, b in zip(reference, resumed):  # n_i, temperature, rewards, entropy, loss: all identical
        assert a == b, (a["step"], {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})
    assert not any(n.startswith(".tmp-") for n in os.listdir(os.path.join(run_dir, "checkpoints")))
    ref_state = ckpt.load(ckpt.latest_checkpoint(str(tmp_path / "ref")))
    new_state = ckpt.load(ckpt.latest_checkpoint(run_dir))
    assert all(torch.equal(ref_state["model"][k], new_state["model"][k]) for k in ref_state["model"])
    assert ref_state["controller"] == new_state["controller"]
