"""GRPO advantages over groups of unequal size, and E3's optional length bias.

GRPO (Shao et al. 2024, DeepSeekMath, section 4.1.2) normalises each rollout's score inside its group g:

    A_i = (s_i - mean_g) / (std_g + eps),   std with N - 1 (as verl and E3),

so a group whose scores are all equal gets A = 0. Our fix: a singleton group gets 0 (verl returns the raw score,
which is not an advantage). With E3's dynamic budgets the groups have unequal sizes; nothing else changes.
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", section 3.1) drops the division by std_g:
A_i = s_i - mean_g (``norm_by_std=False``, verl's ``algorithm.norm_adv_by_std_in_grpo=false``).

Length bias (E3 README): for easy prompts (difficulty rank k <= threshold) a correct response's reward becomes
1 - mu*l / (1 + mu*l) = 1 / (1 + mu*l) with l its token length, mu = penalty coefficient (suggested 0.001).
"""

from __future__ import annotations

import numpy as np


def grpo_advantages(scores, group_ids, eps: float = 1e-6, norm_by_std: bool = True) -> np.ndarray:
    """Per-rollout advantages; ``group_ids[i]`` names the group of rollout i (one prompt's rollouts of one step).

    ``norm_by_std=False``: Dr. GRPO, A_i = s_i - mean_g.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    ids = np.asarray(group_ids).ravel()
    if s.shape != ids.shape:
        raise ValueError(f"grpo_advantages: {s.size} scores but {ids.size} group ids")
    if s.size == 0:
        return s.copy()
    _, inv, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=s, minlength=sizes.size)
    mean = sums / sizes
    dev = s - mean[inv]
    sq = np.bincount(inv, weights=dev * dev, minlength=sizes.size)
    std = np.sqrt(sq / np.maximum(sizes - 1, 1))
    gmin = np.full(sizes.size, np.inf)
    gmax = np.full(sizes.size, -np.inf)
    np.minimum.at(gmin, inv, s)
    np.maximum.at(gmax, inv, s)
    adv = dev / (std[inv] + eps) if norm_by_std else dev
    adv[(sizes[inv] < 2) | (gmin[inv] == gmax[inv])] = 0.0
    return adv


def length_bias_scores(scores, lengths, difficulty, coeff: float = 0.001, threshold: float = 0.1) -> np.ndarray:
    """E3 length bias: correct (score > 0) rollouts of prompts with difficulty <= threshold get 1 / (1 + coeff*l).

    ``difficulty`` is per rollout (the k of its prompt). Other scores are returned unchanged.
    """
    s = np.asarray(scores, dtype=np.float64).ravel().copy()
    lens = np.asarray(lengths, dtype=np.float64).ravel()
    k = np.asarray(difficulty, dtype=np.float64).ravel()
    if not (s.shape == lens.shape == k.shape):
        raise ValueError(f"length_bias_scores: {s.size} scores, {lens.size} lengths, {k.size} difficulties")
    mask = (s > 0) & (k <= threshold)
    s[mask] = 1.0 - coeff * lens[mask] / (1.0 + coeff * lens[mask])
    return s
