"""verl's device layer answered by the CPU: a ``PlatformBase`` registered as ``e3_cpu`` (device ``cpu``, backend gloo).

verl 0.9.1 reaches the accelerator only through ``verl.plugin.platform.get_platform()`` (device name, torch device
module, process-group backend, Ray resource name, seeding, memory queries). This platform answers every call with
the CPU: tensors live on ``cpu``, collectives use gloo, memory queries report host RAM (free/total) and zeros for the
allocator statistics a CPU does not keep, stream/profiler hooks are no-ops.

Two answers are not "CPU" and say why:

- ``ray_resource_name()`` is ``"GPU"``. verl's ``ResourcePoolManager._check_resource_available`` counts only
  ``GPU``/``NPU`` node resources, and its placement-group bundles ask for one of them per training process. A CPU run
  starts Ray with a *logical* ``num_gpus`` (``ray_kwargs.ray_init.num_gpus``): a scheduling token that reserves one
  slot per training worker. Nothing touches CUDA (``torch.cuda`` is never called through this platform).
- ``is_platform_available`` is False: auto-detection never picks the CPU silently; it is chosen explicitly with
  ``VERL_PLATFORM=e3_cpu`` (see ``e3.engines.verl.cpu``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import Any, Optional

import torch

from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "e3_cpu"


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of host RAM, from sysconf (Linux/macOS)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError):  # not on every platform
        free = total
    return int(free), int(total)


class CPUDeviceModule(ModuleType):
    """What verl calls on ``get_torch_device()`` (its ``torch.cuda`` stand-in), answered for the CPU.

    ``torch.cpu`` provides streams, events, ``synchronize``, ``device_count``; the rest (memory statistics, RNG state,
    ``ipc_collect``, ...) is defined here. An attribute verl needs that neither has raises an ``AttributeError``
    naming it, rather than a silent default.
    """

    def __init__(self) -> None:
        super().__init__("e3_cpu_device")

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        raise AttributeError(f"the e3_cpu platform's device module has no {name!r} (verl asked for "
                             f"get_torch_device().{name}); add it to e3/engines/verl/cpu/platform.py")

    # device
    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def set_device(device: Any) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"

    # memory: the host's RAM for capacity, zeros for allocator statistics a CPU does not keep
    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return host_memory()

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def memory_stats(device: Any = None) -> dict:
        return {}

    # RNG: the CPU generator is torch's default generator
    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed


@PlatformRegistry.register(platform=PLATFORM_NAME)
class CPUPlatform(PlatformBase):
    """verl on the CPU: device ``cpu``, collectives on gloo (see the module docstring)."""

    _device_module = CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: chosen by VERL_PLATFORM=e3_cpu

    def current_device(self) -> str:
        return "cpu"  # verl builds torch devices from it: torch.device("cpu"), tensor.to("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the logical "GPU" resource; nothing reads it here

    @contextmanager
    def nvtx_range(self, msg: str):
        with nullcontext():
            yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # a logical Ray resource: see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
