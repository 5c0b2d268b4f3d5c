"""Every verl 0.9.1 symbol and behaviour the adapter relies on, checked in one place.

If a verl upgrade renames, moves or changes one of these, this file fails first and names it. The adapter pins
``verl[verl-core]==0.9.1``; the source checks below are the assumptions written down in e3/engines/verl/*.py.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest


def params(fn) -> list[str]:
    """Parameter names, without the ``_ray_trace_ctx`` that ``ray.remote`` adds to actor-class methods."""
    return [p for p in inspect.signature(fn).parameters if p != "_ray_trace_ctx"]


def test_pinned_version():
    assert importlib.metadata.version("verl") == "0.9.1"


def test_trainer_symbols_and_hooks():
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, PPOTrainer, get_trainer_cls, register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    assert get_trainer_cls("sync") is PPOTrainerSync and TRAINER_REGISTRY["sync"] is PPOTrainerSync
    assert callable(register_trainer)
    # the methods E3Trainer overrides, with the signatures it calls super() with
    assert params(PPOTrainer.__init__) == ["self", "config"]
    assert params(PPOTrainer._init_dataloader) == ["self"]
    assert params(PPOTrainer.on_step_begin) == ["self"]
    assert params(PPOTrainer._next_train_batch) == ["self", "num_prompts"]
    assert params(PPOTrainer._compute_old_log_prob) == ["self", "batch", "metrics"]
    assert params(PPOTrainer._compute_advantage) == ["self", "batch", "metrics"]
    assert params(PPOTrainer.step) == ["self", "metrics", "timing_raw"]
    assert params(PPOTrainer._val_metrics_update) == ["self", "data_sources", "sample_uids",
                                                      "reward_extra_infos_dict", "sample_turns",
                                                      "expected_acc_counts"]
    assert params(PPOTrainer._save_checkpoint) == ["self"] and params(PPOTrainer._load_checkpoint) == ["self"]
    # behaviour the adapter depends on
    init = inspect.getsource(PPOTrainer.__init__)
    assert "self.trainer_mode = self.config.trainer.v1.trainer_mode" in init  # E3Trainer maps it to "sync"
    for method in (PPOTrainer._compute_old_log_prob, PPOTrainer._update_actor, PPOTrainer._step_once):
        assert "self.config.actor_rollout_ref.rollout.temperature" in inspect.getsource(method)
    assert '"actor/entropy"' in inspect.getsource(PPOTrainer._compute_old_log_prob)
    fit = inspect.getsource(PPOTrainer.fit)
    assert fit.index("self.step(metrics") < fit.index("self._save_checkpoint()") < fit.index("self.on_step_end()")
    load = inspect.getsource(PPOTrainer._load_checkpoint)
    assert 'global_step_folder.split("global_step_")' in load and "resume_from_path" in load
    save = inspect.getsource(PPOTrainer._save_checkpoint)
    assert save.index('f"global_step_{self.global_steps}"') < save.index("latest_checkpointed_iteration.txt")


def test_rollout_symbols():
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ
    from verl.workers.config.rollout import AgentLoopConfig

    worker_cls = AgentLoopWorkerTQ.__ray_actor_class__
    assert params(worker_cls._run_prompt) == ["self", "prompt", "sampling_params", "trajectory", "trace"]
    run_prompt = inspect.getsource(worker_cls._run_prompt)
    assert 'prompt.pop("__rollout_n__"' in run_prompt  # verl's native per-prompt n
    assert "range(n)" in run_prompt and "session_id=i" in run_prompt
    assert "self.agent_loop_workers_class = AgentLoopWorkerTQ" in inspect.getsource(AgentLoopManagerTQ.__init__)
    assert "agent_loop_manager_class" in AgentLoopConfig.__dataclass_fields__


def test_entry_symbols():
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    assert params(run_ppo) == ["config", "task_runner_class"]
    run = inspect.getsource(TaskRunnerV1.__ray_actor_class__.run)
    assert "get_trainer_cls(config.trainer.v1.trainer_mode)" in run
    manager = inspect.getsource(TaskRunnerV1.__ray_actor_class__.init_agent_loop_manager)
    assert "agent_loop_manager_class" in manager
    assert all(callable(f) for f in (need_critic, need_reference_policy, validate_config, auto_set_device))


def test_data_and_queue_symbols():
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta

    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    assert callable(tq.kv_batch_get) and callable(tq.kv_batch_put) and KVBatchMeta
    assert callable(tu.get_tensordict) and callable(tu.assign_non_tensor_data) and callable(collate_fn)
    getitem = inspect.getsource(RLHFDataset.__getitem__)
    assert 'get("index"' in getitem  # our difficulty key is extra_info.index


def test_config_files_we_extend():
    from importlib.resources import files

    assert files("verl.trainer.config").joinpath("ppo_trainer.yaml").is_file()
    assert files("verl.trainer.config").joinpath("transfer_queue/transfer_queue.yaml").is_file()


def test_harness_symbols():
    """Used only by the contract tests' fakes (tests/contract/verl_harness.py)."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.workers.rollout.replica import TokenOutput

    assert params(RewardLoopWorker.__init__)[:2] == ["self", "config"]
    assert {"token_ids", "extra_fields"} <= set(TokenOutput.model_fields)


@pytest.mark.parametrize("module", ["e3.engines.verl.trainer", "e3.engines.verl.rollout", "e3.engines.verl.runner",
                                    "e3.engines.verl.rollouts", "e3.main_train"])
def test_adapter_modules_import(module):
    import importlib

    assert importlib.import_module(module).__doc__  # imports against the installed verl, documented
