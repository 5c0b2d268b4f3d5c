"""The supervised warm start of the tiny runs: one optimisation loop, one loss, one cache key.

Next-token cross-entropy on a task's demonstrations (the ``demo`` pool), AdamW (betas 0.9 / 0.98, gradient norm
clipped at 1) under the learning-rate line of ``warm_start_lr``, every batch an equal share of every level (the
local engine) or drawn uniformly (the verl CPU run).
The demonstrator may be noisy: with ``demo_error_rate`` = q each drawn demonstration is replaced by one of the
task's slipped variants (``Task.demo_variants``: for arithmetic its answer off by -10, -1, +1 or +10, a dropped
carry or a wrong last digit). The warm-started policy then reproduces the slips about q of the time on every
problem; more supervised training on the same demonstrations cannot remove them, RL with the exact verifier can:
RLVR's headroom over imitation, in miniature.

The caller lays the demonstrations out (``Targets``: token rows, a weight per next-token target and the count the
loss is averaged over):

- ``left_padded`` (the local engine): ``<left-padded prompt><answer><eos>`` at fixed widths, the prompt's targets
  weighted ``warm_start.prompt_loss``;
- ``unpadded`` (verl's layout, the CPU run's model): ``<prompt><answer><eos>`` right-padded, loss on answer + eos.

The loss is sum(weight x token NLL) / count. ``warm_start`` is deterministic given its inputs and seed, so the
local engine caches it under ``warm_start.cache_dir`` keyed by ``cache_key`` of everything that determines it
(written atomically); the verl CPU run keys its model folder by the same ``cache_key``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from e3.io import atomic_path
from e3.tasks.vocab import CharTokenizer

Progress = Callable[[int, int, float], None]


@dataclass
class Targets:
    """Demonstrations laid out for next-token training; variant 0 is the demonstrator's own text, variants 1.. what
    it writes when it slips (``Task.demo_variants``), row for row."""

    tokens: torch.Tensor
    """[V, N, L] token ids."""
    weight: torch.Tensor
    """[V, N, L - 1] float weight of each next-token target ``tokens[..., 1:]``."""
    count: torch.Tensor
    """[V, N] int64: how many targets of the row the loss is averaged over."""


def left_padded(tok: CharTokenizer, row_sets: list[list[dict]], width: int, max_new: int,
                prompt_loss: float) -> Targets:
    """The local engine's layout: ``width`` left-padded prompt tokens, answer, eos, right padding to ``width +
    max_new``; weight 1 on answer and eos, ``prompt_loss`` on the prompt, averaged over answer and eos."""
    seq = np.full((len(row_sets), len(row_sets[0]), width + max_new), tok.pad_id, dtype=np.int64)
    for v, rows in enumerate(row_sets):
        seq[v, :, :width] = tok.left_pad([r["prompt"] for r in rows], width)
        for i, r in enumerate(rows):
            ans = tok.encode(r["answer"]) + [tok.eos_id]
            seq[v, i, width:width + len(ans)] = ans
    tokens = torch.from_numpy(seq)
    target = tokens[..., 1:]
    weight = (target != tok.pad_id).float()
    weight[..., : width - 1] *= float(prompt_loss)
    return Targets(tokens, weight, (target[..., width - 1:] != tok.pad_id).sum(-1))


def unpadded(tok: CharTokenizer, row_sets: list[list[dict]]) -> Targets:
    """verl's layout: prompt, answer, eos from position 0, right-padded; loss on answer and eos only."""
    seqs = [[(tok.encode(r["prompt"]), tok.encode(r["answer"]) + [tok.eos_id]) for r in rows] for rows in row_sets]
    length = max(len(p) + len(a) for rows in seqs for p, a in rows)
    tokens = torch.full((len(seqs), len(seqs[0]), length), tok.pad_id, dtype=torch.long)
    weight = torch.zeros((len(seqs), len(seqs[0]), length - 1))
    count = torch.zeros((len(seqs), len(seqs[0])), dtype=torch.long)
    for v, rows in enumerate(seqs):
        for i, (p, a) in enumerate(rows):
            tokens[v, i, : len(p) + len(a)] = torch.tensor(p + a)
            weight[v, i, len(p) - 1: len(p) + len(a) - 1] = 1.0  # the targets that are answer or eos tokens
            count[v, i] = len(a)
    return Targets(tokens, weight, count)


