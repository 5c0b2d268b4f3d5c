"""A tiny causal LM built from a config (no hub download) and its cached supervised warm start.

The model is a ``transformers`` Llama (RMSNorm, rotary positions, SwiGLU, tied embeddings); at the default
hidden 128 x 4 layers x 4 heads over the 16-symbol vocabulary it has 1.05M parameters.

Warm start: next-token cross-entropy on demonstrations ``<left-padded prompt><answer><eos>`` drawn from the
task's ``demo`` pool (an equal share of every level in each batch), AdamW with linear warm-up and cosine decay.
The demonstrator may be noisy: with ``warm_start.demo_error_rate`` = q, each drawn demonstration's answer slips by
one of -10, -1, +1, +10 (a dropped carry or a wrong last digit). The warm-started policy then reproduces the slips
about q of the time on every problem; more supervised training on the same demonstrations cannot remove them, RL
with the exact verifier can: RLVR's headroom over imitation, in miniature.

The warm start is deterministic given its config and seed, so the result is cached under ``warm_start.cache_dir``
keyed by a hash of everything that determines it; tests, benchmarks and repeated runs load it instead of
retraining (written atomically: temp file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np
import torch

from e3.tasks.arithmetic import CharTokenizer
from e3.io import atomic_path

CACHE_VERSION = 1


def build_model(model_cfg: dict, vocab_size: int, max_len: int, seed: int) -> torch.nn.Module:
    """A Llama causal LM from a plain config dict (hidden_size, num_layers, num_heads, intermediate_size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(model_cfg["hidden_size"]),
        intermediate_size=int(model_cfg["intermediate_size"]),
        num_hidden_layers=int(model_cfg["num_layers"]),
        num_attention_heads=int(model_cfg["num_heads"]),
        num_key_value_heads=int(model_cfg["num_heads"]),
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=None, eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model


def sft_batch(tok: CharTokenizer, rows: list[dict], width: int, max_new: int) -> np.ndarray:
    """[B, width + max_new] token ids: left-padded prompt, answer, eos, right padding."""
    seq = np.full((len(rows), width + max_new), tok.pad_id, dtype=np.int64)
    seq[:, :width] = tok.left_pad([r["prompt"] for r in rows], width)
    for i, r in enumerate(rows):
        ans = tok.encode(r["answer"]) + [tok.eos_id]
        seq[i, width:width + len(ans)] = ans
    return seq


SLIPS = (-10, -1, 1, 10)


def slip_rows(rows: list[dict], delta: int, max_answer_len: int) -> list[dict]:
    """The rows with answer + delta (a carry or last-digit slip); kept correct where the slip would not fit."""
    out = []
    for r in rows:
        wrong = str(int(r["answer"]) + delta)
        out.append({**r, "answer": wrong if len(wrong) <= max_answer_len else r["answer"]})
    return out


def sft_loss(model, seq: torch.Tensor, width: int, prompt_weight: float, pad_id: int) -> torch.Tensor:
    """Next-token cross-entropy: mean over answer tokens + ``prompt_weight`` x the prompt tokens' (same denominator)."""
    logits = model(input_ids=seq[:, :-1]).logits.float()
    target = seq[:, 1:]
    weight = (target != pad_id).float()
    weight[:, : width - 1] *= float(prompt_weight)
    answer_tokens = (target[:, width - 1:] != pad_id).sum()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return (nll * weight).sum() / answer_tokens.clamp(min=1)


def cache_key(payload: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warm_start(model, tok: CharTokenizer, demo_rows: list[dict], ws: dict, width: int, max_new: int, seed: int,
               key_payload: dict, device: torch.device,
               progress: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """Train (or load from cache) the supervised warm start in place; returns {key, path, cached, seconds, loss}."""
    cache_dir = os.path.expanduser(ws.get("cache_dir") or os.path.join("~", ".cache", "e3", "warm_start"))
    key = cache_key(key_payload)
    path = os.path.join(cache_dir, f"warmstart-{key}.pt")
    if os.path.isfile(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        return {**blob["stats"], "key": key, "path": path, "cached": True}

    steps, bs = int(ws["steps"]), int(ws["batch_size"])
    lr, min_lr, warm = float(ws["lr"]), float(ws["min_lr"]), int(ws["warmup_steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(ws["weight_decay"]), betas=(0.9, 0.98))
    rng = np.random.default_rng(seed + 7919)
    all_seq = torch.from_numpy(sft_batch(tok, demo_rows, width, max_new))
    error_rate = float(ws.get("demo_error_rate", 0.0))
    slips = None if error_rate == 0 else torch.from_numpy(np.stack(
        [sft_batch(tok, slip_rows(demo_rows, d, max_new - 1), width, max_new) for d in SLIPS]))
    level = np.array([r.get("level", 0) for r in demo_rows])
    by_level = [np.flatnonzero(level == lv) for lv in np.unique(level)]  # equal share per level in every batch
    model.train()
    t0, cpu0, loss_ema = time.time(), time.process_time(), None
    for step in range(steps):
        frac = step / max(1, steps - 1)
        cur = lr * (step + 1) / warm if step < warm else min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = cur
        pick = np.concatenate([rows[rng.integers(0, len(rows), size=-(-bs // len(by_level)))] for rows in by_level])
        pick = torch.from_numpy(pick[:bs])
        seq = all_seq[pick]
        if error_rate > 0:  # the noisy demonstrator: each drawn demonstration slips with probability error_rate
            slip = torch.from_numpy(rng.random(bs) < error_rate)
            which = torch.from_numpy(rng.integers(0, len(SLIPS), size=bs))
            seq = torch.where(slip[:, None], slips[which, pick], seq)
        seq = seq.to(device)
        loss = sft_loss(model, seq, width, float(ws["prompt_loss"]), tok.pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if progress is not None:
            progress(step + 1, steps, loss_ema)
    stats = {"seconds": round(time.time() - t0, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
             "loss": round(float(loss_ema), 4), "steps": steps}
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "stats": stats}, tmp)
    return {**stats, "key": key, "path": path, "cached": False}
