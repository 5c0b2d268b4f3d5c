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


def test_the_runtime_guard_passes_on_the_pinned_verl():
    from e3.engines.verl.internals import VERL_VERSION, check_colocate_async, check_verl_internals

    assert VERL_VERSION == importlib.metadata.version("verl")
    check_verl_internals()  # the trainer hooks, TransferQueue fields, __rollout_n__, __ray_actor_class__
    check_colocate_async()  # and what E3ColocateAsyncTrainer relies on


def _run_prompt_without_rollout_n(self, prompt, sampling_params, trajectory, trace=False):
    n = self.config.actor_rollout_ref.rollout.n
    return [prompt] * n


@pytest.mark.parametrize("target,replacement,symbol", [
    ("verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ.__ray_actor_class__._run_prompt",
     _run_prompt_without_rollout_n, "AgentLoopWorkerTQ._run_prompt"),
    ("verl.trainer.ppo.v1.trainer_sync.PPOTrainerSync._compute_advantage",
     lambda self, batch, metrics, extra=None: batch, "PPOTrainer._compute_advantage"),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._update_actor",
     lambda self, batch: batch, "PPOTrainer._update_actor"),
])
def test_the_runtime_guard_names_a_changed_internal_and_the_supported_version(monkeypatch, target, replacement,
                                                                              symbol):
    """A verl whose hook, agent loop or temperature plumbing moved: the trainer's constructor fails first, naming
    the symbol and verl 0.9.1 (monkeypatched here: only one verl is installed)."""
    import importlib as il

    from e3.engines.verl.internals import VerlInternalsChanged, check_verl_internals

    module_name, _, attr = target.rpartition(".")
    owner_path = module_name.split(".")
    for cut in range(len(owner_path), 0, -1):  # the longest importable prefix, then attributes
        try:
            owner = il.import_module(".".join(owner_path[:cut]))
            break
        except ModuleNotFoundError:
            continue
    for part in owner_path[cut:]:
        owner = getattr(owner, part)
    monkeypatch.setattr(owner, attr, replacement)
    with pytest.raises(VerlInternalsChanged, match=r"verl==0\.9\.1") as err:
        check_verl_internals()
    assert symbol in str(err.value)


def test_the_runtime_guard_refuses_another_verl_version(monkeypatch):
    import verl

    from e3.engines.verl import internals

    monkeypatch.setattr(verl, "__version__", "0.10.0")
    with pytest.raises(internals.VerlInternalsChanged, match=r"installed verl is 0\.10\.0"):
        internals.check_verl_internals()


def test_the_trainer_runs_the_guard_before_anything_else(monkeypatch):
    from e3.engines.verl import trainer
    from e3.engines.verl.internals import VerlInternalsChanged

    def refuse():
        raise VerlInternalsChanged("stop")

    monkeypatch.setattr(trainer, "check_verl_internals", refuse)
    with pytest.raises(VerlInternalsChanged, match="stop"):
        trainer.E3Trainer(config=None)  # fails before the config is read


def test_trainer_behaviour_the_adapter_depends_on():
    """Behaviour beyond the guard's shape checks: loop order, checkpoint layout, entropy metric, the verl key for
    Dr. GRPO the adapter honours."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    assert '"actor/entropy"' in inspect.getsource(PPOTrainer._compute_old_log_prob)
    fit = inspect.getsource(PPOTrainer.fit)
    assert fit.index("self.step(metrics") < fit.index("self._save_checkpoint()") < fit.index("self.on_step_end()")
    load = inspect.getsource(PPOTrainer._load_checkpoint)
    assert 'global_step_folder.split("global_step_")' in load and "resume_from_path" in load
    save = inspect.getsource(PPOTrainer._save_checkpoint)
    assert save.index('f"global_step_{self.global_steps}"') < save.index("latest_checkpointed_iteration.txt")
    assert 'norm_adv_by_std_in_grpo=self.config.algorithm.get("norm_adv_by_std_in_grpo"' in inspect.getsource(
        PPOTrainer._compute_advantage)


def test_rollout_symbols():
    from verl.workers.config.rollout import AgentLoopConfig

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


@pytest.mark.parametrize("module", ["e3.engines.verl.trainer", "e3.engines.verl.trainer_async",
                                    "e3.engines.verl.inflight", "e3.engines.verl.rollout", "e3.engines.verl.runner",
                                    "e3.engines.verl.rollouts", "e3.engines.verl.configs",
                                    "e3.engines.verl.launch", "e3.main_train"])
def test_adapter_modules_import(module):
    import importlib

    assert importlib.import_module(module).__doc__  # imports against the installed verl, documented
