"""Allocation policy "vip": variance-informed allocation (Nguyen et al., "Adaptive Rollout Allocation for Online
Reinforcement Learning with Verifiable Rewards", ICLR 2026, arXiv 2602.01601), written from the paper's formulation.

The paper's per-prompt gradient variance for a prompt of success probability p and n rollouts (its analysis for
RLOO; cited by name, as the paper's equation numbering could not be checked here) is

    Var(n; p) = 4 sigma_Z^2 p (1 - p) / (n - 1)        (Dr. GRPO: 4 sigma_Z^2 p (1 - p) (n - 1) / n^2),

and the step's budget is split by the convex program

    min_n  sum_i w_i / (n_i - 1)   s.t.  sum_i n_i = N,  n_min <= n_i <= n_max,    w_i = E[p_i (1 - p_i)]

(sigma_Z^2 is common to all prompts and drops out). Its KKT conditions give the water-filling solution

    n_i = clip(1 + sqrt(w_i / lam), n_min, n_max),   w_i / (n_i - 1)^2 = lam for every prompt not at a cap,

lam > 0 fixed by sum_i n_i = N (``continuous_allocation``, solved exactly on the breakpoints). Integer budgets
(``allocate_vip``): the floors of that solution, then one rollout at a time to the largest reduction
w_i / ((n_i - 1) n_i) of the objective (equal reductions: the smaller budget, then batch order), checked against the
exact integer optimum of the same objective (marginal analysis, exact since 1/(n - 1) is convex; Gross 1956, Fox
1966) and replaced by it where the check fails. Predictor: the paper's Gaussian process over prompt embeddings is
not reproduced; w_i is the Beta(1, 1) posterior expectation of p (1 - p) from the tracker's record of the prompt.
The differences and why: docs/allocation.md.
"""

from __future__ import annotations

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget

PRIOR_A = 1.0
"""Beta prior pseudo-successes (uniform prior, as ``informative``)."""
PRIOR_B = 1.0
"""Beta prior pseudo-failures."""


def bernoulli_variance(successes, counts, a: float = PRIOR_A, b: float = PRIOR_B) -> np.ndarray:
    """E[p (1 - p)] under the posterior Beta(a + s, b + c - s): alpha beta / ((alpha + beta)(alpha + beta + 1))."""
    s = np.asarray(successes, dtype=np.float64).ravel()
    c = np.asarray(counts, dtype=np.float64).ravel()
    if s.shape != c.shape or not np.all(np.isfinite(s) & np.isfinite(c)) or np.any((s < 0) | (s > c)):
        raise ValueError("bernoulli_variance: need 0 <= successes <= counts, finite and of equal length")
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta prior needs a > 0 and b > 0, got a={a}, b={b}")
    alpha, beta = a + s, b + c - s
    return alpha * beta / ((alpha + beta) * (alpha + beta + 1.0))


def variance_objective(n, w) -> float:
    """sum_i w_i / (n_i - 1): the batch's gradient variance up to the common factor 4 sigma_Z^2."""
    return float(np.sum(np.asarray(w, dtype=np.float64) / (np.asarray(n, dtype=np.float64) - 1.0)))


def _weights(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).ravel()
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("variance weights must be finite and >= 0")
    return w


def continuous_allocation(w, total: float, n_min: int, n_max: int) -> tuple[np.ndarray, float]:
    """The convex program's solution x (real budgets) and its multiplier lam (inf where no prompt is inside).

    x_i = clip(1 + u sqrt(w_i), n_min, n_max) with u = 1 / sqrt(lam): sum_i x_i is continuous, non-decreasing and
    piecewise linear in u with breakpoints (n_min - 1) / sqrt(w_i) and (n_max - 1) / sqrt(w_i), so u is found
    exactly on the segment where the sum reaches ``total``. Prompts with w_i = 0 do not change the objective: they
    stay at n_min unless the others are all at n_max, and then share the rest evenly.
    """
    w = _weights(w)
    total, n_min, n_max = float(total), int(n_min), int(n_max)
    check_budget(w.size, total, n_min, n_max)
    s = np.sqrt(w)
    pos = s > 0
    x = np.full(w.size, float(n_min))
    if not pos.any():
        return np.full(w.size, total / max(w.size, 1)), float("inf")
    sp = s[pos]
    lo_u, hi_u = (n_min - 1) / sp, (n_max - 1) / sp
    by_lo, by_hi = np.argsort(lo_u, kind="stable"), np.argsort(hi_u, kind="stable")
    lo_sorted, hi_sorted = lo_u[by_lo], hi_u[by_hi]
    lo_cum = np.concatenate([[0.0], np.cumsum(sp[by_lo])])
    hi_cum = np.concatenate([[0.0], np.cumsum(sp[by_hi])])
    rest = total - (~pos).sum() * n_min

    def spent(u):
        past = np.searchsorted(lo_sorted, u, side="left")  # above n_min
        full = np.searchsorted(hi_sorted, u, side="right")  # at n_max
        return (sp.size - past) * n_min + full * n_max + (past - full) + u * (lo_cum[past] - hi_cum[full])

    knots = np.unique(np.concatenate([lo_u, hi_u]))
    at = spent(knots)
    if rest >= at[-1]:  # every prompt that matters is at n_max; the indifferent ones take what is left
        x[pos] = n_max
        x[~pos] = n_min + (rest - at[-1]) / max((~pos).sum(), 1)
        return x, 0.0
    j = int(np.searchsorted(at, rest, side="left"))
    if at[j] == rest or j == 0:
        u = float(knots[j])
    else:
        u = float(knots[j - 1] + (rest - at[j - 1]) * (knots[j] - knots[j - 1]) / (at[j] - at[j - 1]))
    x[pos] = np.clip(1.0 + u * sp, n_min, n_max)
    return x, ((1.0 / u) ** 2 if u > 0 else float("inf"))


