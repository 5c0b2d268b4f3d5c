"""Entropy-targeting temperature scheduler with annealing: E3 Eq. 4 and Eq. 5.

E3 (Liao et al., arXiv 2505.18573, section 3.2). With |V| the vocabulary size, H_t the token-mean policy entropy
on the responses sampled at step t and tau_t the temperature they were sampled with,

    tau_{t+1} = tau_t * (1 + tau_t * ln(H_target / H_t) / (ln|V| + ln ln|V|))          (Eq. 4)

H_target is the mean entropy of the first ``warmup_steps`` steps at tau_0. Annealing (Eq. 5) lowers it over the
last ``anneal_ratio`` of training: from t_a = max_steps - floor(anneal_ratio * max_steps), with
p = (t - t_a) / (max_steps - t_a),

    H_target(t) = H_init * (eta + (1 - eta) * (1 + cos(pi * p)) / 2),   eta = anneal_floor = 0.9.

(The printed Eq. 5 carries a stray (1 + eta^2 / t^2) factor, an extraction error absent from the authors' code.)
Our fixes: tau is clamped to [tau_min, tau_max]; a NaN / inf / non-positive entropy keeps tau and is counted; one
scheduler on the driver fed the globally reduced entropy gives one tau for the whole job.

``representable(tau, dtype)``: the training engine divides the logits by tau cast to float32 and then to the logits'
dtype (bf16 under verl's default FSDP mixed precision), the sampler uses the float it is given; a tau on the grid of
that dtype is the same number on both sides.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


def vocab_scale(vocab_size: int) -> float:
    """ln|V| + ln ln|V| (about 14.41 for Qwen's 151,936 tokens)."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size={vocab_size} must be >= 3 (ln ln |V| must be defined and positive)")
    return math.log(vocab_size) + math.log(math.log(vocab_size))


def temperature_update(tau: float, entropy: float, target: float, vocab_size: int) -> float:
    """One step of E3 Eq. 4 (no clamp)."""
    return tau * (1.0 + tau * math.log(target / entropy) / vocab_scale(vocab_size))


def annealed_target(h_init: float, step: int, max_steps: int, anneal_ratio: float = 0.4,
                    anneal_floor: float = 0.9) -> float:
    """E3 Eq. 5: H_init before t_a, then cosine from H_init down to anneal_floor * H_init at max_steps."""
    if max_steps <= 0:
        raise ValueError(f"annealing needs max_steps > 0, got {max_steps}")
    t_a = max_steps - math.floor(anneal_ratio * max_steps + 1e-9)  # tolerate 0.29 * 100 = 28.999...
    if step < t_a or max_steps == t_a:
        return h_init
    p = min(1.0, (step - t_a) / (max_steps - t_a))
    return h_init * (anneal_floor + (1.0 - anneal_floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


DTYPES = ("fp32", "fp16", "bf16")


def representable(tau: float, dtype: str = "fp32") -> float:
    """The value tau takes after a cast to float32 and then to ``dtype`` (nearest, ties to even), as a float.

    That number is unchanged by both casts, so a sampler given it and a trainer that casts it agree exactly.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown logits dtype {dtype!r}: expected one of {DTYPES}")
    target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return float(torch.tensor(float(tau), dtype=torch.float32).to(target).item())


class TemperatureScheduler:
    """Driver-side controller: ``step(entropy)`` returns the temperature for the next step.

    Steps are counted from 1: the first call reports the entropy of step 1 (sampled at tau_0). The target used at
    step t is ``annealed_target(H_init, t, max_steps)``.
    """

    def __init__(self, vocab_size: int, init_temperature: float = 1.0, warmup_steps: int = 1,
                 max_steps: int | None = None, anneal: bool = True, anneal_ratio: float = 0.4,
                 anneal_floor: float = 0.9, tau_min: float = 0.5, tau_max: float = 2.0):
        vocab_scale(vocab_size)
        if anneal and (max_steps is None or max_steps <= 0):
            raise ValueError(f"annealing needs the run length: max_steps must be > 0, got {max_steps}")
        if not (0 < tau_min <= init_temperature <= tau_max):
            raise ValueError(f"need 0 < tau_min={tau_min} <= init_temperature={init_temperature} <= tau_max={tau_max}")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 1")
        self.vocab_size, self.init_temperature, self.warmup_steps = int(vocab_size), float(init_temperature), int(warmup_steps)
        self.max_steps, self.anneal = max_steps, bool(anneal)
        self.anneal_ratio, self.anneal_floor = float(anneal_ratio), float(anneal_floor)
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self._tau = self.init_temperature
        self._step = 0
        self._warmup: list[float] = []
        self._h_init: float | None = None
        self._last_entropy = float("nan")
        self.invalid_entropy = 0

    @property
    def temperature(self) -> float:
        """The temperature to sample the next step with."""
        return self._tau

    @property
    def target_entropy(self) -> float:
        """The target for the current step (NaN until the warm-up has defined H_init)."""
        if self._h_init is None:
            return float("nan")
        if not self.anneal:
            return self._h_init
        return annealed_target(self._h_init, max(self._step, 1), self.max_steps, self.anneal_ratio, self.anneal_floor)

    @property
    def initial_entropy(self) -> float | None:
        return self._h_init

    def step(self, entropy: float) -> float:
        """Feed the globally reduced token-mean entropy of the step just sampled; return tau for the next one."""
        self._step += 1
        entropy = float(entropy)
        if not math.isfinite(entropy) or entropy <= 0:
            self.invalid_entropy += 1
            logger.warning("temperature scheduler: invalid entropy %r at step %d; keeping tau=%.4f",
                           entropy, self._step, self._tau)
            return self._tau
        self._last_entropy = entropy
        if self._h_init is None:
            self._warmup.append(entropy)
            if len(self._warmup) >= self.warmup_steps:
                self._h_init = sum(self._warmup) / len(self._warmup)
            return self._tau
        tau = temperature_update(self._tau, entropy, self.target_entropy, self.vocab_size)
        self._tau = min(self.tau_max, max(self.tau_min, tau)) if math.isfinite(tau) else self._tau
        return self._tau

    def state_dict(self) -> dict:
        return {"tau": self._tau, "step": self._step, "warmup": list(self._warmup), "h_init": self._h_init,
                "last_entropy": self._last_entropy, "invalid_entropy": self.invalid_entropy}

    def load_state_dict(self, state: dict) -> None:
        self._tau, self._step = float(state["tau"]), int(state["step"])
        self._warmup, self._h_init = list(state["warmup"]), state["h_init"]
        self._last_entropy, self.invalid_entropy = float(state["last_entropy"]), int(state["invalid_entropy"])

    def metrics(self) -> dict[str, float]:
        return {"rollout/temperature": self._tau, "rollout/target_entropy": self.target_entropy,
                "rollout/entropy": self._last_entropy, "rollout/invalid_entropy": self.invalid_entropy}
