"""The two non-public verl 0.9.1 internals the CPU run depends on, each checked before use.

verl is pinned exactly (``verl[verl-core]==0.9.1``). Everything else the CPU run uses is a public extension point
(``PlatformRegistry``, ``RolloutReplicaRegistry``, ``VERL_USE_EXTERNAL_MODULES``, ``VERL_ENGINE_DEVICE``). These two
are not, so each is touched only here, after checking that verl still has the shape we rely on; a different verl
raises ``VerlInternalsChanged`` (``e3.engines.verl.internals``, which checks the version) naming the installed
version and what moved, instead of failing somewhere later.

1. Process-group backend. ``verl.utils.distributed.initialize_global_process_group_ray`` (called by every training
   worker, ``verl.workers.engine_workers.TrainingWorker.__init__``) always asks torch for
   ``f"cpu:gloo,{device}:{backend}"``; with device ``cpu`` that names the cpu device twice and
   ``init_process_group`` refuses it. No hook chooses the string, so the function is wrapped: on the CPU platform a
   call without an explicit backend gets ``"cpu:gloo"``; every other call is passed through unchanged.
2. Rollout adapter registry. The hybrid worker finds the in-process half of a rollout backend (a ``BaseRollout``
   that receives the actor's weights) only through the private dict ``verl.workers.rollout.base._ROLLOUT_REGISTRY``
   (``get_rollout_class``); the public ``RolloutReplicaRegistry`` covers the server half only.
"""

from __future__ import annotations

import functools
import inspect
import sys

from e3.engines.verl.internals import VerlInternalsChanged, changed


def _fail(what: str) -> VerlInternalsChanged:
    return changed("e3's CPU platform (e3/engines/verl/cpu/verl_internals.py)", what)


def _cpu_backend_wrapper(original):
    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        from verl.utils.device import get_device_name

        if backend is None and get_device_name() == "cpu":
            backend = "cpu:gloo"  # verl would build "cpu:gloo,cpu:gloo" (see the module docstring)
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.__e3_cpu_wrapped__ = True
    return initialize_global_process_group_ray


def patch_process_group_backend() -> None:
    """Internal 1: give CPU training workers a valid gloo backend string (idempotent)."""
    import verl.utils.distributed as dist

    fn = getattr(dist, "initialize_global_process_group_ray", None)
    if fn is None:
        raise _fail("verl.utils.distributed.initialize_global_process_group_ray is gone")
    if getattr(fn, "__e3_cpu_wrapped__", False):
        return
    params = list(inspect.signature(fn).parameters)
    if params != ["timeout_second", "backend"]:
        raise _fail(f"initialize_global_process_group_ray(timeout_second, backend) now takes {params}")
    source = inspect.getsource(fn)
    if 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' not in source:
        raise _fail("initialize_global_process_group_ray no longer builds 'cpu:gloo,{device}:{backend}'")
    wrapped = _cpu_backend_wrapper(fn)
    dist.initialize_global_process_group_ray = wrapped
    # modules that imported the name before this ran hold the original: rebind it there too
    for name, module in list(sys.modules.items()):
        if name.startswith("verl.") and getattr(module, "initialize_global_process_group_ray", None) is fn:
            module.initialize_global_process_group_ray = wrapped


def register_rollout_adapter(name: str, mode: str, class_path: str) -> None:
    """Internal 2: make ``get_rollout_class(name, mode)`` (the hybrid worker's lookup) return ``class_path``."""
    import verl.workers.rollout.base as base

    registry = getattr(base, "_ROLLOUT_REGISTRY", None)
    if not isinstance(registry, dict) or ("vllm", "async") not in registry:
        raise _fail("verl.workers.rollout.base._ROLLOUT_REGISTRY is no longer a dict keyed by (name, mode)")
    if list(inspect.signature(base.get_rollout_class).parameters) != ["rollout_name", "mode"]:
        raise _fail("verl.workers.rollout.base.get_rollout_class(rollout_name, mode) changed")
    registry[(name, mode)] = class_path
