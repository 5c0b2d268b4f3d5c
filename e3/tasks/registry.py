"""Which task ``task.kind`` selects: the name -> class table and its lookup.

A value of ``task.kind`` is either a registered name -- ``arithmetic`` (``e3.tasks.arithmetic.ArithmeticTask``),
``chain`` (``e3.tasks.chain.ChainTask``), or any name given to ``register_task`` -- or ``module.path:ClassName``
naming a ``e3.tasks.base.Task`` subclass in a user's module, imported on use (``pkgutil.resolve_name``), so a
module on ``sys.path`` needs no change to this project: the convention of ``e3.allocation.policy``.
"""

from __future__ import annotations

import pkgutil
from typing import Any

from e3.tasks.arithmetic import ArithmeticTask
from e3.tasks.base import Task
from e3.tasks.chain import ChainTask

CONFIG_KEY = "task.kind"
_REGISTRY: dict[str, type] = {"arithmetic": ArithmeticTask, "chain": ChainTask}


def register_task(name: str, cls: type) -> type:
    """Make the ``Task`` subclass ``cls`` selectable as ``task.kind=name``; returns ``cls``."""
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"task name must be a non-empty string without ':', got {name!r}")
    _REGISTRY[name.strip()] = _task_class(cls, name)
    return cls


def registered_tasks() -> list[str]:
    """Names selectable without a module path (the project's and those given to ``register_task``)."""
    return list(_REGISTRY)


def task_class(kind: str) -> type:
    """The ``Task`` subclass that ``task.kind=kind`` selects; ``ValueError`` naming the key otherwise."""
    spec = str(kind).strip()
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise ValueError(f"{CONFIG_KEY} must be a registered task ({', '.join(_REGISTRY)}) or "
                             f"'module.path:ClassName' of a Task subclass, got {kind!r}")
        return _REGISTRY[spec]
    try:
        obj = pkgutil.resolve_name(spec)
    except Exception as err:  # noqa: BLE001 - any failure to import a user's module is reported the same way
        raise ValueError(f"{CONFIG_KEY}={spec!r}: cannot load it ({type(err).__name__}: {err})") from None
    return _task_class(obj, spec)


def make_task(task_cfg: Any) -> Task:
    """The task of a ``task`` config section, selected by its ``kind``."""
    return task_class(task_cfg.kind)(task_cfg)


def _task_class(obj: Any, spec: str) -> type:
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ValueError(f"{CONFIG_KEY}={spec!r}: {obj!r} is not a subclass of e3.tasks.base.Task")
    return obj
