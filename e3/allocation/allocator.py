"""The run's budget controller (E3, Liao et al., arXiv 2505.18573, section 3.1, Algorithm 1) around a pluggable split.

- ``DifficultyTracker``: cumulative accuracy per prompt; at every epoch end prompts are ranked by it, highest
  first, and get difficulty k_i = rank_i / |D| (easy -> 0, hard -> 1). Prompts of equal accuracy share their
  average rank (our fix: the authors' code ranks ties in dataset order; docs/differences.md).
- ``RolloutSchedule``: the bounds move every epoch, n_min = max(n_min - n_update, n_low),
  n_max = min(n_max + n_update, n_high).
- ``RolloutAllocator``: tracker + schedule + the policy that ``e3.allocation.policy`` selects (looked up in
  ``e3.allocation.registry``; E3's own split is ``e3.allocation.e3``); every answer of the policy is checked.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from e3.allocation.policy import MIN_GROUP, check_allocation, check_budget
from e3.allocation.registry import build_policy
from e3.allocation.uniform import uniform_rollouts


class DifficultyTracker:
    """Cumulative per-prompt accuracy (key: dataset row index) and the epoch-end ranking k_i = rank_i / |D|."""

    def __init__(self, prior_accuracy: float = 0.0):
        self.prior_accuracy = float(prior_accuracy)
        self._sum: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._rank: dict[int, float] = {}
        self._ranked_acc = np.empty(0)  # distinct accuracies of the last ranking, descending
        self._ranked_count = np.empty(0, dtype=np.int64)  # prompts at each of them
        self.epochs_ranked = 0

    def observe(self, indices: Iterable, rewards: Iterable) -> None:
        """Add one reward per rollout; ``indices[i]`` is the prompt index of rollout i."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices).ravel()
        rew = np.asarray(rewards, dtype=np.float64).ravel()
        if idx.shape != rew.shape:
            raise ValueError(f"observe: {idx.size} indices but {rew.size} rewards")
        for i, r in zip(idx.tolist(), rew.tolist()):
            self._sum[i] = self._sum.get(i, 0.0) + r
            self._count[i] = self._count.get(i, 0) + 1

    def accuracy(self, indices: Iterable) -> np.ndarray:
        """Cumulative mean reward per prompt; ``prior_accuracy`` for never-seen prompts."""
        return np.array([self._sum[i] / self._count[i] if self._count.get(i) else self.prior_accuracy
                         for i in np.asarray(list(indices)).ravel().tolist()], dtype=np.float64)

    def counts(self, indices: Iterable) -> np.ndarray:
        return np.array([self._count.get(i, 0) for i in np.asarray(list(indices)).ravel().tolist()], dtype=np.int64)

    def end_epoch(self, indices: Iterable) -> None:
        """Rank all dataset prompts by accuracy, highest first: k_i = rank_i / |D| (ranks 0 .. |D| - 1).

        Prompts of equal accuracy share the average of the ranks they span (the expected rank under a random
        tie-break, without its spread): equal evidence, equal difficulty, equal budget.
        """
        idx = np.asarray(list(indices)).ravel()
        if idx.size == 0:
            return
        acc = self.accuracy(idx)
        levels, inverse, counts = np.unique(-acc, return_inverse=True, return_counts=True)  # accuracy descending
        first = np.cumsum(counts) - counts  # first rank of each accuracy level
        ranks = (first + (counts - 1) / 2.0)[inverse.ravel()]
        self._rank = dict(zip(idx.tolist(), (ranks / idx.size).tolist()))
        self._ranked_acc = -levels  # the accuracy levels of the ranking, descending, with their sizes
        self._ranked_count = counts
        self.epochs_ranked += 1

    def difficulty(self, indices: Iterable, unranked: float = 0.0) -> np.ndarray:
        """k_i from the last ranking; a prompt outside it is placed by its accuracy (prior if never seen).

        Before the first ranking every prompt gets ``unranked``: 0 for the allocator (which then spreads evenly),
        1 for the length bias (no prompt is known to be easy yet; the authors' code counts unranked prompts as the
        hardest).
        """
        idx = np.asarray(list(indices)).ravel().tolist()
        if not self._rank:
            return np.full(len(idx), float(unranked))
        out = np.empty(len(idx))
        n_ranked = int(self._ranked_count.sum())
        for j, i in enumerate(idx):
            if i in self._rank:
                out[j] = self._rank[i]
            else:  # its average rank were it ranked: prompts strictly easier, plus half of those tied with it
                a = self.accuracy([i])[0]
                easier = self._ranked_count[self._ranked_acc > a].sum()
                tied = self._ranked_count[self._ranked_acc == a].sum()
                out[j] = (easier + tied / 2.0) / n_ranked
        return out

    def state_dict(self) -> dict:
        """Plain lists only (prompt keys stay ints through JSON as well as pickle/torch.save)."""
        keys = list(self._count)
        return {"prior_accuracy": self.prior_accuracy,
                "keys": keys, "sum": [self._sum[i] for i in keys], "count": [self._count[i] for i in keys],
                "rank_keys": list(self._rank), "rank": list(self._rank.values()),
                "ranked_acc": self._ranked_acc.tolist(), "ranked_count": self._ranked_count.tolist(),
                "epochs_ranked": self.epochs_ranked}

    def load_state_dict(self, state: dict) -> None:
        self.prior_accuracy = float(state["prior_accuracy"])
        keys = [_key(k) for k in state["keys"]]
        self._sum = dict(zip(keys, map(float, state["sum"])))
        self._count = dict(zip(keys, map(int, state["count"])))
        self._rank = dict(zip((_key(k) for k in state["rank_keys"]), map(float, state["rank"])))
        self._ranked_acc = np.asarray(state["ranked_acc"], dtype=np.float64)
        self._ranked_count = np.asarray(state.get("ranked_count", np.ones(self._ranked_acc.size)), dtype=np.int64)
        self.epochs_ranked = int(state["epochs_ranked"])

    def metrics(self) -> dict[str, float]:
        seen = len(self._count)
        mean_acc = float(np.mean([self._sum[i] / self._count[i] for i in self._count])) if seen else 0.0
        return {"difficulty/prompts_seen": seen, "difficulty/mean_accuracy": mean_acc,
                "difficulty/epochs_ranked": self.epochs_ranked}


