"""Allocation policy "informative": maximise the expected number of rollouts in mixed-outcome groups.

Only rollouts in a mixed group (not all rewards equal) get a non-zero GRPO advantage. For a prompt with pass rate p
and a group of n rollouts the expected number of such rollouts is

    f(n; p) = n * (1 - p^n - (1 - p)^n),

and the policy chooses integers n_i with sum_i n_i = total, n_min <= n_i <= n_max maximising sum_i E[f(n_i; p_i)],
p_i ~ Beta(a + s_i, b + c_i - s_i) from the prompt's s_i successes in c_i rollouts (a = b = 1), through the exact
beta-binomial predictive

    P(all n correct) = prod_{j<n} (alpha + j) / (alpha + beta + j),  P(all n wrong) likewise with alpha <-> beta.

f is not concave in n, so greedy on marginal gains is not exact: the problem is solved exactly by
``e3.allocation.separable`` (prompts with the same record share a row; f has unimodal increments, so the structured
search applies; the multiple-choice-knapsack DP is its reference). Why, the tie rule and the measured cost:
docs/allocation.md.
"""

from __future__ import annotations

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget, check_pass_rates
from e3.allocation.separable import allocate_grouped

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


def allocate_informative(successes, counts, total: int, n_min: int, n_max: int,
                         a: float = PRIOR_A, b: float = PRIOR_B) -> np.ndarray:
    """Budgets maximising expected informative rollouts from per-prompt success/rollout counts (exact)."""
    s = np.asarray(successes, dtype=np.float64).ravel()
    c = np.asarray(counts, dtype=np.float64).ravel()
    check_budget(c.size, int(total), int(n_min), int(n_max))
    if n_min == n_max:
        return np.full(c.size, int(n_min), dtype=np.int64)
    if s.shape != c.shape:
        raise ValueError("posterior_table: need 0 <= successes <= counts, finite and of equal length")
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((s, c))  # one row per distinct record (successes, count)
    new = np.ones(c.size, dtype=bool)
    new[1:] = (c[order][1:] != c[order][:-1]) | (s[order][1:] != s[order][:-1])
    inverse = np.empty(c.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    first = order[new]
    return allocate_grouped(posterior_table(s[first], c[first], n_min, n_max, a, b), inverse, total, n_min, n_max)


def allocate_for_pass_rates(p, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Oracle variant: the same exact optimisation with known pass rates (benchmark upper reference)."""
    p = check_pass_rates(p).ravel()
    check_budget(p.size, int(total), int(n_min), int(n_max))
    levels, inverse = np.unique(p, return_inverse=True)
    return allocate_grouped(pass_rate_table(levels, n_min, n_max), inverse.ravel(), total, n_min, n_max)


class InformativePolicy(AllocationPolicy):
    """``informative``: p_i from the tracker's cumulative rewards and counts (Beta(1, 1) posterior), exact solver."""

    def allocate(self, indices, total, n_min, n_max):
        idx = np.asarray(indices).ravel()
        counts = self.tracker.counts(idx).astype(np.float64)
        successes = np.where(counts > 0, np.clip(self.tracker.accuracy(idx), 0.0, 1.0) * counts, 0.0)
        return allocate_informative(successes, counts, total, n_min, n_max)

