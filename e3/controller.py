"""The driver-side facade that both engines use: one object owns every E3 / PREPO controller.

Per step an engine asks ``plan(indices)`` for the decisions (per-prompt budgets n_i from E3 Alg. 1, the sampling
temperature from E3 Eq. 4-5), samples and scores, asks ``advantages(...)`` for GRPO advantages over the unequal
groups (times PREPO relative-entropy weights, with E3's optional length bias), and reports back with
``observe(...)``, which updates difficulty and temperature and returns the step's metrics under the names both
engines log. The PREPO curriculum (Sun et al. 2025, arXiv 2511.00794) is owned here in both variants: online,
``select_window(perplexities)`` picks the paced window of a scored candidate batch; offline, the engine hands the
dataset's perplexities to ``pace_offline`` once and ``paced_prompts`` draws each step's batch from the window.
Engines stay algorithm-blind: they only carry these decisions (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from e3.advantage import grpo_advantages, length_bias_scores
from e3.allocation.allocator import RolloutAllocator
from e3.schema import E3Config
from e3.curriculum import OfflinePacer, PerplexityPacer
from e3.metrics import group_stats
from e3.temperature import TemperatureScheduler, representable
from e3.weighting import relative_entropy_weights


@dataclass
class StepPlan:
    """Decisions for one step: prompt indices, rollouts per prompt, sampling temperature."""

    indices: np.ndarray
    n_per_prompt: np.ndarray
    temperature: float

    @property
    def total(self) -> int:
        return int(self.n_per_prompt.sum())

    def rollout_indices(self) -> np.ndarray:
        """The prompt index of each rollout, prompts in order, n_i copies each."""
        return np.repeat(self.indices, self.n_per_prompt)


class E3Controller:
    """All controllers of one run. ``n`` = rollout.n (mean budget), ``batch_size`` = prompts per step."""

    def __init__(self, cfg: E3Config, n: int, vocab_size: int, max_steps: int | None = None,
                 dataset_indices=None, batch_size: int | None = None, tau_dtype: str | None = None):
        self.cfg = cfg.check()
        self.n = int(n)
        self.allocator = RolloutAllocator.from_config(cfg.allocation, n)
        t = cfg.temperature
        # scheduler off: tau_0 is not clamped (the scheduler still runs, for the entropy it logs)
        lo, hi = (t.tau_min, t.tau_max) if t.enable else (min(t.tau_min, t.init_temperature),
                                                          max(t.tau_max, t.init_temperature))
        self.scheduler = TemperatureScheduler(
            vocab_size, t.init_temperature, t.warmup_steps, max_steps, anneal=t.enable and t.anneal,
            anneal_ratio=t.anneal_ratio, anneal_floor=t.anneal_floor, tau_min=lo, tau_max=hi)
        if tau_dtype is not None:
            representable(t.init_temperature, tau_dtype)  # an unknown dtype fails here, not at the first plan
        self.tau_dtype = tau_dtype
        self.max_steps = max_steps
        self.online_pacer: PerplexityPacer | None = None
        self.offline_pacer: OfflinePacer | None = None  # built by pace_offline once the dataset is scored
        if cfg.curriculum.enable and cfg.curriculum.mode == "online":
            if batch_size is None or max_steps is None:
                raise ValueError("the online PREPO curriculum needs batch_size and max_steps")
            self.online_pacer = PerplexityPacer(batch_size, max_steps, cfg.curriculum.window_ratio)
        self.dataset_indices = None if dataset_indices is None else np.asarray(dataset_indices).ravel()
        self.step = 0
        self.epoch = 0
        self._plan: StepPlan | None = None
        self._extra: dict = {}

    @property
    def temperature(self) -> float:
        """The tau to sample the next step with; with ``tau_dtype`` (the logits dtype of the training engine) on that
        dtype's grid, so sampler and trainer use the same number (the scheduler keeps the exact value)."""
        tau = self.scheduler.temperature if self.cfg.temperature.enable else self.cfg.temperature.init_temperature
        return tau if self.tau_dtype is None else representable(tau, self.tau_dtype)

    @property
    def num_candidates(self) -> int | None:
        """Candidate prompts to score per step when the online curriculum is on (else None)."""
        return None if self.online_pacer is None else self.online_pacer.num_candidates

    def select_window(self, perplexities) -> np.ndarray:
        """PREPO online: positions (into the candidate list) of the paced window for the coming step."""
        if self.online_pacer is None:
            raise RuntimeError("select_window needs e3.curriculum.enable=true with mode=online")
        return self.online_pacer.select(perplexities, self.step)

    @property
    def paces_offline(self) -> bool:
        """Whether the engine must score the training set once and hand it to ``pace_offline``."""
        c = self.cfg.curriculum
        return bool(c.enable and c.mode == "offline")

    def pace_offline(self, indices, perplexities, seed: int = 0) -> None:
        """PREPO offline: the training set's prompt indices and their perplexities under the starting policy."""
        if not self.paces_offline:
            raise RuntimeError("pace_offline needs e3.curriculum.enable=true with mode=offline")
        if self.max_steps is None:
            raise ValueError("the offline PREPO curriculum needs max_steps")
        self.offline_pacer = OfflinePacer(indices, perplexities, self.max_steps, self.cfg.curriculum.window_ratio,
                                          seed)
        self._offline_seed = int(seed)

    def paced_prompts(self, batch_size: int) -> np.ndarray:
        """PREPO offline: the prompt indices of the coming step, drawn from the paced window of the sorted set."""
        if self.offline_pacer is None:
            raise RuntimeError("paced_prompts needs pace_offline first (e3.curriculum.mode=offline)")
        return self.offline_pacer.batch(self.step, batch_size)

    def plan(self, indices, total: int | None = None) -> StepPlan:
        idx = np.asarray(indices).ravel()
        if idx.size == 0:
            idx = idx.astype(np.int64)
        n = self.allocator.allocate(idx, total)
        self._plan = StepPlan(idx, n, self.temperature)
        return self._plan

    def advantages(self, scores, rollout_indices, entropies=None, lengths=None, group_ids=None,
                   kl_terms=None) -> np.ndarray:
        """GRPO advantages (x PREPO weights when enabled) of rollouts with raw scores ``scores``.

        ``rollout_indices``: each rollout's prompt index (its difficulty record); ``group_ids``: its group (default:
        the index; verl: the uid of the prompt's dispatch, so one prompt sampled twice in a step makes two groups).
        ``kl_terms``: per-rollout return terms added after the length bias (verl's KL-in-reward penalty), so
        correctness is decided on the raw score. ``entropies``: per-rollout token-mean entropy (needed for
        weighting); ``lengths``: response tokens (token-weighted mean and length bias).
        """
        a = self.cfg.advantage
        s = _finite_scores(scores)
        if a.length_bias:
            if lengths is None:
                raise ValueError("advantage.length_bias needs response lengths")
            k = self.allocator.tracker.difficulty(rollout_indices, unranked=1.0)  # unranked: hardest, no bias
            s = length_bias_scores(s, lengths, k, a.length_penalty_coeff, a.length_rank_threshold)
        if kl_terms is not None:
            s = s + _finite_scores(kl_terms)
        groups = rollout_indices if group_ids is None else group_ids
        adv = grpo_advantages(s, groups, a.eps, norm_by_std=a.norm_by_std)
        self._extra = {}
        w_cfg = self.cfg.weighting
        if w_cfg.enable:
            if entropies is None:
                raise ValueError("e3.weighting needs per-rollout entropies")
            w = relative_entropy_weights(entropies, lengths if w_cfg.token_weighted else None,
                                         (w_cfg.clip_min, w_cfg.clip_max))
            adv = adv * w
            self._extra = {"weights/mean": float(w.mean()), "weights/min": float(w.min()),
                           "weights/max": float(w.max()), "weights/std": float(w.std())} if w.size else {}
        return adv

    def observe(self, rollout_indices, scores, entropy: float) -> dict:
        """Close the step: difficulty from per-rollout correctness, temperature from the reduced entropy.

        Returns the step's metrics (shared names: step, rollout/*, reward/mean, groups/*).
        """
        idx = np.asarray(rollout_indices).ravel()
        s = _finite_scores(scores).ravel()
        used_tau = self._plan.temperature if self._plan is not None else self.temperature
        self.allocator.observe(idx, s)
        self.step += 1
        self.scheduler.step(entropy)
        out = {"step": self.step, "rollout/temperature": used_tau, "rollout/next_temperature": self.temperature,
               "rollout/entropy": float(entropy), "rollout/target_entropy": self.scheduler.target_entropy,
               "rollout/invalid_entropy": self.scheduler.invalid_entropy,
               "reward/mean": float(s.mean()) if s.size else float("nan")}
        out.update(self.allocator.metrics())
        stats = group_stats(s, idx)
        out.update({f"groups/{k}": v for k, v in stats.items()})
        for pacer in (self.online_pacer, self.offline_pacer):
            if pacer is not None:
                out.update(pacer.metrics())
        out.update(self._extra)
        return out

    def end_epoch(self) -> None:
        """Rank all prompts seen in the dataset and widen the budget bounds (E3 schedule)."""
        if self.dataset_indices is None:
            raise RuntimeError("end_epoch needs dataset_indices (all prompt indices of the training set)")
        self.allocator.end_epoch(self.dataset_indices)
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "allocator": self.allocator.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "pacer": None if self.online_pacer is None else self.online_pacer.state_dict(),
                "offline_pacer": None if self.offline_pacer is None else {
                    "indices": self.offline_pacer.sorted_indices.tolist(),
                    "ppl": self.offline_pacer.sorted_ppl.tolist(), "seed": self._offline_seed,
                    "state": self.offline_pacer.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; the offline window is rebuilt from the saved scores (no re-scoring)."""
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.allocator.load_state_dict(state["allocator"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.online_pacer is not None and state.get("pacer") is not None:
            self.online_pacer.load_state_dict(state["pacer"])
        saved = state.get("offline_pacer")
        if self.paces_offline and saved is None:
            raise ValueError("the checkpoint holds no offline curriculum state, but e3.curriculum.mode=offline")
        if saved is not None:
            self.pace_offline(np.asarray(saved["indices"], dtype=np.int64), np.asarray(saved["ppl"], np.float64),
                              saved["seed"])
            self.offline_pacer.load_state_dict(saved["state"])


def _finite_scores(scores) -> np.ndarray:
    """Scores as float64; a NaN/inf score (a broken custom reward) is refused before any state changes."""
    s = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(s.ravel()))
    if bad.size:
        raise ValueError(f"{bad.size} non-finite score(s) at rollout positions {bad[:10].tolist()}: "
                         "a reward must be a finite number")
    return s
