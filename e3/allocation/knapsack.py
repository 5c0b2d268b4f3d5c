"""Allocation policy "knapsack": Knapsack RL (Li et al. 2025, "Knapsack RL: Unlocking Exploration of LLMs via
Optimizing Budget Allocation", arXiv 2509.25849), written from the paper's formulation.

Each prompt is an item; N rollouts cost N and are worth the paper's task value

    Value(N, p) = ProbNonZeroGradient(N, p) x InfoGain(p) = (1 - p^N - (1 - p)^N) x p (1 - p)^2,

and the step's budget is split by the knapsack

    max_{N_i}  sum_i Value(N_i, p_i)   s.t.   sum_i N_i = N_total,   N_low <= N_i <= N_up.

Value is concave in N, so taking the N_total - B N_low largest increments is exact (``allocate_knapsack``). p_i is
the mean reward (clipped to [0, 1]) of the prompt's last group (``estimator = "last"``) or of all its rollouts so
far (``"cumulative"``); a prompt without a record keeps the uniform share. The exactness argument, the handling of
value-0 prompts and the measured cost: docs/allocation.md.
"""

from __future__ import annotations

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget, check_pass_rates
from e3.allocation.uniform import uniform_rollouts

ESTIMATORS = ("last", "cumulative")


def info_gain(p) -> np.ndarray:
    """InfoGain(p) = p (1 - p)^2 (peak 4/27 at p = 1/3; zero for solved and hopeless prompts)."""
    p = check_pass_rates(p)
    return p * (1.0 - p) ** 2


def allocate_knapsack(p, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Exact argmax of sum_i Value(n_i, p_i) s.t. sum n_i = total, n_min <= n_i <= n_max.

    Equal increments go first to prompts of positive value, then to unsolved (p = 0) before solved (p = 1) ones,
    then to the smaller current budget, then in batch order.
    """
    p = check_pass_rates(p).ravel()
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    check_budget(p.size, total, n_min, n_max)
    n = np.full(p.size, n_min, dtype=np.int64)
    spare = total - p.size * n_min
    if spare == 0:
        return n
    ns = np.arange(n_min, n_max, dtype=np.float64)[None, :]  # gain of going from n to n + 1
    q = p[:, None]
    gains = info_gain(q) * (q ** ns * (1.0 - q) + (1.0 - q) ** ns * q)
    gains = np.minimum.accumulate(gains, axis=1)  # exact maths never increases; keep rounding from doing so
    flat = gains.ravel()
    cut = flat.size - spare
    threshold = np.sort(flat)[cut]  # the spare-th largest increment (np.partition degrades on the many exact ties)
    take = flat > threshold
    ties = np.flatnonzero(flat == threshold)
    need = spare - int(take.sum())
    if need:
        rows, steps = np.divmod(ties, gains.shape[1])
        pr = p[rows]
        tier = np.where((pr > 0.0) & (pr < 1.0), 0, np.where(pr == 0.0, 1, 2))  # value 0: unsolved, then solved
        order = np.lexsort((rows, steps, tier))  # then smaller budget (even spread), then batch order
        take[ties[order[:need]]] = True
    n += take.reshape(gains.shape).sum(axis=1)
    return n


class KnapsackPolicy(AllocationPolicy):
    """``knapsack``: Knapsack RL's budgeted value maximisation on per-prompt pass-rate estimates.

    Subclass and set ``estimator = "cumulative"`` to estimate from every rollout so far instead of the last group
    (select the subclass with ``e3.allocation.policy=my_module:MyKnapsack``).
    """

    estimator = "last"

    def __init__(self, tracker, seed: int = 0):
        super().__init__(tracker, seed)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"{type(self).__name__}.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        self._last_sum: dict[int, float] = {}
        self._last_count: dict[int, int] = {}
        self._stats: dict[str, float] = {}

    def observe(self, indices, rewards) -> None:
        """Remember each prompt's latest group: (sum of rewards clipped to [0, 1], rollouts)."""
        idx = np.asarray(indices).ravel()
        if idx.size == 0:
            return
        keys, inverse = np.unique(idx, return_inverse=True)
        sums = np.bincount(inverse, weights=np.clip(np.asarray(rewards, dtype=np.float64).ravel(), 0.0, 1.0),
                           minlength=keys.size)
        counts = np.bincount(inverse, minlength=keys.size)
        for k, s, c in zip(keys.tolist(), sums.tolist(), counts.tolist()):
            self._last_sum[k], self._last_count[k] = s, c

    def pass_rates(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(estimated p_i, has a record) for the prompts ``indices``."""
        idx = np.asarray(indices).ravel()
        if self.estimator == "cumulative":
            seen = self.tracker.counts(idx) > 0
            p = np.clip(self.tracker.accuracy(idx), 0.0, 1.0)
        else:
            keys = idx.tolist()
            counts = np.array([self._last_count.get(k, 0) for k in keys], dtype=np.float64)
            sums = np.array([self._last_sum.get(k, 0.0) for k in keys], dtype=np.float64)
            seen = counts > 0
            p = np.divide(sums, counts, out=np.zeros_like(sums), where=seen)
        return np.where(seen, np.clip(p, 0.0, 1.0), 0.0), seen

    def allocate(self, indices, total, n_min, n_max):
        p, seen = self.pass_rates(indices)
        n = uniform_rollouts(p.size, total, n_min, n_max)  # prompts without a record keep the uniform share
        if seen.any():
            n[seen] = allocate_knapsack(p[seen], int(n[seen].sum()), n_min, n_max)
        zero = seen & ((p == 0.0) | (p == 1.0))
        self._stats = {"knapsack/unseen_prompts": float(np.mean(~seen)),
                       "knapsack/zero_value_prompts": float(np.mean(zero)),
                       "knapsack/zero_value_extra_rollouts": int((n[zero] - n_min).sum())}
        return n

    def state_dict(self) -> dict:
        keys = list(self._last_count)
        return {"estimator": self.estimator, "keys": keys, "sum": [self._last_sum[k] for k in keys],
                "count": [self._last_count[k] for k in keys]}

    def load_state_dict(self, state: dict) -> None:
        keys = [k.item() if isinstance(k, np.generic) else k for k in state["keys"]]
        self._last_sum = dict(zip(keys, map(float, state["sum"])))
        self._last_count = dict(zip(keys, map(int, state["count"])))

    def metrics(self) -> dict:
        return dict(self._stats)

