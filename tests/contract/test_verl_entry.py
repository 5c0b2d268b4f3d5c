"""Contract: the entry points. The trainer name resolves through verl's registry inside the task runner, and
``python -m e3.main_train`` on a machine without GPUs stops at once with a plain message (verl cannot run on CPU).
Without flash-attn on the driver, the preflight turns verl's default ``flash_attention_2`` into ``sdpa`` and says so.

Both run in fresh interpreters: verl's trainer registry must start without ``e3``, as in the Ray actor that
``run_ppo`` starts for the task runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RUNNER = textwrap.dedent("""
    import sys
    import transfer_queue as tq
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, PPOTrainer
    from e3.engines.verl.configs import CONFIG_DIR

    assert "e3" not in TRAINER_REGISTRY, sorted(TRAINER_REGISTRY)
    tq.init = lambda conf=None: None   # no TransferQueue / Ray needed to resolve and construct the trainer
    tq.close = lambda: None

    class Stop(Exception):
        pass

    def stop(self):  # PPOTrainer.init would now build GPU resource pools
        raise Stop(f"{type(self).__module__}.{type(self).__qualname__} trainer_mode={self.trainer_mode}")

    PPOTrainer.init = stop
    from e3.engines.verl.runner import E3TaskRunner

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="e3_r1_1.5b", overrides=[f"actor_rollout_ref.model.path={sys.argv[1]}"])
    try:
        E3TaskRunner().run(cfg)
    except Stop as e:
        print("constructed", e)

    # then the CLI, as `python -m e3.main_train --config-name e3_r1_1.5b` (same interpreter, to pay verl's import once)
    import runpy
    sys.argv = ["e3.main_train", "--config-name", "e3_r1_1.5b"]
    try:
        runpy.run_module("e3.main_train", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        print("main_train exit:", e.code)
""")


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", RUNNER, "unused-model-path"], cwd=tmp_path_factory.mktemp("cwd"),
                          env=env, capture_output=True, text=True, timeout=300)  # hydra writes outputs/ in cwd
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_task_runner_registers_and_resolves_the_e3_trainer(fresh_process):
    assert "constructed e3.engines.verl.trainer.E3Trainer trainer_mode=sync" in fresh_process


def test_main_train_without_gpu_says_so_plainly(fresh_process):
    import torch

    from e3.engines.verl.launch import NO_GPU_MESSAGE

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the CPU-only refusal")
    assert f"main_train exit: {NO_GPU_MESSAGE}" in fresh_process
    assert "verl needs NVIDIA GPUs" in NO_GPU_MESSAGE and "bash scripts/train.sh" in NO_GPU_MESSAGE
    assert "ray init" not in fresh_process  # stopped before Ray started


def test_verl_still_defaults_to_flash_attention_2():
    """What the fallback is for: verl 0.9.1 builds every HF model with ``flash_attention_2`` unless the model's
    ``override_config.attn_implementation`` names another, and verl's ppo_trainer leaves ``override_config`` empty."""
    import inspect

    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import FLASH_ATTENTION
    from verl.workers.config.model import HFModelConfig

    assert f'self.override_config.get("attn_implementation", "{FLASH_ATTENTION}")' in \
        inspect.getsource(HFModelConfig.__post_init__)
    assert dict(compose("e3_r1_1.5b").actor_rollout_ref.model.override_config) == {}


@pytest.fixture
def no_flash_attn():
    from e3.engines.verl.launch import flash_attn_error

    if flash_attn_error() is None:
        pytest.skip("flash_attn imports here: this checks the driver without it")


CLUSTER = "+ray_kwargs.ray_init.address=10.1.2.3:6379"  # a cluster to join: the preflight passes the device check


def test_preflight_falls_back_to_sdpa_without_flash_attn_and_says_so(no_flash_attn, capsys):
    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import preflight

    cfg = compose("e3_r1_1.5b", [CLUSTER])
    preflight(cfg)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    err = capsys.readouterr().err
    assert "flash_attn does not import here" in err and "No module named 'flash_attn'" in err
    assert "actor_rollout_ref.model.override_config.attn_implementation=sdpa" in err
    assert "pip install --no-build-isolation flash-attn" in err


@pytest.mark.parametrize("chosen", ["eager", "flash_attention_2"])
def test_an_attention_the_user_sets_is_left_alone(no_flash_attn, capsys, chosen):
    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import preflight

    cfg = compose("e3_r1_1.5b", [CLUSTER, f"+actor_rollout_ref.model.override_config.attn_implementation={chosen}"])
    preflight(cfg)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == chosen
    err = capsys.readouterr().err
    assert "this run uses sdpa" not in err
    if chosen == "flash_attention_2":  # kept, with a warning: the cluster's nodes may have flash-attn
        assert "is set but flash_attn does not import here" in err
