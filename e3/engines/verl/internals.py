"""The verl 0.9.1 internals the E3 adapter overrides or reads, checked at run time before the trainer is built.

verl is pinned exactly (``verl[verl-core]==0.9.1``), but an environment can still hold another verl (a cluster image,
a user's upgrade). The adapter subclasses verl's sync trainer (and, ``check_colocate_async``, its colocate_async
trainer, with a per-sample temperature on the training calls) and overrides its hooks, reads fields verl writes to
TransferQueue, relies on verl's agent loop popping the ``__rollout_n__`` column, and subclasses a Ray actor class
through ``__ray_actor_class__``. ``check_verl_internals()`` (called by ``E3Trainer.__init__``, on every device)
checks each of these against the installed verl and raises ``VerlInternalsChanged`` naming the symbol, what changed
and the supported version, instead of a failure (or a silently wrong run) somewhere later.

What is checked is the shape (names, signatures) and, where behaviour matters, the source line that carries it
(e.g. ``prompt.pop("__rollout_n__"`` in the agent loop); the source is read with ``inspect``, nothing is patched.
"""

from __future__ import annotations

import inspect

VERL_VERSION = "0.9.1"


class VerlInternalsChanged(RuntimeError):
    """The installed verl no longer has an internal the E3 adapter relies on."""


def installed_version() -> str:
    """The version the imported verl reports (``verl.__version__``)."""
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def changed(symbol: str, what: str) -> VerlInternalsChanged:
    return VerlInternalsChanged(
        f"{symbol}: {what}. The E3 adapter supports verl=={VERL_VERSION} (pinned in pyproject.toml); the installed "
        f"verl is {installed_version()}. Install verl[verl-core]=={VERL_VERSION} or port e3/engines/verl/ to it.")


def check_version() -> None:
    if installed_version() != VERL_VERSION:
        raise changed("verl", f"expected version {VERL_VERSION}")


def _params(fn) -> list[str]:
    """Parameter names, without the ``_ray_trace_ctx`` that ``ray.remote`` adds to actor-class methods."""
    return [p for p in inspect.signature(fn).parameters if p != "_ray_trace_ctx"]


def _require_method(owner, name: str, params: list[str], where: str):
    fn = getattr(owner, name, None)
    if fn is None:
        raise changed(f"{where}.{name}", "is gone")
    got = _params(fn)
    if got != params:
        raise changed(f"{where}.{name}", f"takes ({', '.join(got)}), the adapter overrides ({', '.join(params)})")
    return fn


def _require_source(fn, needle: str, symbol: str, meaning: str) -> None:
    if needle not in inspect.getsource(fn):
        raise changed(symbol, f"no longer contains `{needle}` ({meaning})")


# Hooks E3Trainer overrides, with the parameters it calls super() with.
TRAINER_HOOKS = {
    "__init__": ["self", "config"],
    "_init_dataloader": ["self"],
    "on_step_begin": ["self"],
    "prepare_step": ["self"],
    "_next_train_batch": ["self", "num_prompts"],
    "_add_prompts_to_generate": ["self", "num_prompts"],
    "_compute_old_log_prob": ["self", "batch", "metrics"],
    "_compute_advantage": ["self", "batch", "metrics"],
    "step": ["self", "metrics", "timing_raw"],
    "_val_metrics_update": ["self", "data_sources", "sample_uids", "reward_extra_infos_dict", "sample_turns",
                            "expected_acc_counts"],
    "_save_checkpoint": ["self"],
    "_load_checkpoint": ["self"],
}


