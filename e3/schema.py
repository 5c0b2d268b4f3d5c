"""One typed config for every E3 / PREPO controller.

Defaults are the papers' values: E3 (arXiv 2505.18573) section 4 — rollout.n = 8, budget schedule n_update 2,
n_low 4, n_high 12; temperature scheduler on from tau_0 = 1.0 with annealing over the last 40 % of steps to
eta = 0.9 of the initial entropy. PREPO (arXiv 2511.00794) — window K/|B| = 20 %; both PREPO pieces are off
by default so the default run is E3. Every field is documented where it is declared.

The dataclasses are the schema of OmegaConf's structured configs (``OmegaConf.structured(E3Config)``): OmegaConf
refuses unknown keys and values it cannot convert to a field's type (it converts like Hydra does: ``"4"`` for an
int field is 4, an int for a float field a float). A field's range is declared with the field
(``n_low: int = checked(4, Range(ge=2))``; the checks: ``Range``, ``OneOf``, ``NonEmpty``, ``Each``) and a rule over
several fields is the class's ``cross_checks``; ``check_config`` runs them all. ``E3Config.from_dict`` does both on
load and names the offending key (``e3.section.key``); the local engine's schema and the ``hf`` rollout's options
use the same checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

CHECK = "check"  # the key of a field's check in its dataclass metadata


# ------------------------------------------------------------------------------------------------ declared checks
@dataclass(frozen=True)
class Range:
    """A number within bounds: ``ge``/``gt`` from below, ``le``/``lt`` from above (each optional); ``finite``: no
    infinity either; ``why`` is said after the bounds."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    finite: bool = False
    why: str = ""

    def problem(self, value) -> Optional[str]:
        try:
            ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
                  and (not self.finite or math.isfinite(value)))
        except TypeError:
            ok = False
        return None if ok else f"must be {self.describe()}{f' ({self.why})' if self.why else ''}, got {value}"

    def describe(self) -> str:
        low = (self.ge, "[", ">=") if self.ge is not None else (self.gt, "(", ">")
        high = (self.le, "]", "<=") if self.le is not None else (self.lt, ")", "<")
        if low[0] is not None and high[0] is not None:
            bounds = f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
        else:
            bound, _, op = low if low[0] is not None else high
            bounds = f"{op} {bound}"
        return f"finite and {bounds}" if self.finite else bounds


class OneOf:
    """One of the given values."""

    def __init__(self, *choices: str):
        self.choices = choices

    def problem(self, value) -> Optional[str]:
        if value in self.choices:
            return None
        *others, last = self.choices
        return f"must be {', '.join(others) + ' or ' if others else ''}{last}, got {value!r}"


class NonEmpty:
    """A string with something other than white space."""

    def problem(self, value) -> Optional[str]:
        return None if str(value).strip() else f"must be a non-empty string, got {value!r}"


@dataclass(frozen=True)
class Each:
    """Every entry of a list passes ``check``."""

    check: Any

    def problem(self, value) -> Optional[str]:
        for item in value:
            if (problem := self.check.problem(item)) is not None:
                return f"entries {problem}"
        return None


