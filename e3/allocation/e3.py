"""Allocation policy "e3": E3 Algorithm 1, budgets proportional to difficulty, with our fixes (docs/differences.md).

E3 (Liao et al., "Enhancing Efficiency and Exploration in Reinforcement Learning for LLMs", EMNLP 2025, arXiv
2505.18573, section 3.1, Algorithm 1): with the tracker's difficulty k_i = rank_i / |D| (easy -> 0, hard -> 1), a
batch of B prompts with total budget N is split as

    n_i = n_min + floor(R * k_i / sum_j k_j) (+ leftover one at a time in descending k),  R = N - B * n_min.

Our fixes of the authors' code: the cap n_max holds in every step (what a capped prompt cannot take is
redistributed); sum(n_i) == N exactly; a harder prompt never gets fewer than an easier one; n_i >= 2.
"""

from __future__ import annotations

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget


def allocate_rollouts(difficulty, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Split ``total`` rollouts over prompts in proportion to ``difficulty`` (E3 Alg. 1, capped).

    ``difficulty`` holds k_i in [0, 1] (higher = harder). Returns int64 n_i with sum == total,
    n_min <= n_i <= n_max, and k_i > k_j  =>  n_i >= n_j. All k zero spreads the remainder evenly.
    Raises ``ValueError`` with the numbers when the budget is infeasible.
    """
    k = np.asarray(difficulty, dtype=np.float64).ravel()
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    check_budget(k.size, total, n_min, n_max)
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise ValueError("difficulty must be finite and >= 0")
    n = np.full(k.size, n_min, dtype=np.int64)
    remaining = total - k.size * n_min
    # Water-filling: proportional floors among prompts below the cap; redistribute what capped prompts can't take.
    # Alg. 1 makes one proportional pass; we repeat it only to redistribute what the cap cut off.
    while remaining > 0:
        open_ = n < n_max
        weights = np.where(open_, k, 0.0)
        if weights.sum() <= 0:
            weights = open_.astype(np.float64)
        wanted = np.floor(remaining * weights / weights.sum()).astype(np.int64)
        share = np.minimum(wanted, n_max - n)
        n += share
        remaining -= int(share.sum())
        if share.sum() == 0 or (np.array_equal(share, wanted) and remaining < np.count_nonzero(n < n_max)):
            break
    if remaining > 0:
        # Leftover (< number of open prompts): one each in descending difficulty; stable order keeps ties fair.
        order = np.argsort(-k, kind="stable")
        for i in order:
            if remaining == 0:
                break
            if n[i] < n_max:
                n[i] += 1
                remaining -= 1
    return n


class E3Policy(AllocationPolicy):
    """``e3``: E3 Alg. 1 on the tracker's epoch-end ranking k_i (budget proportional to difficulty, capped)."""

    def allocate(self, indices, total, n_min, n_max):
        return allocate_rollouts(self.tracker.difficulty(indices), total, n_min, n_max)
