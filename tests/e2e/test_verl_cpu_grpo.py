"""End to end: stock verl GRPO on the CPU (``verl_cpu_grpo``), launched the way a verl user would, read from its outputs.

``bash scripts/train.sh --config verl_cpu_grpo --run-dir DIR actor_rollout_ref.model.path=... data.train_files=...
data.val_files=...`` on a Hugging Face model directory and verl parquet files: here the tiny model and arithmetic
parquet that ``e3.engines.verl.cpu.tiny`` builds (the cache ``test_verl_cpu.py`` uses), with the task's verifier as
``reward.custom_reward_function`` (verl's default scorer does not know its data_source). 3 steps, 4 prompts x n=4,
validation before training and at the last step. Nothing is mocked: verl's ``TaskRunnerV1``, its ``PPOTrainerSync``
(``trainer.v1.trainer_mode=sync``), its agent-loop manager, reward loop and GRPO advantages, on our ``e3_cpu``
platform and ``hf`` rollout. Read: ``metrics.jsonl`` (verl's file logger), ``rollouts/<step>.jsonl`` (verl's dump
of each trained batch), ``checkpoints/`` (verl's checkpoint, from ``--run-dir``).

What it cannot see: vLLM, NCCL and multi-GPU sharding (one CPU process trains, gloo, FSDP over one rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from e3.io import read_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
B, N, STEPS = 4, 4, 3  # verl_cpu_grpo's batch and rollout.n; steps of this run

ASSETS = """
import json, sys
from e3.engines.verl.configs import compose
from e3.engines.verl.cpu.tiny import prepare_run
config = compose("verl_cpu_tiny", ["cpu_tiny.train_size=16", f"cpu_tiny.run_dir={sys.argv[1]}"])
prepare_run(config)  # the tiny model and parquet, built once and cached (as verl_cpu_runs.py uses them)
print("ASSETS" + json.dumps({"model": config.cpu_tiny.model_dir, "data": config.cpu_tiny.data_dir}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl_cpu_grpo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    prep = subprocess.run([sys.executable, "-c", ASSETS, str(root / "assets_run")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)  # a subprocess: no verl plugin in pytest
    assert prep.returncode == 0, prep.stderr[-3000:]
    assets = json.loads([ln for ln in prep.stdout.splitlines() if ln.startswith("ASSETS")][-1][len("ASSETS"):])
    run_dir = root / "run"
    cmd = ["bash", str(REPO / "scripts" / "train.sh"), "--config", "verl_cpu_grpo", "--run-dir", str(run_dir),
           f"actor_rollout_ref.model.path={assets['model']}",
           f"data.train_files={assets['data']}/train.parquet", f"data.val_files={assets['data']}/val.parquet",
           "data.max_prompt_length=8", "data.max_response_length=6",
           "reward.custom_reward_function.path=pkg://e3.engines.verl.cpu.tiny",
           "reward.custom_reward_function.name=compute_score",
           f"trainer.total_training_steps={STEPS}", f"trainer.test_freq={STEPS}",
           f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
           f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={run_dir / 'metrics.jsonl'}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    steps: dict[int, dict] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        steps.setdefault(int(rec["step"]), {}).update(rec["data"])
    return {"dir": run_dir, "metrics": steps, "output": proc.stdout + proc.stderr}


def test_verls_own_task_runner_and_sync_trainer_ran_without_e3(run):
    out = run["output"]
    assert "TaskRunnerV1 pid=" in out and "E3TaskRunner" not in out and "E3Trainer" not in out
    assert "'trainer_mode': 'sync'" in out  # verl's pprint of the config it runs
    train = {s: m for s, m in run["metrics"].items() if s > 0}
    assert sorted(train) == list(range(1, STEPS + 1))
    for m in train.values():
        assert not [k for k in m if k.startswith(("rollout/", "groups/"))]  # none of the E3 controller's metrics
        assert {"critic/advantages/mean", "critic/score/mean", "actor/pg_loss", "timing_s/step"} <= set(m)
        assert np.isfinite(m["actor/pg_loss"]) and m["actor/grad_norm"] > 0
    last = run["dir"] / "checkpoints" / f"global_step_{STEPS}"
    assert (run["dir"] / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)
    assert (last / "actor").is_dir() and (last / "data.pt").is_file()
    assert not list(run["dir"].rglob("e3_controller.pt"))


def test_every_prompt_got_exactly_n_samples_and_grpo_advantages(run):
    for step in range(1, STEPS + 1):
        rows = read_jsonl(run["dir"] / "rollouts" / f"{step}.jsonl")
        groups = defaultdict(list)
        for row in rows:  # verl's uid: <prompt uuid>_<sample>_<turn>
            groups[row["uid"].split("_")[0]].append(row)
        assert len(groups) == B, step
        for g in groups.values():
            assert sorted(int(r["uid"].split("_")[1]) for r in g) == list(range(N)), step  # samples 0..n-1
            assert len({r["input"] for r in g}) == 1  # of one prompt
        m = run["metrics"][step]
        scores = [r["score"] for r in rows]
        assert m["critic/score/mean"] == pytest.approx(np.mean(scores), abs=1e-6)  # verl's reward, the task verifier
        # verl's GRPO outcome advantage, one value per sample (all its tokens): (score - group mean) / (group std + eps)
        adv = [(r["score"] - np.mean([x["score"] for x in g])) / (np.std([x["score"] for x in g], ddof=1) + 1e-6)
               for g in groups.values() for r in g]
        assert m["critic/advantages/max"] == pytest.approx(max(adv), abs=1e-4), step
        assert m["critic/advantages/min"] == pytest.approx(min(adv), abs=1e-4), step


def test_validation_ran_before_training_and_at_the_last_step(run):
    key = "val-core/e3_tiny_arith/acc/mean@1"
    assert key in run["metrics"][0] and key in run["metrics"][STEPS]
    assert 0.0 <= run["metrics"][0][key] <= 1.0