def check_trainer() -> None:
    """The sync trainer: registry, the overridden hooks, where tau and the mode are read."""
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    where = "verl.trainer.ppo.v1.trainer_base.PPOTrainer"
    for name in ("register_trainer", "get_trainer_cls", "PPOTrainer"):
        if not hasattr(trainer_base, name):
            raise changed(f"verl.trainer.ppo.v1.trainer_base.{name}", "is gone")
    if trainer_base.get_trainer_cls("sync") is not PPOTrainerSync:
        raise changed("verl.trainer.ppo.v1.trainer_base.get_trainer_cls('sync')", "is no longer PPOTrainerSync")
    base = trainer_base.PPOTrainer
    hooks = {name: _require_method(PPOTrainerSync, name, params, where) for name, params in TRAINER_HOOKS.items()}
    _require_source(hooks["__init__"], "self.trainer_mode = self.config.trainer.v1.trainer_mode", f"{where}.__init__",
                    "E3Trainer answers trainer_mode 'sync'")
    for name in ("_compute_old_log_prob", "_update_actor", "_compute_ref_log_prob"):
        fn = getattr(base, name, None)
        if fn is None:
            raise changed(f"{where}.{name}", "is gone")
        _require_source(fn, "self.config.actor_rollout_ref.rollout.temperature", f"{where}.{name}",
                        "the training passes must divide the logits by the tau E3 writes there each step")


def check_transfer_queue_fields() -> None:
    """The fields E3 reads back from TransferQueue and the key layout it groups rollouts by."""
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    worker = AgentLoopWorkerTQ.__ray_actor_class__
    post = getattr(worker, "_agent_loop_postprocess", None)
    if post is None:
        raise changed("verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ._agent_loop_postprocess", "is gone")
    symbol = "AgentLoopWorkerTQ._agent_loop_postprocess"
    _require_source(post, 'keys.append(f"{uid}_{session_id}_{i}")', symbol,
                    "E3 groups rollouts by the uid and session of the key '{uid}_{session_id}_{index}'")
    _require_source(post, "field.update(kwargs)", symbol, "the prompt's `index` column must reach every rollout row")
    _require_source(RLHFDataset.__getitem__, 'get("index"', "verl.utils.dataset.rl_dataset.RLHFDataset.__getitem__",
                    "E3 tracks difficulty per extra_info.index")
    advantage = PPOTrainer._compute_advantage
    for field in ('"rm_scores"', '"token_level_rewards"', '"advantages"', '"returns"', '"response_mask"'):
        _require_source(advantage, field, "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage",
                        f"E3 reads / writes the TransferQueue field {field}")
    _require_source(PPOTrainer._compute_old_log_prob, '"entropy"',
                    "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_old_log_prob",
                    "E3's scheduler and PREPO weights read the per-token `entropy` field")


def check_agent_loop() -> None:
    """verl's agent loop: per-prompt n from ``__rollout_n__``, and the Ray actor classes E3 subclasses."""
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ

    for name, actor in (("verl.trainer.main_ppo.TaskRunnerV1", TaskRunnerV1),
                        ("verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ", AgentLoopWorkerTQ)):
        if not isinstance(getattr(actor, "__ray_actor_class__", None), type):
            raise changed(f"{name}.__ray_actor_class__", "is gone (E3 subclasses the class inside verl's Ray actor)")
    worker = AgentLoopWorkerTQ.__ray_actor_class__
    symbol = "verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ._run_prompt"
    run_prompt = _require_method(worker, "_run_prompt", ["self", "prompt", "sampling_params", "trajectory", "trace"],
                                 "verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ")
    _require_source(run_prompt, 'prompt.pop("__rollout_n__"', symbol,
                    "E3's per-prompt budgets travel in the __rollout_n__ column verl's agent loop pops")
    _require_source(AgentLoopManagerTQ.__init__, "self.agent_loop_workers_class = AgentLoopWorkerTQ",
                    "verl.trainer.ppo.v1.agent_loop_tq.AgentLoopManagerTQ.__init__",
                    "E3AgentLoopManager replaces the worker class verl sets there")
    run = getattr(TaskRunnerV1.__ray_actor_class__, "run", None)
    if run is None:
        raise changed("verl.trainer.main_ppo.TaskRunnerV1.run", "is gone")
    _require_source(run, "get_trainer_cls(config.trainer.v1.trainer_mode)", "verl.trainer.main_ppo.TaskRunnerV1.run",
                    "the `e3` trainer is found through verl's trainer registry")


# The training calls whose batch-wide temperature E3ColocateAsyncTrainer drops: PPOTrainer method -> the call in it.
PER_SAMPLE_TEMPERATURE_CALLS = {
    "_compute_old_log_prob": "self.actor_rollout_wg.compute_log_prob(batch)",
    "_compute_ref_log_prob": "self.ref_policy_wg.compute_ref_log_prob(batch)",
    "_update_actor": "self.actor_rollout_wg.update_actor(batch)",
}


