"""verl 0.9.1 on a machine without a GPU: a verl plugin (platform + rollout backend), loaded the way verl documents.

verl imports the modules named in ``VERL_USE_EXTERNAL_MODULES`` whenever ``import verl`` runs — in the driver, the
task runner and every Ray worker — and picks the platform named by ``VERL_PLATFORM``. Importing this module:

- registers the ``e3_cpu`` platform (``platform.CPUPlatform``: device ``cpu``, collectives on gloo);
- registers the ``hf`` rollout backend (``hf_rollout``: transformers ``generate``), its replica in verl's public
  ``RolloutReplicaRegistry`` and its weight-receiving adapter in verl's private adapter table;
- gives CPU training workers a valid gloo process-group backend string.

The last two touch verl internals; both live in ``verl_internals`` and fail loudly naming the verl version.
``RUNTIME_ENV`` is what every process needs (``VERL_ENGINE_DEVICE=cuda`` is verl's own override that selects its FSDP
training engine, registered for cuda/npu only, on this platform). A run config sets it for Ray's workers under
``ray_kwargs.ray_init.runtime_env.env_vars`` (see ``e3/config/verl_cpu_tiny.yaml``); ``activate()`` sets it in the
driver. ``check_supported`` refuses, before Ray starts, the settings this plugin cannot run (naming the key).

Scope: verl's v1 trainers that keep the actor and the rollout in one hybrid worker: ``trainer.v1.trainer_mode=sync``
(or ``e3`` built on it) and ``colocate_async`` (partial rollouts; or ``e3_colocate_async`` built on it), with FSDP2
(fp32 on the CPU), one rollout process per replica (tensor parallel 1), text prompts. ``separate_async`` is refused:
it moves weights to standalone rollout replicas through a non-naive checkpoint engine, and verl's shipped ones need
CUDA/cupy (nccl, nixl, delta_sharded), NCCL (kimi), an NPU (hccl) or the mooncake package, while the ``hf`` replica
runs in hybrid mode only. Any verl config can use it (``e3/config/cpu/plugin.yaml`` holds the settings;
``verl_cpu_grpo`` is verl's own GRPO with them).
"""

from __future__ import annotations

import importlib
import os

from e3.engines.verl.cpu import verl_internals
from e3.engines.verl.cpu.platform import PLATFORM_NAME, CPUPlatform

MODULE = __name__
RUNTIME_ENV = {"VERL_USE_EXTERNAL_MODULES": MODULE, "VERL_PLATFORM": PLATFORM_NAME, "VERL_ENGINE_DEVICE": "cuda"}
ROLLOUT_NAME = "hf"


def _register() -> None:
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from e3.engines.verl.cpu.hf_rollout import BACKEND_NAME, load_replica_class
    from e3.engines.verl.internals import check_version

    check_version()
    verl_internals.patch_process_group_backend()
    RolloutReplicaRegistry.register(BACKEND_NAME, load_replica_class)
    verl_internals.register_rollout_adapter(BACKEND_NAME, "async", "e3.engines.verl.cpu.hf_rollout.HFServerAdapter")


def activate(env: dict | None = None) -> None:
    """In the driver: set the plugin's environment (``env``, a run config's env vars, over ``RUNTIME_ENV``), make sure
    the plugin is registered even if ``verl`` was imported before the environment was set, select the CPU platform."""
    for key, value in RUNTIME_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in (env or {}).items():  # what the run config gives Ray's workers, the driver gets too
        os.environ[key] = str(value)
    for name in filter(None, os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",")):
        importlib.import_module(name.strip())
    from verl.plugin.platform import get_platform, set_platform

    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME and \
            not isinstance(get_platform(), CPUPlatform):
        set_platform(CPUPlatform())  # the singleton was created before VERL_PLATFORM was set


# the trainers whose actor and rollout share a hybrid worker: verl's PPOTrainerSync and PPOTrainerColocateAsync, and
# E3's trainers built on them
TRAINERS = ("sync", "e3", "colocate_async", "e3_colocate_async")
SEPARATE_TRAINERS = ("separate_async", "e3_separate_async")


def check_supported(config) -> None:
    """Refuse a ``trainer.device=cpu`` config this plugin cannot run, naming the key (``ValueError``)."""
    mode = config.trainer.v1.trainer_mode
    if mode in SEPARATE_TRAINERS:
        raise ValueError(f"trainer.v1.trainer_mode={mode}: not on the CPU (e3_cpu platform). It syncs weights to "
                         "standalone rollout replicas through a non-naive checkpoint engine "
                         "(actor_rollout_ref.rollout.checkpoint_engine.backend), and verl's shipped ones need "
                         "CUDA/cupy, NCCL, an NPU or the mooncake package; the hf rollout runs in hybrid mode only. "
                         f"Use one of {list(TRAINERS)}")
    if mode not in TRAINERS:
        raise ValueError(f"trainer.v1.trainer_mode={mode}: on the CPU (e3_cpu platform) the trainers that keep the "
                         f"actor and the rollout in one worker run: use one of {list(TRAINERS)}")
    rollout = config.actor_rollout_ref.rollout
    if rollout.name != ROLLOUT_NAME:
        raise ValueError(f"actor_rollout_ref.rollout.name={rollout.name}: on the CPU the rollout backend is "
                         f"{ROLLOUT_NAME!r} (transformers generate); vLLM and SGLang need GPUs")
    for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
        if int(rollout.get(key, 1) or 1) != 1:
            raise ValueError(f"actor_rollout_ref.rollout.{key}={rollout.get(key)}: the {ROLLOUT_NAME} rollout runs "
                             f"one process per replica (set it to 1)")
    strategy = config.actor_rollout_ref.actor.strategy
    if strategy != "fsdp2":
        raise ValueError(f"actor_rollout_ref.actor.strategy={strategy}: on the CPU verl's FSDP2 engine runs "
                         f"(FSDP1 and Megatron touch the accelerator): set fsdp2")


_register()
