"""PREPO relative-entropy rollout weights (Sun et al., arXiv 2511.00794, section 3.2).

For rollout i with token-mean entropy H_i, the weight is its entropy relative to the whole batch,

    w_i = H_i / H_bar,   H_bar = (1/N) sum_j H_j   (or token-weighted: sum_j l_j H_j / sum_j l_j),

normalised over the batch (not per group). w_i multiplies rollout i's clipped surrogate — equivalently its
advantage — and is a constant (no gradient). Soft weighting: no rollout is dropped. An optional clip bounds w.
Non-finite entropies get weight 1; a batch whose mean entropy is not positive gets all-ones weights.
"""

from __future__ import annotations

import numpy as np


def relative_entropy_weights(mean_entropies, lengths=None, clip: tuple | None = None) -> np.ndarray:
    """w_i = H_i / H_bar over the batch; ``lengths`` switches to the token-weighted mean; ``clip=(lo, hi)``."""
    h = np.asarray(mean_entropies, dtype=np.float64).ravel()
    if h.size == 0:
        return h.copy()
    finite = np.isfinite(h)
    if lengths is not None:
        lens = np.asarray(lengths, dtype=np.float64).ravel()
        if lens.shape != h.shape:
            raise ValueError(f"{h.size} entropies but {lens.size} lengths")
        mass = lens[finite].sum()
        h_bar = float((lens[finite] * h[finite]).sum() / mass) if mass > 0 else float("nan")
    else:
        h_bar = float(h[finite].mean()) if finite.any() else float("nan")
    if not np.isfinite(h_bar) or h_bar <= 0:
        return np.ones_like(h)
    w = np.where(finite, h / h_bar, 1.0)
    if clip is not None:
        lo, hi = clip
        w = np.clip(w, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    return w
