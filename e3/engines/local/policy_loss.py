"""Clipped policy-gradient surrogate (PPO / GRPO), token-mean aggregation.

L = - sum_{i,t} m_it * min(r_it * A_i, clip(r_it, 1 - eps, 1 + eps) * A_i) / sum_{i,t} m_it,
r_it = exp(log pi_theta(y_it) - log pi_old(y_it)), both at the step's temperature (logits / tau, E3 section 3.2).
A_i is the rollout's GRPO advantage, already multiplied by PREPO's relative-entropy weight w_i when that is on
(PREPO section 3.2: w_i scales the rollout's clipped surrogate; a positive constant factor commutes with the min).
Pure function over tensors, no state.
"""

from __future__ import annotations

import torch


def clipped_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_ratio: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Returns (loss, stats) with stats = clip fraction and approximate KL(old || new), token-mean."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * adv)
    denom = mask.sum().clamp(min=1.0)
    loss = -(surrogate * mask).sum() / denom
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_ratio).float()
        stats = {
            "actor/clip_fraction": float((clipped * mask).sum() / denom),
            "actor/approx_kl": float(((old_logp - logp) * mask).sum() / denom),
        }
    return loss, stats
