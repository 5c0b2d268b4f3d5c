"""Allocation policy "informative": maximise the expected number of rollouts in mixed-outcome groups.

Only rollouts in a mixed group (not all rewards equal) get a non-zero GRPO advantage. For a prompt with pass rate p
and a group of n rollouts the expected number of such rollouts is

    f(n; p) = n * (1 - p^n - (1 - p)^n),

and the policy chooses integers n_i with sum_i n_i = total, n_min <= n_i <= n_max maximising sum_i E[f(n_i; p_i)],
p_i ~ Beta(a + s_i, b + c_i - s_i) from the prompt's s_i successes in c_i rollouts (a = b = 1), through the exact
beta-binomial predictive

    P(all n correct) = prod_{j<n} (alpha + j) / (alpha + beta + j),  P(all n wrong) likewise with alpha <-> beta.

f is not concave in n, so greedy on marginal gains is not exact: the problem is solved exactly as a multiple-choice
knapsack by dynamic programming over the spare budget (``allocate_max_separable``). Why, the tie rule and the
measured cost: docs/allocation.md.
"""

from __future__ import annotations

import math

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget, check_pass_rates

PRIOR_A = 1.0
"""Beta prior pseudo-successes for the pass rate of a prompt (uniform prior: a = b = 1)."""
PRIOR_B = 1.0
"""Beta prior pseudo-failures."""


def expected_informative(n, p) -> np.ndarray:
    """Expected informative rollouts n * (1 - p^n - (1-p)^n) per prompt for known pass rates ``p`` (elementwise)."""
    n = np.asarray(n, dtype=np.float64)
    p = check_pass_rates(p)
    return n * (1.0 - p ** n - (1.0 - p) ** n)


def informative_fraction(n, p) -> float:
    """Expected share of the allocation's rollouts that land in mixed groups, given true pass rates ``p``."""
    n = np.asarray(n, dtype=np.float64)
    return float(expected_informative(n, p).sum() / n.sum()) if n.sum() > 0 else 0.0


def pass_rate_table(p, n_min: int, n_max: int) -> np.ndarray:
    """values[i, k] = f(n_min + k; p_i) for known pass rates (the oracle's table)."""
    ns = np.arange(n_min, n_max + 1)
    return expected_informative(ns[None, :], np.asarray(p, dtype=np.float64)[:, None])


def posterior_table(successes, counts, n_min: int, n_max: int, a: float = PRIOR_A, b: float = PRIOR_B) -> np.ndarray:
    """values[i, k] = (n_min + k) * P(mixed group) under the beta-binomial predictive of Beta(a + s, b + c - s)."""
    s = np.asarray(successes, dtype=np.float64).ravel()
    c = np.asarray(counts, dtype=np.float64).ravel()
    if s.shape != c.shape or np.any(~np.isfinite(s)) or np.any(c < 0) or np.any(s < 0) or np.any(s > c):
        raise ValueError("posterior_table: need 0 <= successes <= counts, finite and of equal length")
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta prior needs a > 0 and b > 0, got a={a}, b={b}")
    alpha, beta = (a + s)[:, None], (b + c - s)[:, None]
    j = np.arange(n_max)[None, :]
    all_ok = np.cumprod((alpha + j) / (alpha + beta + j), axis=1)  # column n-1: P(all n correct)
    all_bad = np.cumprod((beta + j) / (alpha + beta + j), axis=1)
    ns = np.arange(n_min, n_max + 1)
    mixed = np.clip(1.0 - all_ok[:, ns - 1] - all_bad[:, ns - 1], 0.0, 1.0)
    return ns[None, :] * mixed


def allocate_max_separable(values, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Exact argmax of sum_i values[i, n_i - n_min] s.t. sum n_i = total, n_min <= n_i <= n_max (DP knapsack).

    Among optimal allocations (values snapped to a power-of-two grid, so ties are exact) the last prompt gets the
    smallest budget, then the one before it, and so on.
    """
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    values = np.asarray(values, dtype=np.float64)
    size, width = (values.shape[0] if values.ndim else 0), n_max - n_min + 1
    check_budget(size, total, n_min, n_max)
    if values.shape != (size, width) or not np.all(np.isfinite(values)):
        raise ValueError(f"values must be a finite (prompts, {width}) table for caps [{n_min}, {n_max}], "
                         f"got shape {values.shape}")
    # Snap values to a power-of-two grid so every partial sum is exact: ties are then exact and broken by rule.
    bound = size * float(np.abs(values).max()) if values.size else 0.0
    quantum = math.ldexp(1.0, math.ceil(math.log2(bound)) - 50) if bound > 0 else 0.0
    if quantum > 0:  # 0 when the table is so small (subnormal) that the grid underflows: keep the values as they are
        values = np.round(values / quantum) * quantum
    spare = total - size * n_min
    padded = np.full(width - 1 + spare + 1, -np.inf)
    best = padded[width - 1:]  # best[c]: top value of the prompts so far with c spare rollouts spent
    best[0] = 0.0
    # win[c, k] = best[c - k] (-inf where c < k): a view, so it follows every update of best
    win = np.lib.stride_tricks.sliding_window_view(padded, width)[:, ::-1]
    choice = np.zeros((size, spare + 1), dtype=np.int64)
    for i in range(size):
        cand = win + values[i]
        choice[i] = np.argmax(cand, axis=1)  # first maximum: the smallest k among exact ties
        best[:] = np.take_along_axis(cand, choice[i][:, None], axis=1)[:, 0]
    n = np.empty(size, dtype=np.int64)
    c = spare
    for i in range(size - 1, -1, -1):
        n[i] = n_min + choice[i, c]
        c -= choice[i, c]
    assert c == 0 and n.sum() == total
    return n


def allocate_informative(successes, counts, total: int, n_min: int, n_max: int,
                         a: float = PRIOR_A, b: float = PRIOR_B) -> np.ndarray:
    """Budgets maximising expected informative rollouts from per-prompt success/rollout counts (exact)."""
    c = np.asarray(counts).ravel()
    check_budget(c.size, int(total), int(n_min), int(n_max))
    if n_min == n_max:
        return np.full(c.size, int(n_min), dtype=np.int64)
    return allocate_max_separable(posterior_table(successes, counts, n_min, n_max, a, b), total, n_min, n_max)


def allocate_for_pass_rates(p, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Oracle variant: the same exact optimisation with known pass rates (benchmark upper reference)."""
    p = check_pass_rates(p).ravel()
    return allocate_max_separable(pass_rate_table(p, n_min, n_max), total, n_min, n_max)


class InformativePolicy(AllocationPolicy):
    """``informative``: p_i from the tracker's cumulative rewards and counts (Beta(1, 1) posterior), exact DP."""

    def allocate(self, indices, total, n_min, n_max):
        idx = np.asarray(indices).ravel()
        counts = self.tracker.counts(idx).astype(np.float64)
        successes = np.where(counts > 0, np.clip(self.tracker.accuracy(idx), 0.0, 1.0) * counts, 0.0)
        return allocate_informative(successes, counts, total, n_min, n_max)

