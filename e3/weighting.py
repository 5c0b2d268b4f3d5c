"""PREPO relative-entropy rollout weights (Sun et al., arXiv 2511.00794, section 3.2).

For rollout i with token-mean entropy H_i, the weight is its entropy relative to the whole batch,

    w_i = H_i / H_bar,   H_bar = (1/N) sum_j H_j   (or token-weighted: sum_j l_j H_j / sum_j l_j),

normalised over the batch (not per group). w_i multiplies rollout i's clipped surrogate — equivalently its
advantage — and is a constant (no gradient). Soft weighting: no rollout is dropped. An optional clip bounds w.
Non-finite entropies get weight 1; a batch whose mean entropy is not positive gets all-ones weights.
Negative entropies are clamped to 0 (weight 0, and 0 in the mean): an entropy is >= 0 by definition, a negative
value is rounding (e.g. bf16 logsumexp - sum p * logit of a near-deterministic distribution) or a caller's bug, and
must never give a weight of the wrong sign. Clamping rather than refusing keeps a run alive on rounding noise; a
value below -1e-3 (more than rounding) is also logged as a warning.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def relative_entropy_weights(mean_entropies, lengths=None, clip: tuple | None = None) -> np.ndarray:
    """w_i = H_i / H_bar over the batch; ``lengths`` switches to the token-weighted mean; ``clip=(lo, hi)``."""
    h = np.asarray(mean_entropies, dtype=np.float64).ravel()
    if h.size == 0:
        return h.copy()
    finite = np.isfinite(h)
    negative = finite & (h < 0)
    if negative.any():
        if h[negative].min() < -1e-3:
            logger.warning("relative_entropy_weights: %d negative entropies (min %.4g) counted as 0",
                           int(negative.sum()), float(h[negative].min()))
        h = np.where(negative, 0.0, h)
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