def warm_start_lr(step: int, steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``steps``: ``lr * (step + 1) / warmup_steps``
    during the warm-up, then ``min_lr + (lr - min_lr) * (1 + cos(pi * step / (steps - 1))) / 2``.

    Not transformers' ``get_cosine_with_min_lr_schedule_with_warmup``: that warms up from 0 (``lr * step /
    warmup``) and starts its cosine at the end of the warm-up, while this one reaches ``lr`` at step ``warmup - 1``
    and runs its cosine over the whole run from step 0 (at the end of the warm-up it is already part way down). No
    warm-up length or step offset makes the two agree; switching would change every warm start, and with it every
    documented result of the local engine.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    frac = step / max(1, steps - 1)  # (computed first: the same floating-point rounding as every cached warm start)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def next_token_loss(model, tokens: torch.Tensor, weight: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """sum(weight x next-token NLL) / count over a batch of ``Targets`` rows."""
    logits = model(input_ids=tokens[:, :-1]).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return (nll * weight).sum() / count.sum().clamp(min=1)


def train(model, targets: Targets, levels, ws: Mapping, seed: int, device: torch.device,
          progress: Optional[Progress] = None) -> dict:
    """Train ``model`` in place on ``targets``; returns {seconds, cpu_seconds, loss, steps}.

    ``levels``: the level of each demonstration, for an equal share of each level in every batch (None: batches
    drawn uniformly over all demonstrations). ``ws``: ``steps``,
    ``batch_size``, ``lr``, ``min_lr``, ``warmup_steps``, and optionally ``weight_decay`` and ``demo_error_rate``
    (default 0). ``progress(step, steps, loss_ema)`` after every step.
    """
    steps, bs = int(ws["steps"]), int(ws["batch_size"])
    lr, min_lr, warm = float(ws["lr"]), float(ws["min_lr"]), int(ws["warmup_steps"])
    error_rate = float(ws.get("demo_error_rate", 0.0))
    n_slips = targets.tokens.shape[0] - 1
    if error_rate > 0 and n_slips == 0:
        raise ValueError(f"warm_start.demo_error_rate={error_rate} needs slipped demonstrations; none were given")
    # nominal lr 1: LambdaLR's factor is then the learning rate itself, exactly (base_lr * factor would round)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=float(ws.get("weight_decay", 0.0)),
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warm_start_lr(s, steps, lr, min_lr, warm))
    rng = np.random.default_rng(seed + 7919)
    level = np.zeros(targets.tokens.shape[1], dtype=np.int64) if levels is None else np.asarray(levels)
    by_level = [np.flatnonzero(level == lv) for lv in np.unique(level)]
    model.train()
    t0, cpu0, loss_ema = time.time(), time.process_time(), None
    for step in range(steps):
        pick = np.concatenate([rows[rng.integers(0, len(rows), size=-(-bs // len(by_level)))] for rows in by_level])
        pick = torch.from_numpy(pick[:bs])
        variant = torch.zeros(len(pick), dtype=torch.long)
        if error_rate > 0:  # the noisy demonstrator: each drawn demonstration slips with probability error_rate
            slip = torch.from_numpy(rng.random(bs) < error_rate)
            which = torch.from_numpy(rng.integers(0, n_slips, size=bs))
            variant = torch.where(slip, which + 1, variant)
        batch = (targets.tokens[variant, pick], targets.weight[variant, pick], targets.count[variant, pick])
        loss = next_token_loss(model, *(x.to(device) for x in batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if progress is not None:
            progress(step + 1, steps, loss_ema)
    return {"seconds": round(time.time() - t0, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
            "loss": round(float("nan") if loss_ema is None else loss_ema, 4), "steps": steps}


def cache_key(payload: dict) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as sorted JSON: the key of a cached warm start."""
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


CACHE_VERSION = 1


def warm_start(model, make_targets: Callable[[], Targets], levels, ws: Mapping, seed: int, device: torch.device,
               payload: dict, progress: Optional[Progress] = None) -> dict:
    """``train`` (or load from ``ws["cache_dir"]``, default ``~/.cache/e3/warm_start``) in place; the cache is keyed
    by ``payload`` (everything that determines the result). Returns {key, path, cached, seconds, loss, ...}."""
    cache_dir = os.path.expanduser(ws.get("cache_dir") or os.path.join("~", ".cache", "e3", "warm_start"))
    key = cache_key({"v": CACHE_VERSION, **payload})
    path = os.path.join(cache_dir, f"warmstart-{key}.pt")
    if os.path.isfile(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        return {**blob["stats"], "key": key, "path": path, "cached": True}
    stats = train(model, make_targets(), levels, ws, seed, device, progress)
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "stats": stats}, tmp)
    return {**stats, "key": key, "path": path, "cached": False}
