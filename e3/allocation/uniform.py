"""Allocation policy "uniform": the even split n_i = floor(N / B), the remainder one each to the hardest prompts.

GRPO's homogeneous allocation, the baseline of E3 (Liao et al., arXiv 2505.18573) and of Knapsack RL (Li et al.
2025, arXiv 2509.25849): every prompt gets floor(N / B) rollouts, and the N mod B left over go one each to the
prompts of highest difficulty k_i (the tracker's last ranking; batch order among ties and without a ranking).
"""

from __future__ import annotations

import numpy as np

from e3.allocation.policy import AllocationPolicy, check_budget


def uniform_rollouts(size: int, total: int, n_min: int, n_max: int, difficulty=None) -> np.ndarray:
    """Even split of ``total``; the remainder goes to the hardest prompts (or the first, without difficulty)."""
    check_budget(size, total, n_min, n_max)
    base, extra = divmod(int(total), size) if size else (0, 0)
    n = np.full(size, base, dtype=np.int64)
    order = np.arange(size) if difficulty is None else np.argsort(-np.asarray(difficulty, float), kind="stable")
    n[order[:extra]] += 1
    return n


class UniformPolicy(AllocationPolicy):
    """``uniform``: an even split; the remainder goes to the hardest prompts of the last ranking."""

    def allocate(self, indices, total, n_min, n_max):
        return uniform_rollouts(len(indices), total, n_min, n_max, self.tracker.difficulty(indices))
