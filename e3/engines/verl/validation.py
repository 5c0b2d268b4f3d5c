"""E3's validation metrics on top of verl's: ``val/accuracy`` and the unbiased ``val/pass@K``.

verl 0.9.1's validation reports ``best@N``, a bootstrap with replacement over the N samples of a problem, which reads
low (1 correct of 4 gives 0.684, not 1). E3's headline numbers are pass@k, so with ``val_kwargs.n > 1`` sampled
samples per problem this module logs, for each K of ``e3.validation.pass_k`` up to n, the unbiased estimator of Chen
et al. 2021 (Eq. 1; ``e3.metrics.pass_at_k``): pass@K = 1 - C(n - c, K) / C(n, K) per problem, averaged over the
problems — ``val/pass@K`` over all of them (with ``val/pass@K_stderr``, the sample std over problems /
sqrt(problems)), ``val/pass@K/<data_source>`` per data source; the names of the local engine
(``e3.engines.local.evaluate``).

A problem is the group of samples sharing a ``sample_uids`` entry (verl's validation draws one uid per prompt and
repeats it over the prompt's n sessions), within its data source. A sample is correct when its ``acc`` (what
``e3.reward.compute_score`` and the tiny task's verifier return) is > 0, or, where a sample has no ``acc``, when its
``reward`` is > 0. A problem has n = ``val_kwargs.n`` samples (or verl's expected count of it, when given): a session
that failed and left no sample counts as wrong, as verl's own ``acc`` counts it.

When the samples are sampled: verl's agent loop (v1 and the legacy one) validates at ``val_kwargs.temperature``
and never reads ``val_kwargs.do_sample``; temperature 0 is greedy. So pass@K for K > 1 is logged when n > 1 and the
temperature is > 0. Greedy validation with n > 1 decodes the same answer n times, and pass@K would restate the
accuracy under another name: only ``val/pass@1`` (= the mean accuracy) is logged then, with a warning that n - 1
decodes per problem are wasted. ``val_kwargs.do_sample=false`` with a temperature > 0 still samples (verl ignores the
flag here) and pass@K is logged, with a warning naming the contradiction.

``val/problems``, ``val/samples`` and ``val/temperature`` record what was validated, so a reader of
``metrics.jsonl`` (``e3.engines.verl.cpu.tiny.summary``) can say how the accuracy was measured.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
from omegaconf import OmegaConf

from e3.schema import E3Config
from e3.metrics import pass_at_k

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def validation_metrics(config, data_sources, sample_uids, reward_extra_infos_dict,
                       expected_counts: Optional[dict] = None) -> dict[str, float]:
    """Metrics E3 adds to verl's ``_val_metrics_update`` output (same names as the local engine's).

    ``config`` is the composed verl config; the other three are what verl's ``_validate`` collected, one entry per
    sample. ``expected_counts`` is verl's ``expected_acc_counts`` (``{(data_source, uid): n}``); without it every
    problem expects ``val_kwargs.n`` samples.
    """
    out: dict[str, float] = {}
    values = reward_extra_infos_dict.get("acc") or reward_extra_infos_dict.get("reward") or []
    values = [float(v) for v in values if v is not None]
    if values:
        out["val/accuracy"] = float(np.mean(values))
    if not len(data_sources):
        return out
    n, temperature, do_sample = sampling(config)
    sources, n_per, c_per = problems(data_sources, sample_uids, reward_extra_infos_dict, n, expected_counts)
    out.update({"val/problems": len(n_per), "val/samples": len(data_sources), "val/temperature": temperature})
    sampled = temperature > 0
    if int(n_per.min()) > 1:
        _explain(sampled, do_sample, n, temperature)
    ks = sorted({int(k) for k in pass_ks(config)})
    if not sampled:
        ks = [k for k in ks if k == 1]
    for k in ks:
        if k > int(n_per.min()):
            continue
        per_problem = np.asarray(pass_at_k(n_per, c_per, k), dtype=np.float64).reshape(-1)
        out[f"val/pass@{k}"] = float(per_problem.mean())
        if per_problem.size > 1:
            out[f"val/pass@{k}_stderr"] = float(per_problem.std(ddof=1) / math.sqrt(per_problem.size))
        for source in dict.fromkeys(sources):
            mask = sources == source
            out[f"val/pass@{k}/{source}"] = float(per_problem[mask].mean())
    return out


def sampling(config) -> tuple[int, float, bool]:
    """``(val_kwargs.n, val_kwargs.temperature, val_kwargs.do_sample)`` of a composed verl config (verl's
    defaults 1, 0.0, false where a key is absent)."""
    def get(key, default):
        value = OmegaConf.select(config, f"actor_rollout_ref.rollout.val_kwargs.{key}", default=None)
        return default if value is None else value

    return int(get("n", 1)), float(get("temperature", 0.0)), bool(get("do_sample", False))


def pass_ks(config) -> list[int]:
    """``e3.validation.pass_k`` of a composed verl config, checked by ``E3Config`` (its default where absent)."""
    section = OmegaConf.select(config, "e3.validation", default=None)
    if section is not None and OmegaConf.is_config(section):
        section = OmegaConf.to_container(section, resolve=True)
    return list(E3Config.from_dict({"validation": section}).validation.pass_k)


def problems(data_sources, sample_uids, infos: dict, n: int, expected_counts: Optional[dict] = None):
    """Per problem (data source, uid), in order of first appearance: ``(data_source, samples n_i, correct c_i)``
    as arrays. n_i is the expected count (at least the samples seen); c_i counts samples with acc (else reward) > 0.
    """
    size = len(data_sources)
    if len(sample_uids) != size:
        raise ValueError(f"validation: {size} data sources but {len(sample_uids)} sample uids")
    correct = is_correct(infos, size)
    index: dict[tuple[str, str], int] = {}
    seen: list[int] = []
    hits: list[int] = []
    for source, uid, ok in zip(data_sources, sample_uids, correct):
        key = (str(source), str(uid))
        if key not in index:
            index[key] = len(seen)
            seen.append(0)
            hits.append(0)
        seen[index[key]] += 1
        hits[index[key]] += int(ok)
    expected = {(str(s), str(u)): int(v) for (s, u), v in (expected_counts or {}).items()}
    keys = list(index)
    n_per = np.array([max(expected.get(key, n), seen[index[key]]) for key in keys], dtype=np.int64)
    return np.array([s for s, _ in keys], dtype=object), n_per, np.array(hits, dtype=np.int64)


def is_correct(infos: dict, size: int) -> np.ndarray:
    """One bool per sample: ``acc > 0``, or ``reward > 0`` where the sample has no ``acc``."""
    for key in ("acc", "reward"):
        if key in infos and len(infos[key]) != size:
            raise ValueError(f"validation: {size} samples but {len(infos[key])} values of {key!r}")
    acc, reward = (infos.get(key) for key in ("acc", "reward"))
    acc = [None] * size if acc is None or len(acc) == 0 else acc
    reward = [None] * size if reward is None or len(reward) == 0 else reward
    out = np.zeros(size, dtype=bool)
    for i, (a, r) in enumerate(zip(acc, reward)):
        value = a if a is not None else r
        if value is None:
            raise ValueError(f"validation: sample {i} has neither an 'acc' nor a 'reward' value")
        out[i] = float(value) > 0
    return out


def _explain(sampled: bool, do_sample: bool, n: int, temperature: float) -> None:
    if not sampled:
        _warn_once(f"actor_rollout_ref.rollout.val_kwargs.n={n} with greedy validation (val_kwargs.temperature="
                   f"{temperature}): every sample of a problem is the same decode, so only val/pass@1 (the accuracy) "
                   f"is logged; for pass@K set val_kwargs.temperature > 0 and val_kwargs.do_sample=true, or n=1")
    elif not do_sample:
        _warn_once(f"actor_rollout_ref.rollout.val_kwargs.do_sample=false but val_kwargs.temperature={temperature}: "
                   f"verl's agent loop samples validation at that temperature anyway, so val/pass@K is logged; set "
                   f"do_sample=true to say so, or temperature=0 for greedy")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