def _gain(w, n):
    """The objective's reduction when prompt i goes from n_i to n_i + 1 rollouts: w_i / ((n_i - 1) n_i)."""
    return w / ((n - 1.0) * n)


def allocate_vip(w, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Integer budgets minimising sum_i w_i / (n_i - 1) s.t. sum n_i = total, n_min <= n_i <= n_max (exact).

    Rounding rule: the floors of ``continuous_allocation``, then one rollout at a time to the largest reduction
    w_i / ((n_i - 1) n_i) (equal reductions: the smaller n_i first, then batch order). The result is checked against
    the integer optimality condition (no rollout moved from one prompt to another lowers the objective, with the
    same tie order) and replaced by the marginal-analysis optimum from n_min where the check fails.
    """
    w = _weights(w)
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    check_budget(w.size, total, n_min, n_max)
    if w.size == 0 or n_min == n_max:
        return np.full(w.size, n_min, dtype=np.int64)
    x, _ = continuous_allocation(w, total, n_min, n_max)
    n = np.clip(np.floor(x).astype(np.int64), n_min, n_max)
    spare = total - int(n.sum())
    if spare >= 0:
        n = _add(w, n, spare, n_max, depth=min(spare, 3))
        if _optimal(w, n, n_min, n_max):
            return n
    return _add(w, np.full(w.size, n_min, dtype=np.int64), total - w.size * n_min, n_max, depth=n_max - n_min)


def _add(w, n, spare, n_max, depth) -> np.ndarray:
    """Give ``spare`` rollouts to the best of the next ``depth`` steps of every prompt, in the tie order."""
    if spare == 0 or depth == 0:
        return n.copy()
    steps = n[:, None] + np.arange(depth)[None, :]  # the level each step starts from
    gain = np.where(steps < n_max, _gain(w[:, None], steps), -np.inf)
    rows = np.broadcast_to(np.arange(n.size)[:, None], steps.shape)
    order = np.lexsort((rows.ravel(), steps.ravel(), -gain.ravel()))[:spare]  # largest gain, smaller n, batch order
    out = n.copy()
    np.add.at(out, rows.ravel()[order], 1)
    return out


def _optimal(w, n, n_min, n_max) -> bool:
    """No untaken step comes before a taken one in the tie order: the allocation is the marginal-analysis optimum."""
    up, down = n < n_max, n > n_min
    if not up.any() or not down.any():  # every prompt at n_max, or every one at n_min: the only allocation
        return True
    i_up, i_down = np.flatnonzero(up), np.flatnonzero(down)
    best_untaken = min(zip(-_gain(w[i_up], n[i_up]), n[i_up], i_up))
    worst_taken = max(zip(-_gain(w[i_down], n[i_down] - 1), n[i_down] - 1, i_down))
    return best_untaken > worst_taken


class VIPPolicy(AllocationPolicy):
    """``vip``: minimise the batch's gradient variance sum_i E[p_i (1 - p_i)] / (n_i - 1) (VIP, RLOO form), with
    E[p (1 - p)] from the Beta(1, 1) posterior of the tracker's record of each prompt."""

    def __init__(self, tracker, seed: int = 0):
        super().__init__(tracker, seed)
        self._stats: dict[str, float] = {}

    def allocate(self, indices, total, n_min, n_max):
        idx = np.asarray(indices).ravel()
        counts = self.tracker.counts(idx).astype(np.float64)
        successes = np.where(counts > 0, np.clip(self.tracker.accuracy(idx), 0.0, 1.0) * counts, 0.0)
        w = bernoulli_variance(successes, counts)
        n = allocate_vip(w, total, n_min, n_max)
        even = np.full(idx.size, total / max(idx.size, 1))
        self._stats = {"vip/variance_vs_even": variance_objective(n, w) / variance_objective(even, w),
                       "vip/mean_weight": float(w.mean()) if w.size else 0.0}
        return n

    def metrics(self) -> dict:
        return dict(self._stats)