def _key(k):
    """Prompt keys are dataset row indices; numpy ints become Python ints so lookups match."""
    return k.item() if isinstance(k, np.generic) else k


class RolloutSchedule:
    """Per-epoch bounds: start at [n, n]; each epoch end n_min -= n_update (>= n_low), n_max += n_update (<= n_high)."""

    def __init__(self, n: int, n_update: int = 2, n_low: int = 4, n_high: int = 12):
        if not (MIN_GROUP <= n_low <= n <= n_high):
            raise ValueError(f"need {MIN_GROUP} <= n_low={n_low} <= n={n} <= n_high={n_high}")
        if n_update < 0:
            raise ValueError(f"n_update={n_update} must be >= 0")
        self.n, self.n_update, self.n_low, self.n_high = int(n), int(n_update), int(n_low), int(n_high)
        self.n_min = self.n_max = self.n

    def end_epoch(self) -> None:
        self.n_min = max(self.n_min - self.n_update, self.n_low)
        self.n_max = min(self.n_max + self.n_update, self.n_high)

    def state_dict(self) -> dict:
        return {"n_min": self.n_min, "n_max": self.n_max}

    def load_state_dict(self, state: dict) -> None:
        self.n_min, self.n_max = int(state["n_min"]), int(state["n_max"])


class RolloutAllocator:
    """Stateful budget controller: tracker + schedule + policy. ``allocate`` decides, ``observe`` learns.

    ``policy`` is what ``e3.allocation.policy`` says: a registered name or ``module.path:ClassName`` (see
    ``e3.allocation.registry``); it is resolved here, so a bad value fails when the allocator is built, with an
    error naming the key. Every answer of the policy is checked (length, integers, sum, bounds).
    """

    def __init__(self, n: int, policy: str = "e3", enable: bool = True, n_update: int = 2, n_low: int = 4,
                 n_high: int = 12, prior_accuracy: float = 0.0, seed: int = 0):
        self.tracker = DifficultyTracker(prior_accuracy)
        # resolved even when disabled, so that a typo is reported whatever the switch says
        self.allocation_policy = build_policy(policy, self.tracker, seed)
        if enable:
            self.schedule = RolloutSchedule(n, n_update, n_low, n_high)
        else:
            self.schedule = RolloutSchedule(n, 0, n, n)
        self.n, self.policy, self.enable = int(n), policy, bool(enable)
        self._last = np.empty(0, dtype=np.int64)

    @classmethod
    def from_config(cls, cfg, n: int) -> "RolloutAllocator":
        return cls(n, cfg.policy, cfg.enable, cfg.n_update, cfg.n_low, cfg.n_high, cfg.prior_accuracy, cfg.seed)

    def allocate(self, indices, total: int | None = None) -> np.ndarray:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices).ravel()
        total = len(idx) * self.n if total is None else int(total)
        lo, hi = self.schedule.n_min, self.schedule.n_max
        if not self.enable:
            out = uniform_rollouts(len(idx), total, self.n, self.n)
        else:
            check_budget(idx.size, total, lo, hi)
            if idx.size == 0:
                out = np.empty(0, dtype=np.int64)
            else:
                raw = self.allocation_policy.allocate(idx.copy(), total, lo, hi)
                out = check_allocation(raw, self.policy, idx.size, total, lo, hi)
        self._last = out
        return out

    def observe(self, indices, rewards) -> None:
        self.tracker.observe(indices, rewards)
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices).ravel()
        self.allocation_policy.observe(idx, np.asarray(rewards, dtype=np.float64).ravel())

    def end_epoch(self, all_indices) -> None:
        self.tracker.end_epoch(all_indices)
        self.allocation_policy.end_epoch(np.asarray(list(all_indices)).ravel())
        self.schedule.end_epoch()

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "schedule": self.schedule.state_dict(),
                "policy": {"name": self.policy, "state": self.allocation_policy.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore tracker and schedule; the policy's own state only if the checkpoint used the same policy."""
        self.tracker.load_state_dict(state["tracker"])
        self.schedule.load_state_dict(state["schedule"])
        saved = state.get("policy")  # absent in checkpoints written before policies had state
        if saved is not None and saved.get("name") == self.policy:
            self.allocation_policy.load_state_dict(saved["state"])

    def metrics(self) -> dict:
        n = self._last
        out = {"rollout/n_min": self.schedule.n_min, "rollout/n_max": self.schedule.n_max,
               "rollout/n_total": int(n.sum()), "rollout/n_hist": n.tolist()}
        if n.size:
            out.update({"rollout/n_alloc_min": int(n.min()), "rollout/n_alloc_max": int(n.max()),
                        "rollout/n_alloc_std": float(n.std())})
        out.update(self.tracker.metrics())
        if self.enable:
            out.update({f"allocation/{k}": v for k, v in self.allocation_policy.metrics().items()})
        return out