def checked(default: Any = dataclasses.MISSING, check: Any = None, *, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its check (``Range``, ``OneOf``, ``NonEmpty``, ``Each``), run by ``check_config``."""
    return field(default=default, default_factory=default_factory, metadata={CHECK: check})


def check_config(obj: Any, where: str = "") -> None:
    """Run the declared checks of the dataclass ``obj`` and of every dataclass in it, then each class's
    ``cross_checks()`` (after its own fields and sections: the rules across fields, yielding ``(key, problem)``).

    The first problem raises ``ValueError("config key <where.section.key> <problem>")``. A null passes only where
    the field's type allows it (``Optional``).
    """
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), _join(where, f.name)
        check = f.metadata.get(CHECK)
        unset = value is None and type(None) in typing.get_args(hints[f.name])  # an Optional field left null
        if check is not None and not unset and (problem := check.problem(value)) is not None:
            raise ValueError(f"config key {key} {problem}")
        if dataclasses.is_dataclass(value):
            check_config(value, key)
    for name, problem in obj.cross_checks() if hasattr(obj, "cross_checks") else ():
        raise ValueError(f"config key {_join(where, name)} {problem}")


def build(cls: type, data: Any, where: str) -> Any:
    """``cls`` (an OmegaConf structured dataclass) from the mapping ``data`` over its defaults, checked by
    ``check_config``; an unknown key, a wrong type or a bad value raises ``ValueError`` naming ``where.key``."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
    except OmegaConfBaseException as err:
        raise ValueError(config_error(err, where)) from None
    check_config(obj, where)
    return obj


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@dataclass
class AllocationConfig:
    """Difficulty-aware rollout budgets (E3 Algorithm 1 and the epoch schedule, E3 section 3.1)."""

    enable: bool = True
    """Dynamic rollout (DR). Off: every prompt gets exactly ``rollout.n`` samples."""
    policy: str = checked("e3", NonEmpty())
    """``e3`` (rank-proportional, Alg. 1), ``informative``, ``knapsack``, ``vip``, ``uniform``, or
    ``module.path:ClassName`` (see ``e3.allocation.policy``); resolved when the allocator is built."""
    n_update: int = checked(2, Range(ge=0))
    """After each epoch n_min -= n_update and n_max += n_update (within [n_low, n_high])."""
    n_low: int = checked(4, Range(ge=2, why="a group of one has no baseline"))
    """Lowest per-prompt budget the schedule reaches (paper: 4). Must be >= 2 (a group of 1 has no baseline)."""
    n_high: int = 12
    """Highest per-prompt budget the schedule reaches (paper: 12)."""
    prior_accuracy: float = checked(0.0, Range(ge=0, le=1))
    """Accuracy assumed for never-seen prompts (E3 counts them as 0, i.e. hardest)."""
    seed: int = 0
    """Seed of the controllers' random draws (allocation policies that draw, the verl engine's offline PREPO
    sampling). The difficulty ranking draws none: prompts of equal accuracy share their average rank."""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.n_high < self.n_low:
            yield "n_high", f"must be >= n_low={self.n_low}, got {self.n_high}"


@dataclass
class TemperatureConfig:
    """Entropy-targeting temperature scheduler (E3 Eq. 4) with cosine annealing of the target (Eq. 5)."""

    enable: bool = True
    """Temperature scheduling (TS). Off: sampling stays at ``init_temperature``; entropy is still logged."""
    init_temperature: float = checked(1.0, Range(gt=0))
    """tau_0, also the temperature of the warm-up steps that define the target entropy."""
    warmup_steps: int = checked(1, Range(ge=1))
    """Steps at tau_0 whose mean entropy is the target H_init."""
    anneal: bool = True
    """Annealing (AN): lower the target over the last ``anneal_ratio`` of training."""
    anneal_ratio: float = checked(0.4, Range(gt=0, le=1))
    """Fraction of max_steps at the end over which the target is annealed (paper: 0.4)."""
    anneal_floor: float = checked(0.9, Range(gt=0, le=1))
    """eta: the annealed target ends at eta * H_init (paper: 0.9; 0.8 and 0.85 were unstable)."""
    tau_min: float = checked(0.5, Range(gt=0))
    """Lower clamp of the scheduled temperature (our fix: the paper's update is unbounded)."""
    tau_max: float = checked(2.0, Range(gt=0))
    """Upper clamp of the scheduled temperature (with ``enable=false`` the clamps do not apply)."""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.tau_min > self.tau_max:
            yield "tau_min", f"must be <= tau_max={self.tau_max}, got {self.tau_min}"
        if self.enable and not self.tau_min <= self.init_temperature <= self.tau_max:
            yield "init_temperature", (f"must lie in [tau_min, tau_max] = [{self.tau_min}, {self.tau_max}] when the "
                                       f"scheduler is on, got {self.init_temperature}")


@dataclass
class CurriculumConfig:
    """PREPO perplexity-paced prompt window (PREPO section 3.1)."""

    enable: bool = False
    """Pace prompts from low to high perplexity."""
    window_ratio: float = checked(0.2, Range(gt=0, le=1))
    """K / |B|: the train batch is this fraction of the scored candidate batch (paper: 20 %)."""
    mode: str = checked("online", OneOf("online", "offline"))
    """``online``: score each candidate batch under the current policy; ``offline``: score the dataset once."""


@dataclass
class WeightingConfig:
    """PREPO relative-entropy rollout weights w_i = H_i / mean(H) (PREPO section 3.2)."""

    enable: bool = False
    """Multiply each rollout's advantage by its relative entropy."""
    token_weighted: bool = False
    """Normalise by the token-weighted batch mean instead of the plain mean over rollouts."""
    clip_min: Optional[float] = checked(None, Range(ge=0, finite=True))
    """Optional lower clip of the weights (None: no clip)."""
    clip_max: Optional[float] = checked(None, Range(ge=0, finite=True))
    """Optional upper clip of the weights (None: no clip)."""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            yield "clip_min", f"must be <= clip_max={self.clip_max}, got {self.clip_min}"


@dataclass
class AdvantageConfig:
    """GRPO advantages over groups of unequal size, optional E3 length bias."""

    eps: float = checked(1e-6, Range(gt=0))
    """Added to the group std (N-1 normalised) in A = (s - mean) / (std + eps)."""
    norm_by_std: bool = True
    """Divide by the group std (GRPO). False: Dr. GRPO, A = s - mean (on verl: algorithm.norm_adv_by_std_in_grpo)."""
    length_bias: bool = False
    """E3 README: for easy prompts (rank <= threshold) a correct reward becomes 1 / (1 + coeff * length)."""
    length_penalty_coeff: float = checked(0.001, Range(ge=0))
    """mu in 1 - mu*l / (1 + mu*l)."""
    length_rank_threshold: float = checked(0.1, Range(ge=0, le=1))
    """Prompts with difficulty k <= this get the length bias."""


@dataclass
class RewardConfig:
    """Bounds of the math-verify reward."""

    timeout: float = checked(5.0, Range(gt=0))
    """Seconds one compute_score call may take; a call past it scores 0 and is counted."""
    workers: Optional[int] = checked(None, Range(ge=1))
    """Processes of the batch scorer (None: all cores)."""


@dataclass
class ValidationConfig:
    """What the verl engine adds to verl's validation (``e3.engines.verl.validation``; the local engine's own
    list is ``val.pass_k``)."""

    pass_k: list[int] = checked(default_factory=lambda: [1, 2, 4, 8, 16], check=Each(Range(ge=1)))
    """K of the unbiased ``val/pass@K`` (Chen et al. 2021, Eq. 1), overall and ``val/pass@K/<data_source>``. A K
    above ``actor_rollout_ref.rollout.val_kwargs.n`` is skipped; with greedy validation (``val_kwargs.temperature``
    0) or n = 1 only K = 1 (the mean accuracy) is logged."""


@dataclass
class E3Config:
    """All controller settings; the ``e3:`` section of every engine config."""

    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def check(self, where: str = "e3") -> "E3Config":
        """Every declared check and cross-field rule (``check_config``); ``ValueError`` naming ``where.section.key``."""
        check_config(self, where)
        return self

    @classmethod
    def from_dict(cls, data: Optional[Any] = None, where: str = "e3") -> "E3Config":
        """Build and validate from a nested dict or DictConfig (e.g. ``cfg.e3``); the input is not modified.

        Unknown keys, wrong types and bad values raise ``ValueError`` naming ``where.section.key`` (``build``).
        """
        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"config key {where} must be a mapping, got {type(data).__name__}")
        sections = {f.name for f in dataclasses.fields(cls)}
        for name, sub in data.items():
            if name in sections and sub is not None and not isinstance(sub, dict):
                raise ValueError(f"config key {where}.{name} must be a mapping, got {type(sub).__name__}")
        return build(cls, {k: v for k, v in data.items() if v is not None}, where)  # a null section: its defaults

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_error(err: OmegaConfBaseException, where: str = "") -> str:
    """One line naming the key of an OmegaConf merge / conversion error (``unknown config key e3.x.y`` ...)."""
    key = ".".join(p for p in (where, str(getattr(err, "full_key", "") or "")) if p)
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        known = _known_keys(err)
        return f"unknown config key {key}" + (f" (known: {', '.join(known)})" if known else "")
    return f"config key {key}: {msg}" if key else f"bad config: {msg}"


def _known_keys(err: OmegaConfBaseException) -> list[str]:
    obj = getattr(err, "object_type", None)
    return [f.name for f in dataclasses.fields(obj)] if obj is not None and dataclasses.is_dataclass(obj) else []


def _check(ok: bool, key: str, message: str) -> None:
    """A rule written as code where neither a declared check nor ``cross_checks`` fits (a task's own rules)."""
    if not ok:
        raise ValueError(f"{key} {message}")
