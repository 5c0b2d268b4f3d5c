"""Pure, unbiased metrics: pass@k and group statistics.

pass@k uses the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code",
Eq. 1): for a problem with n samples of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)

computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i) in log space over one shared cumulative sum (vectorised
over problems; within ~1e-13 of exact integer arithmetic), and exactly 1 when n - c < k. Not the biased "any of the first k".

Group statistics follow E3's logging (``all_error_count``): a *group* is the set of rollouts of one prompt;
it is all-correct / all-wrong when every score is above / at-or-below the threshold, and a rollout is
*informative* when its group has mixed outcomes (only those carry a GRPO gradient).
"""

from __future__ import annotations

import numpy as np


def pass_at_k(n, c, k) -> np.ndarray | float:
    """Unbiased pass@k for arrays (or scalars) of sample counts ``n`` and correct counts ``c``.

    Raises ``ValueError`` when k > n, c > n, or any value is negative: a silent skip would bias the mean.
    """
    n_arr = np.asarray(n, dtype=np.int64)
    c_arr = np.asarray(c, dtype=np.int64)
    n_arr, c_arr = np.broadcast_arrays(n_arr, c_arr)
    k = int(k)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if np.any(n_arr < 0) or np.any(c_arr < 0):
        raise ValueError("pass@k needs non-negative n and c")
    if np.any(c_arr > n_arr):
        bad = int(np.argmax(c_arr > n_arr))
        raise ValueError(f"pass@k: c={int(c_arr.flat[bad])} > n={int(n_arr.flat[bad])} at position {bad}")
    if np.any(n_arr < k):
        bad = int(np.argmax(n_arr < k))
        raise ValueError(f"pass@k: k={k} > n={int(n_arr.flat[bad])} samples at position {bad}")
    # prod_{i=n-c+1}^{n} (1 - k/i) = exp(L[n] - L[n-c]) with L[m] = sum_{i=k+1}^{m} log(1 - k/i): one cumulative
    # sum shared by all problems (vectorised); rows with n - c < k are exactly 1.
    top = int(n_arr.max()) if n_arr.size else 0
    i = np.arange(1, top + 1, dtype=np.float64)
    terms = np.where(i > k, np.log1p(-k / np.maximum(i, k + 1)), 0.0)
    cum = np.concatenate(([0.0], np.cumsum(terms)))
    solvable = (n_arr - c_arr) >= k
    prod = np.exp(cum[n_arr] - cum[np.where(solvable, n_arr - c_arr, 0)])
    out = np.where(solvable, 1.0 - prod, 1.0)
    return float(out) if out.ndim == 0 else out


def group_stats(scores, group_ids, threshold: float = 0.0) -> dict[str, float]:
    """Fractions over the groups of one step.

    Returns ``all_correct`` / ``all_wrong`` (share of groups), ``informative_rollouts`` (share of rollouts in
    groups with mixed outcomes), ``informative_groups`` and ``num_groups``. A rollout counts as correct when its
    score is > ``threshold``. Empty input gives zeros and ``num_groups`` 0.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    ids = np.asarray(group_ids).ravel()
    if scores.shape != ids.shape:
        raise ValueError(f"group_stats: {scores.size} scores but {ids.size} group ids")
    if scores.size == 0:
        return {"all_correct": 0.0, "all_wrong": 0.0, "informative_rollouts": 0.0,
                "informative_groups": 0.0, "num_groups": 0}
    _, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    correct = np.bincount(inverse, weights=(scores > threshold).astype(np.float64), minlength=sizes.size)
    all_correct = correct == sizes
    all_wrong = correct == 0
    mixed = ~(all_correct | all_wrong)
    return {
        "all_correct": float(all_correct.mean()),
        "all_wrong": float(all_wrong.mean()),
        "informative_rollouts": float(sizes[mixed].sum() / sizes.sum()),
        "informative_groups": float(mixed.mean()),
        "num_groups": int(sizes.size),
    }