def _require_module_text(module: str, needle: str, meaning: str) -> None:
    """Like ``_require_source`` for a module read as text, not imported (verl's worker-side modules import the
    training engines, which the driver does not need)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise changed(module, "is gone")
    with open(spec.origin, encoding="utf-8") as handle:
        if needle not in handle.read():
            raise changed(module, f"no longer contains `{needle}` ({meaning})")


def check_colocate_async() -> None:
    """verl's colocate_async trainer, for ``E3ColocateAsyncTrainer``: the registry, the hooks E3 overrides there, the
    dispatch paths (warm-up, refill), the prompt columns kept for a resume, and the per-sample temperature path
    (the worker-group calls it wraps, how verl hands ``extra_info`` to the worker, the engine's per-row tau)."""
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
    from verl.utils import transferqueue_utils

    check_version()
    where, base = "verl.trainer.ppo.v1.trainer_colocate_async.PPOTrainerColocateAsync", trainer_base.PPOTrainer
    if trainer_base.get_trainer_cls("colocate_async") is not PPOTrainerColocateAsync:
        raise changed("verl.trainer.ppo.v1.trainer_base.get_trainer_cls('colocate_async')",
                      "is no longer PPOTrainerColocateAsync")
    for name, params in {**TRAINER_HOOKS, "_setup": ["self"]}.items():
        _require_method(PPOTrainerColocateAsync, name, params, where)
    at = "verl.trainer.ppo.v1.trainer_base.PPOTrainer"
    _require_source(PPOTrainerColocateAsync.on_train_begin, "self._add_async_warmup_batches(",
                    f"{where}.on_train_begin", "the warm-up batches are dispatched before step 1")
    for name, needle, meaning in (
            ("_add_async_warmup_batches", "self._add_prompts_to_generate(",
             "the warm-up dispatch goes through the hook E3 plans budgets in"),
            ("_build_replay_buffer", "refill_fn=self._add_prompts_to_generate",
             "verl's refills of evicted groups go through that hook"),
            ("_submit_batch_to_rollout", "fields=batch.select(",
             "an async dispatch keeps the prompt columns (budget, tau) in TransferQueue for a resume"),
            ("_reissue_inflight_prompts", "tq.kv_batch_get(keys=inflight_uids",
             "a resume re-issues the in-flight prompts with their stored columns"),
            ("_setup", "self.ref_policy_wg = ", "E3 wraps the worker groups' training calls after _setup"),
            *((method, call, "E3 drops the batch-wide temperature of that worker-group call")
              for method, call in PER_SAMPLE_TEMPERATURE_CALLS.items())):
        fn = getattr(base, name, None)
        if fn is None:
            raise changed(f"{at}.{name}", "is gone")
        _require_source(fn, needle, f"{at}.{name}", meaning)
    _require_source(WorkerGroup._bind_worker_method, "setattr(self, method_name, func)",
                    "verl.single_controller.base.worker_group.WorkerGroup._bind_worker_method",
                    "worker-group calls are instance attributes E3 can wrap")
    _require_source(transferqueue_utils._async_meta_to_realdata, "tu.assign_non_tensor_data(",
                    "verl.utils.transferqueue_utils._async_meta_to_realdata",
                    "an extra_info value replaces the per-sample field of that name on the worker")
    for name in ("compute_log_prob", "update_actor", "compute_ref_log_prob"):
        _require_module_text("verl.workers.engine_workers", f"def {name}(self, data: TensorDict)",
                             f"ActorRolloutRefWorker.{name} is the worker method behind the wrapped call")
    for needle in ('temperature = micro_batch["temperature"]', "if not isinstance(temperature, torch.Tensor):"):
        _require_module_text("verl.workers.engine.fsdp.transformer_impl", needle,
                             "the FSDP engine divides each row's logits by that row's `temperature` field")


def check_verl_internals() -> None:
    """Every check above; the first mismatch raises ``VerlInternalsChanged``."""
    check_version()
    check_trainer()
    check_transfer_queue_fields()
    check_agent_loop()
