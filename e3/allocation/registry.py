"""Which allocation policy ``e3.allocation.policy`` selects: the name -> class table and its lookups.

A value of ``e3.allocation.policy`` is either a registered name -- the project's five policies, named in
``_REGISTRY`` below (``e3``: E3 Alg. 1, arXiv 2505.18573; ``uniform``; ``informative``; ``knapsack``: Knapsack RL,
arXiv 2509.25849; ``vip``: VIP, arXiv 2602.01601), or any name given to ``register_policy`` -- or
``module.path:Attribute`` naming an ``AllocationPolicy`` subclass (or a function, see ``e3.allocation.policy``) in a
user's module, imported on use, so a module on ``sys.path`` needs no change to this project. The policy modules do
not import this one.
"""

from __future__ import annotations

import importlib

from e3.allocation.e3 import E3Policy
from e3.allocation.informative import InformativePolicy
from e3.allocation.knapsack import KnapsackPolicy
from e3.allocation.policy import CONFIG_KEY, AllocationPolicy, FunctionPolicy
from e3.allocation.uniform import UniformPolicy
from e3.allocation.vip import VIPPolicy

_REGISTRY: dict[str, type] = {
    "e3": E3Policy,
    "uniform": UniformPolicy,
    "informative": InformativePolicy,
    "knapsack": KnapsackPolicy,
    "vip": VIPPolicy,
}


def register_policy(name: str, policy=None):
    """Make ``policy`` (an ``AllocationPolicy`` subclass or a function) selectable as ``e3.allocation.policy=name``.

    Usable as a call, ``register_policy("mine", MyPolicy)``, or as a class decorator, ``@register_policy("mine")``.
    Returns the policy unchanged.
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"policy name must be a non-empty string without ':', got {name!r}")

    def add(obj):
        _REGISTRY[name] = _as_policy_class(obj, name)
        return obj

    return add if policy is None else add(policy)


def registered_policies() -> list[str]:
    """Names selectable without a module path (the project's and those given to ``register_policy``)."""
    return list(_REGISTRY)


def resolve_policy(spec: str) -> type:
    """The policy class that ``e3.allocation.policy=spec`` selects; ``ValueError`` naming the key otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{CONFIG_KEY} must be a non-empty string (a registered name or 'module:Class'), "
                         f"got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise ValueError(f"{CONFIG_KEY}={spec!r}: unknown allocation policy {spec!r} (registered: "
                             f"{', '.join(registered_policies())}; or give 'module.path:ClassName')")
        return _REGISTRY[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{CONFIG_KEY}={spec!r}: expected 'module.path:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure of a user's module is reported the same way
        raise ValueError(f"{CONFIG_KEY}={spec!r}: cannot import module {module_name!r}: "
                         f"{type(err).__name__}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{CONFIG_KEY}={spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return _as_policy_class(obj, spec)


def build_policy(spec: str, tracker, seed: int = 0) -> AllocationPolicy:
    """Resolve ``spec`` and construct the policy on ``tracker``."""
    cls = resolve_policy(spec)
    try:
        return cls(tracker, seed=seed)
    except Exception as err:
        raise ValueError(f"{CONFIG_KEY}={spec!r}: constructing {cls.__name__}(tracker, seed={seed}) failed: "
                         f"{type(err).__name__}: {err}") from err


def _as_policy_class(obj, spec: str) -> type:
    if isinstance(obj, type):
        if issubclass(obj, AllocationPolicy):
            return obj
        raise ValueError(f"{CONFIG_KEY}={spec!r}: {obj.__name__} is not a subclass of "
                         f"{AllocationPolicy.__module__}.{AllocationPolicy.__qualname__}")
    if callable(obj):
        return type(f"FunctionPolicy_{getattr(obj, '__name__', 'fn')}", (FunctionPolicy,),
                    {"fn": staticmethod(obj), "__doc__": getattr(obj, "__doc__", None)})
    raise ValueError(f"{CONFIG_KEY}={spec!r}: {obj!r} is neither an AllocationPolicy subclass nor a function")
