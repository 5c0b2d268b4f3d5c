"""Validation of the local engine on held-out problems, and the run's one-paragraph summary.

``evaluate`` reports the mean over ``val.n_samples`` samples per problem at ``val.temperature`` (sampled pass@1) and
the greedy accuracy, each with its standard error over problems (sample std / sqrt(problems)) and per level, and
``val/pass@K`` for every K of ``val.pass_k`` up to ``val.n_samples``: the unbiased estimator of Chen et al. 2021
(Eq. 1, ``e3.metrics.pass_at_k``) per problem, averaged over problems, with the same standard error and per level. Given
step 0's per-problem scores it adds the paired change ``*_delta`` and its standard error: the same problems are
scored before and after, so the problem-to-problem spread cancels and a few points are resolvable.
Sampling uses its own generator seeded by (run seed, step), so validating never perturbs training's random stream.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from e3.engines.local.sampling import sample
from e3.metrics import pass_at_k
from e3.tasks.arithmetic import score
from e3.tasks.vocab import CharTokenizer


@torch.no_grad()
def evaluate(model, tok: CharTokenizer, rows: list, cfg: DictConfig, device, seed: int,
             baseline: Optional[dict] = None, chunk: int = 2048, score_fn=score) -> tuple[dict, dict]:
    """Held-out accuracy: mean over ``val.n_samples`` samples at ``val.temperature`` (+ greedy), with std errors.

    Returns (metrics, per-problem scores). With ``baseline`` (step 0's per-problem scores) the metrics include the
    paired change ``*_delta`` and its standard error, far tighter than comparing two unpaired means.
    """
    model.eval()
    width, max_new = cfg.task.prompt_width, cfg.task.max_new_tokens
    prompts = torch.from_numpy(tok.left_pad([r["prompt"] for r in rows], width))
    answers = [r["answer"] for r in rows]
    levels = np.array([r.get("level", 0) for r in rows])
    gen = torch.Generator(device=device).manual_seed(seed)

    def correct(n_rep: int, greedy: bool) -> np.ndarray:
        """Correct samples per problem, out of ``n_rep``."""
        rep = prompts.repeat_interleave(n_rep, dim=0)
        out = np.empty(len(rep))
        for s in range(0, len(rep), chunk):
            toks, _ = sample(model, rep[s:s + chunk].to(device), max_new, float(cfg.val.temperature), tok.eos_id,
                             tok.pad_id, generator=gen, greedy=greedy)
            for j, row in enumerate(toks.cpu().numpy()):
                out[s + j] = score_fn(tok.decode(row), answers[(s + j) // n_rep])
        return out.reshape(len(rows), n_rep).sum(1)

    def summary(per_problem: np.ndarray, name: str) -> dict:
        out = {name: float(per_problem.mean()), f"{name}_stderr": _stderr(per_problem)}
        for lv in np.unique(levels):
            out[f"{name}_level_{int(lv)}"] = float(per_problem[levels == lv].mean())
        if baseline is not None and name in baseline:  # paired change against step 0 on the same problems
            diff = per_problem - np.asarray(baseline[name])
            out.update({f"{name}_delta": float(diff.mean()), f"{name}_delta_stderr": _stderr(diff)})
        per[name] = per_problem.tolist()
        return out

    n, per = int(cfg.val.n_samples), {}
    c = correct(n, False)
    res = {"val/problems": len(rows), "val/samples": len(rows) * n, **summary(c / n, "val/accuracy")}
    for k in pass_ks(cfg, n):  # unbiased pass@k per problem (Chen et al. 2021), averaged with its s.e.
        res.update(summary(np.asarray(pass_at_k(np.full(len(rows), n), c, k), dtype=float), f"val/pass@{k}"))
    if cfg.val.greedy:
        res.update(summary(correct(1, True), "val/accuracy_greedy"))
    return res, per


def pass_ks(cfg: DictConfig, n: int) -> list[int]:
    """The configured ``val.pass_k`` values that ``n`` samples per problem can estimate (k <= n)."""
    return [int(k) for k in (cfg.val.get("pass_k") or []) if int(k) <= n]


def _stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summary(metrics: list, cfg: DictConfig) -> str:
    """Validation start -> end (with the paired change), temperature range and budget range of the run."""
    vals = [m for m in metrics if "val/accuracy" in m]
    steps = [m for m in metrics if "rollout/n_hist" in m]
    lines = []
    if len(vals) >= 2:
        a, b = vals[0], vals[-1]
        lines.append(f"[e3] val accuracy (mean of {cfg.val.n_samples} samples at T={cfg.val.temperature}, "
                     f"{a['val/problems']} held-out problems): step {a['step']} {a['val/accuracy']:.4f} +- "
                     f"{a['val/accuracy_stderr']:.4f} -> step {b['step']} {b['val/accuracy']:.4f} +- "
                     f"{b['val/accuracy_stderr']:.4f}; paired change {b.get('val/accuracy_delta', float('nan')):+.4f}"
                     f" +- {b.get('val/accuracy_delta_stderr', float('nan')):.4f}")
        if "val/accuracy_greedy" in a and "val/accuracy_greedy" in b:
            lines.append(f"[e3] greedy val accuracy {a['val/accuracy_greedy']:.4f} -> {b['val/accuracy_greedy']:.4f}"
                         f" (paired change {b.get('val/accuracy_greedy_delta', float('nan')):+.4f} +- "
                         f"{b.get('val/accuracy_greedy_delta_stderr', float('nan')):.4f})")
    if steps:
        taus = [m["rollout/temperature"] for m in steps]
        ns = [x for m in steps for x in m["rollout/n_hist"]]
        lines.append(f"[e3] temperature {min(taus):.3f}..{max(taus):.3f} (last {taus[-1]:.3f}); budgets n_i {min(ns)}.."
                     f"{max(ns)}, sum n per step {sorted({m['rollout/n_total'] for m in steps})}")
    return "\n".join(lines)
