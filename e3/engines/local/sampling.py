"""Batched sampling with a KV cache, and the policy quantities the local engine needs from one forward pass.

Prompts are left-padded to one fixed width, so a batch needs neither an attention mask nor per-row positions.
``sample`` draws tokens from softmax(logits / tau) (or argmax when ``greedy``) until every row has emitted eos or
``max_new_tokens`` is reached; tokens after a row's eos are pad and masked out. ``response_logprobs`` recomputes,
with gradients, log pi_tau(y_t | x, y_<t) and the token entropy H_t = -sum_v p_v log p_v of the same tempered
distribution (E3 Eq. 4 measures the entropy at the sampling temperature). ``prompt_perplexity`` is PREPO's
P_i = exp(-mean_t log pi(x_t | x_<t)) over a prompt's non-pad tokens (one forward pass, tau = 1).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def sample(model, prompts: torch.Tensor, max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
           generator: Optional[torch.Generator] = None, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (tokens [B, T], mask [B, T] float): mask is 1 up to and including each row's first eos."""
    from transformers.cache_utils import DynamicCache

    if not greedy and not temperature > 0:
        raise ValueError(f"sampling temperature must be > 0, got {temperature}")
    bsz = prompts.shape[0]
    tokens = torch.full((bsz, max_new_tokens), pad_id, dtype=torch.long, device=prompts.device)
    done = torch.zeros(bsz, dtype=torch.bool, device=prompts.device)
    out = model(input_ids=prompts, past_key_values=DynamicCache(), use_cache=True)
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens[:, t] = nxt
        done |= nxt == eos_id
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
    return tokens, response_mask(tokens, eos_id)


def response_mask(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 for every position up to and including the first eos (all positions when there is none)."""
    is_eos = (tokens == eos_id).long()
    before = torch.cumsum(is_eos, dim=1) - is_eos  # eos seen strictly before this position
    return (before == 0).float()


def response_logprobs(model, prompts: torch.Tensor, tokens: torch.Tensor, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi_tau(y_t), H_t), both [B, T]; gradients flow through log-probs, entropy is detached."""
    width = prompts.shape[1]
    seq = torch.cat([prompts, tokens], dim=1)
    logits = model(input_ids=seq[:, :-1]).logits[:, width - 1:].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, tokens[:, :, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@torch.no_grad()
def prompt_perplexity(model, prompts: torch.Tensor, pad_id: int) -> np.ndarray:
    """PREPO's per-prompt perplexity under the current policy over the non-pad prompt tokens."""
    logits = model(input_ids=prompts[:, :-1]).logits.float()
    target = prompts[:, 1:]
    logp = F.log_softmax(logits, dim=-1).gather(-1, target[:, :, None]).squeeze(-1)
    mask = (target != pad_id).float()
    mean_nll = -(logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.exp(mean_nll).cpu().numpy().astype(np.float64)
