"""The local engine's start-up report: how hard the RL prompts are for the warm-started policy, measured.

E3's data (Liao et al. 2025, section 4; BENCHMARKS.md section 1) has a wide difficulty spread: of 15,888 questions,
27 % are never solved in 10 samples by the base model and 41 % always. The allocators and the temperature
controller act on exactly that spread, so a testbed for them must show it. Before RL starts, ``difficulty_report``
samples ``task.report_samples`` responses at T = 1 for every RL prompt and reports:

* the share of prompts never solved (0 of n), always solved (n of n) and mixed, overall and per level;
* the mean pass rate per level and the share of rollouts that would sit in mixed groups at uniform n;
* the work per answer: mean response length in tokens (eos included);
* sampling diversity: mean number of distinct final answers among the n samples of a prompt.

Sampling uses its own generator, so the report never changes training's random stream.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from e3.engines.local.sampling import sample

FinalAnswer = Callable[[str], str]


@torch.no_grad()
def difficulty_report(model, tok, rows: list, n: int, width: int, max_new: int, device, seed: int,
                      score_fn, final_answer: FinalAnswer = lambda r: r, chunk: int = 2048) -> dict:
    """Metrics ``task/*`` over ``rows`` from ``n`` samples per prompt at T = 1 (see the module docstring)."""
    model.eval()
    prompts = torch.from_numpy(tok.left_pad([r["prompt"] for r in rows], width)).repeat_interleave(n, dim=0)
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = np.empty(len(prompts))
    lengths = np.empty(len(prompts))
    finals: list[str] = []
    for s in range(0, len(prompts), chunk):
        toks, mask = sample(model, prompts[s:s + chunk].to(device), max_new, 1.0, tok.eos_id, tok.pad_id,
                            generator=gen)
        lengths[s:s + len(toks)] = mask.sum(1).cpu().numpy()
        for j, row in enumerate(toks.cpu().numpy()):
            text = tok.decode(row)
            finals.append(final_answer(text))
            correct[s + j] = score_fn(text, rows[(s + j) // n]["answer"])
    return summarise(correct.reshape(len(rows), n), lengths.reshape(len(rows), n),
                     np.array(finals, dtype=object).reshape(len(rows), n), [r.get("level", 0) for r in rows])


def summarise(correct: np.ndarray, lengths: np.ndarray, finals: np.ndarray, levels) -> dict:
    """The ``task/*`` metrics from [prompts, n] arrays of scores (0/1), response lengths and final answers."""
    n_prompts, n = correct.shape
    c = correct.sum(1)
    distinct = np.array([len(set(row)) for row in finals])
    levels = np.asarray(levels)
    out = {"task/report_samples": int(n), "task/prompts": int(n_prompts)}

    def stats(sel: np.ndarray, suffix: str) -> None:
        cs = c[sel]
        out[f"task/never_solved{suffix}"] = float(np.mean(cs == 0))
        out[f"task/always_solved{suffix}"] = float(np.mean(cs == n))
        out[f"task/pass_rate{suffix}"] = float(np.mean(cs / n))
        out[f"task/response_tokens{suffix}"] = float(lengths[sel].mean())
        out[f"task/distinct_answers{suffix}"] = float(distinct[sel].mean())

    stats(np.ones(n_prompts, dtype=bool), "")
    out["task/mixed"] = 1.0 - out["task/never_solved"] - out["task/always_solved"]
    for lv in np.unique(levels):
        stats(levels == lv, f"_level_{int(lv)}")
    return out


def format_report(m: dict, level_names: list[str]) -> str:
    """The report as printed at start-up: one line overall, one per level."""
    n = m["task/report_samples"]
    lines = [f"[e3] difficulty of the {m['task/prompts']} RL prompts for the warm start ({n} samples each at T=1): "
             f"never solved {m['task/never_solved']:.1%}, always solved {m['task/always_solved']:.1%}, mixed "
             f"{m['task/mixed']:.1%}; pass rate {m['task/pass_rate']:.3f}; {m['task/response_tokens']:.1f} response "
             f"tokens; {m['task/distinct_answers']:.2f} distinct final answers per prompt"]
    for i, name in enumerate(level_names):
        sfx = f"_level_{i}"
        if f"task/pass_rate{sfx}" in m:
            lines.append(f"[e3]   level {i} {name:>10}: pass rate {m['task/pass_rate' + sfx]:.3f}, never "
                         f"{m['task/never_solved' + sfx]:.1%}, always {m['task/always_solved' + sfx]:.1%}, "
                         f"{m['task/response_tokens' + sfx]:.1f} tokens, {m['task/distinct_answers' + sfx]:.2f} "
                         f"distinct answers")
    return "\n".join(lines)


def startup_report(engine) -> dict:
    """``difficulty_report`` of a ``LocalEngine``'s RL prompts with ``task.report_samples`` samples each, scored by
    its task's verifier (``Task.score``, ``Task.final_answer``)."""
    cfg = engine.cfg
    return difficulty_report(engine.model, engine.tok, engine.train_rows, int(cfg.task.report_samples),
                             cfg.task.prompt_width, cfg.task.max_new_tokens, engine.device,
                             cfg.seed * 1_000_003 + 999_983, engine.task.score, engine.task.final_answer)
