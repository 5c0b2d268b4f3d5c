"""One typed config for every E3 / PREPO controller.

Defaults are the papers' values: E3 (arXiv 2505.18573) section 4 — rollout.n = 8, budget schedule n_update 2,
n_low 4, n_high 12; temperature scheduler on from tau_0 = 1.0 with annealing over the last 40 % of steps to
eta = 0.9 of the initial entropy. PREPO (arXiv 2511.00794) — window K/|B| = 20 %; both PREPO pieces are off
by default so the default run is E3. Every field is documented where it is declared.

The dataclasses are the schema of OmegaConf's structured configs (``OmegaConf.structured(E3Config)``): OmegaConf
refuses unknown keys and values it cannot convert to a field's type (it converts like Hydra does: ``"4"`` for an
int field is 4, an int for a float field a float); each section's ``validate`` checks ranges.
``E3Config.from_dict`` does both on load and names the offending key (``e3.section.key``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


@dataclass
class AllocationConfig:
    """Difficulty-aware rollout budgets (E3 Algorithm 1 and the epoch schedule, E3 section 3.1)."""

    enable: bool = True
    """Dynamic rollout (DR). Off: every prompt gets exactly ``rollout.n`` samples."""
    policy: str = "e3"
    """``e3`` (rank-proportional, Alg. 1), ``informative``, ``knapsack``, ``uniform``, or ``module.path:ClassName``
    (see ``e3.allocation.policy``); resolved when the allocator is built."""
    n_update: int = 2
    """After each epoch n_min -= n_update and n_max += n_update (within [n_low, n_high])."""
    n_low: int = 4
    """Lowest per-prompt budget the schedule reaches (paper: 4). Must be >= 2 (a group of 1 has no baseline)."""
    n_high: int = 12
    """Highest per-prompt budget the schedule reaches (paper: 12)."""
    prior_accuracy: float = 0.0
    """Accuracy assumed for never-seen prompts (E3 counts them as 0, i.e. hardest)."""
    seed: int = 0
    """Seed of the controllers' random draws (allocation policies that draw, the verl engine's offline PREPO
    sampling). The difficulty ranking draws none: prompts of equal accuracy share their average rank."""

    def validate(self) -> None:
        _check(bool(self.policy.strip()), "allocation.policy", f"must be a non-empty string, got {self.policy!r}")
        _check(self.n_update >= 0, "allocation.n_update", f"must be >= 0, got {self.n_update}")
        _check(self.n_low >= 2, "allocation.n_low", f"must be >= 2 (a group of one has no baseline), got {self.n_low}")
        _check(self.n_high >= self.n_low, "allocation.n_high", f"must be >= n_low={self.n_low}, got {self.n_high}")
        _check(0.0 <= self.prior_accuracy <= 1.0, "allocation.prior_accuracy", f"must be in [0, 1], got {self.prior_accuracy}")


@dataclass
class TemperatureConfig:
    """Entropy-targeting temperature scheduler (E3 Eq. 4) with cosine annealing of the target (Eq. 5)."""

    enable: bool = True
    """Temperature scheduling (TS). Off: sampling stays at ``init_temperature``; entropy is still logged."""
    init_temperature: float = 1.0
    """tau_0, also the temperature of the warm-up steps that define the target entropy."""
    warmup_steps: int = 1
    """Steps at tau_0 whose mean entropy is the target H_init."""
    anneal: bool = True
    """Annealing (AN): lower the target over the last ``anneal_ratio`` of training."""
    anneal_ratio: float = 0.4
    """Fraction of max_steps at the end over which the target is annealed (paper: 0.4)."""
    anneal_floor: float = 0.9
    """eta: the annealed target ends at eta * H_init (paper: 0.9; 0.8 and 0.85 were unstable)."""
    tau_min: float = 0.5
    """Lower clamp of the scheduled temperature (our fix: the paper's update is unbounded)."""
    tau_max: float = 2.0
    """Upper clamp of the scheduled temperature (with ``enable=false`` the clamps do not apply)."""

    def validate(self) -> None:
        _check(self.init_temperature > 0, "temperature.init_temperature", f"must be > 0, got {self.init_temperature}")
        _check(self.warmup_steps >= 1, "temperature.warmup_steps", f"must be >= 1, got {self.warmup_steps}")
        _check(0.0 < self.anneal_ratio <= 1.0, "temperature.anneal_ratio", f"must be in (0, 1], got {self.anneal_ratio}")
        _check(0.0 < self.anneal_floor <= 1.0, "temperature.anneal_floor", f"must be in (0, 1], got {self.anneal_floor}")
        _check(0 < self.tau_min <= self.tau_max, "temperature.tau_min", f"need 0 < tau_min <= tau_max, got {self.tau_min}, {self.tau_max}")
        _check(not self.enable or self.tau_min <= self.init_temperature <= self.tau_max, "temperature.init_temperature",
               f"must lie in [tau_min, tau_max] = [{self.tau_min}, {self.tau_max}] when the scheduler is on, got "
               f"{self.init_temperature}")


@dataclass
class CurriculumConfig:
    """PREPO perplexity-paced prompt window (PREPO section 3.1)."""

    enable: bool = False
    """Pace prompts from low to high perplexity."""
    window_ratio: float = 0.2
    """K / |B|: the train batch is this fraction of the scored candidate batch (paper: 20 %)."""
    mode: str = "online"
    """``online``: score each candidate batch under the current policy; ``offline``: score the dataset once."""

    def validate(self) -> None:
        _check(0.0 < self.window_ratio <= 1.0, "curriculum.window_ratio", f"must be in (0, 1], got {self.window_ratio}")
        _check(self.mode in ("online", "offline"), "curriculum.mode", f"must be 'online' or 'offline', got {self.mode!r}")


@dataclass
class WeightingConfig:
    """PREPO relative-entropy rollout weights w_i = H_i / mean(H) (PREPO section 3.2)."""

    enable: bool = False
    """Multiply each rollout's advantage by its relative entropy."""
    token_weighted: bool = False
    """Normalise by the token-weighted batch mean instead of the plain mean over rollouts."""
    clip_min: Optional[float] = None
    """Optional lower clip of the weights (None: no clip)."""
    clip_max: Optional[float] = None
    """Optional upper clip of the weights (None: no clip)."""

    def validate(self) -> None:
        for name in ("clip_min", "clip_max"):
            v = getattr(self, name)
            _check(v is None or (math.isfinite(v) and v >= 0), f"weighting.{name}", f"must be None or finite >= 0, got {v}")
        if self.clip_min is not None and self.clip_max is not None:
            _check(self.clip_min <= self.clip_max, "weighting.clip_min", f"must be <= clip_max={self.clip_max}")


@dataclass
class AdvantageConfig:
    """GRPO advantages over groups of unequal size, optional E3 length bias."""

    eps: float = 1e-6
    """Added to the group std (N-1 normalised) in A = (s - mean) / (std + eps)."""
    norm_by_std: bool = True
    """Divide by the group std (GRPO). False: Dr. GRPO, A = s - mean (on verl: algorithm.norm_adv_by_std_in_grpo)."""
    length_bias: bool = False
    """E3 README: for easy prompts (rank <= threshold) a correct reward becomes 1 / (1 + coeff * length)."""
    length_penalty_coeff: float = 0.001
    """mu in 1 - mu*l / (1 + mu*l)."""
    length_rank_threshold: float = 0.1
    """Prompts with difficulty k <= this get the length bias."""

    def validate(self) -> None:
        _check(self.eps > 0, "advantage.eps", f"must be > 0, got {self.eps}")
        _check(self.length_penalty_coeff >= 0, "advantage.length_penalty_coeff", f"must be >= 0, got {self.length_penalty_coeff}")
        _check(0 <= self.length_rank_threshold <= 1, "advantage.length_rank_threshold", f"must be in [0, 1], got {self.length_rank_threshold}")


@dataclass
class RewardConfig:
    """Bounds of the math-verify reward."""

    timeout: float = 5.0
    """Seconds one compute_score call may take; a call past it scores 0 and is counted."""
    workers: Optional[int] = None
    """Processes of the batch scorer (None: all cores)."""

    def validate(self) -> None:
        _check(self.timeout > 0, "reward.timeout", f"must be > 0, got {self.timeout}")
        _check(self.workers is None or self.workers >= 1, "reward.workers", f"must be None or >= 1, got {self.workers}")


@dataclass
class ValidationConfig:
    """What the verl engine adds to verl's validation (``e3.engines.verl.validation``; the local engine's own
    list is ``val.pass_k``)."""

    pass_k: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """K of the unbiased ``val/pass@K`` (Chen et al. 2021, Eq. 1), overall and ``val/pass@K/<data_source>``. A K
    above ``actor_rollout_ref.rollout.val_kwargs.n`` is skipped; with greedy validation (``val_kwargs.temperature``
    0) or n = 1 only K = 1 (the mean accuracy) is logged."""

    def validate(self) -> None:
        _check(all(int(k) >= 1 for k in self.pass_k), "validation.pass_k", f"must be integers >= 1, got {self.pass_k}")


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

    def validate(self) -> "E3Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    @classmethod
    def from_dict(cls, data: Optional[Any] = None, where: str = "e3") -> "E3Config":
        """Build and validate from a nested dict or DictConfig (e.g. ``cfg.e3``); the input is not modified.

        Unknown keys, wrong types and bad values raise ``ValueError`` naming ``where.section.key``.
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
        data = {k: v for k, v in data.items() if v is not None}  # a null section: its defaults
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
        except OmegaConfBaseException as err:
            raise ValueError(config_error(err, where)) from None
        try:
            return cfg.validate()
        except ValueError as err:
            raise ValueError(f"invalid config: {where}.{err}") from None

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
    if not ok:
        raise ValueError(f"{key} {message}")
