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
driver.
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

    verl_internals.check_version()
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


_register()
