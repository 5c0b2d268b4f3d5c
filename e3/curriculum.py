"""PREPO perplexity-paced prompt window (Sun et al., arXiv 2511.00794, section 3.1).

Each candidate prompt x gets its perplexity under the current policy, P(x) = exp(-1/T sum_t log pi(x_t | x_<t))
(one forward pass over the prompt tokens). Candidates are sorted ascending and the train batch is the contiguous
window of K prompts starting at

    l(rho) = floor(rho * (|B| - K)),   rho = step / (total_steps - 1) in [0, 1]   (linear pacing, easy -> hard).

``step`` counts the steps completed before the batch is chosen (0 .. total_steps - 1), so the first step's window
holds the K easiest prompts and the last step's the K hardest (``pacing_progress``). Paper: K / |B| = 20 %.
``PerplexityPacer`` is the online form (a fresh candidate batch each step); ``OfflinePacer`` scores the whole
dataset once with the base model and paces over that sorted order.
"""

from __future__ import annotations

import math

import numpy as np


def window_start(size: int, progress: float, k: int) -> int:
    """l(rho) = floor(rho * (|B| - K)), rho clipped to [0, 1]."""
    if not math.isfinite(progress):
        raise ValueError(f"progress must be finite, got {progress}")
    rho = min(1.0, max(0.0, float(progress)))
    return int(math.floor(rho * (size - k)))


def pacing_progress(step: int, total_steps: int) -> float:
    """rho for the batch chosen after ``step`` completed steps of ``total_steps``: 0 at the first, 1 at the last.

    A one-step run has only its last step: rho = 1. Steps past the run stay at 1.
    """
    if total_steps <= 1:
        return 1.0
    return min(1.0, max(0.0, step / (total_steps - 1)))


def perplexity_window(perplexities, progress: float, k: int) -> np.ndarray:
    """Indices (into ``perplexities``) of the K prompts in the paced window, in ascending perplexity.

    NaN perplexities sort as the hardest. Raises ``ValueError`` unless 1 <= k <= len(perplexities).
    """
    ppl = np.asarray(perplexities, dtype=np.float64).ravel()
    if not 1 <= k <= ppl.size:
        raise ValueError(f"window size k={k} must be in [1, {ppl.size}] (number of candidates)")
    ppl = np.where(np.isnan(ppl), np.inf, ppl)
    order = np.argsort(ppl, kind="stable")
    start = window_start(ppl.size, progress, k)
    return order[start:start + k]


def candidate_count(batch_size: int, window_ratio: float) -> int:
    """|B| such that K / |B| = window_ratio (rounded up)."""
    return int(math.ceil(batch_size / window_ratio - 1e-9))


class PerplexityPacer:
    """Online pacing: ``select(perplexities, step)`` picks the window of a scored candidate batch."""

    def __init__(self, batch_size: int, total_steps: int, window_ratio: float = 0.2):
        if total_steps <= 0:
            raise ValueError(f"perplexity pacing needs total_steps > 0, got {total_steps}")
        self.batch_size, self.total_steps, self.window_ratio = int(batch_size), int(total_steps), float(window_ratio)
        self.num_candidates = candidate_count(self.batch_size, self.window_ratio)
        self._last: dict[str, float] = {}

    def progress(self, step: int) -> float:
        return pacing_progress(step, self.total_steps)

    def select(self, perplexities, step: int) -> np.ndarray:
        ppl = np.asarray(perplexities, dtype=np.float64)
        k = min(self.batch_size, ppl.size)
        chosen = perplexity_window(ppl, self.progress(step), k)
        sel = ppl[chosen]
        finite = ppl[np.isfinite(ppl)]
        self._last = {"curriculum/progress": self.progress(step),
                      "curriculum/window_start": window_start(ppl.size, self.progress(step), k),
                      "curriculum/ppl_mean": float(np.mean(sel)), "curriculum/ppl_min": float(np.min(sel)),
                      "curriculum/ppl_max": float(np.max(sel)),
                      "curriculum/candidate_ppl_mean": float(finite.mean()) if finite.size else float("nan")}
        return chosen

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


class OfflinePacer:
    """Offline pacing over a dataset scored once: the batch is drawn from the window of the sorted dataset.

    Window size W = max(batch_size, window_ratio * |D|); its start follows l(rho) over the sorted order.
    """

    def __init__(self, indices, perplexities, total_steps: int, window_ratio: float = 0.2, seed: int = 0):
        idx = np.asarray(indices).ravel()
        ppl = np.asarray(perplexities, dtype=np.float64).ravel()
        if idx.shape != ppl.shape or idx.size == 0:
            raise ValueError(f"offline pacer needs one perplexity per index, got {idx.size} and {ppl.size}")
        if total_steps <= 0:
            raise ValueError(f"perplexity pacing needs total_steps > 0, got {total_steps}")
        self.sorted_indices = idx[np.argsort(np.where(np.isnan(ppl), np.inf, ppl), kind="stable")]
        self.sorted_ppl = np.sort(np.where(np.isnan(ppl), np.inf, ppl), kind="stable")
        self.total_steps, self.window_ratio = int(total_steps), float(window_ratio)
        self._rng = np.random.default_rng(seed)
        self._last: dict[str, float] = {}

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        size = self.sorted_indices.size
        w = min(size, max(batch_size, int(round(self.window_ratio * size))))
        if batch_size > w:
            raise ValueError(f"batch_size={batch_size} > dataset size {size}")
        rho = pacing_progress(step, self.total_steps)
        start = window_start(size, rho, w)
        pick = start + self._rng.choice(w, size=batch_size, replace=False)
        self._last = {"curriculum/progress": rho, "curriculum/window_start": start,
                      "curriculum/ppl_mean": float(np.mean(self.sorted_ppl[pick]))}
        return self.sorted_indices[np.sort(pick)]

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
