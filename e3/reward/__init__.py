"""Math answer reward with verl's ``custom_reward_function`` signature: math-verify 0.9.0, bounded in time.

``score = 1.0`` iff ``math_verify.verify(gold, pred)`` holds (``acc`` = 1), else 0.0. The verdict, its options and
the last-``\\boxed{}`` rule are ``e3.reward.score`` (pure); this module runs it in ``e3.reward.pool`` (worker
processes with a per-call deadline) and counts what happened.

Time bound: math-verify's own ``signal.alarm`` timeout refuses to run off the main thread, and without it some inputs
take minutes and GBs (``\\boxed{2^{2^{2^{2^{2^{2}}}}}}`` against 5). So each call runs in a worker process with a
deadline of ``timeout`` (default ``DEFAULT_TIMEOUT`` = 5 s, from the moment its worker has the task); a worker past it
is killed. A call that timed out, raised or crashed scores 0 and is counted in ``reward_stats()``; it never raises on
data. Works from any thread, Ray actor or daemonic process. Each worker's address space is capped at
``$E3_REWARD_WORKER_MEMORY_MB`` (default 4096; 0 = no cap); ``workers`` defaults to ``os.cpu_count()``.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from e3.reward import pool as reward_pool
from e3.reward.score import MAX_RESPONSE_CHARS, VerifyOptions, as_golds, as_text

DEFAULT_TIMEOUT = 5.0
TARGET, WARM_UP = "e3.reward.score:score_task", "e3.reward.score:warm_up"
_STAT_KEYS = ("calls", "correct", "timeouts", "errors", "crashes", "gold_unparsed")
_STATS_LOCK = threading.Lock()
_STATS = {**dict.fromkeys(_STAT_KEYS, 0), "slowest_s": 0.0}


def _pool(workers: int | None) -> reward_pool.Pool:
    return reward_pool.get_pool(TARGET, WARM_UP, int(os.environ.get("E3_REWARD_WORKER_MEMORY_MB", "4096")), workers)


def shutdown() -> None:
    """Stop the reward workers and their zygote (also run at exit); a later call starts a new pool."""
    reward_pool.shutdown()


def reward_stats() -> dict:
    """Counters of this process since start or ``reset_reward_stats()``: ``calls``, ``correct``, ``timeouts``
    (worker killed at the deadline), ``errors`` (exception inside math-verify), ``crashes`` (worker died), all three
    scored 0; ``gold_unparsed`` (math-verify found nothing in the ground truth), ``workers_started``,
    ``zygotes_started`` (of the pool's lifetime), ``slowest_s`` (longest call, including any wait for a worker)."""
    pools = [p for p in reward_pool.existing_pools() if p.target == TARGET]
    with _STATS_LOCK:
        out = dict(_STATS)
    for key in ("workers_started", "zygotes_started"):
        out[key] = sum(p.stats[key] for p in pools)
    return out


def reset_reward_stats() -> None:
    with _STATS_LOCK:
        _STATS.update({**dict.fromkeys(_STAT_KEYS, 0), "slowest_s": 0.0})


# --------------------------------------------------------------------------------------- public API
def _bound(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"e3.reward: timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _score(pool: reward_pool.Pool, golds: list[str], pred: str, opts: VerifyOptions, timeout: float) -> dict:
    start = time.monotonic()
    status, result = pool.run((golds, pred[-MAX_RESPONSE_CHARS:], opts), timeout)
    elapsed = time.monotonic() - start
    ok, gold_ok = result if status == "ok" else (False, True)
    ok = bool(ok) and status == "ok"
    with _STATS_LOCK:
        s = _STATS
        s["calls"] += 1
        s["correct"] += ok
        s["timeouts"] += status == "timeout"
        s["errors"] += status == "error"
        s["crashes"] += status == "crash"
        s["gold_unparsed"] += status == "ok" and not gold_ok
        s["slowest_s"] = max(s["slowest_s"], elapsed)
    return {"score": 1.0 if ok else 0.0, "acc": int(ok), "timeout": int(status == "timeout"),
            "error": int(status in ("error", "crash"))}


def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *,
                  timeout: float = DEFAULT_TIMEOUT, workers: int | None = None, **kwargs) -> dict:
    """verl's ``reward.custom_reward_function``: ``{"score": 1.0 | 0.0, "acc": 1 | 0}``; never raises on data.

    ``timeout`` / ``workers`` bound the call and the pool (config ``reward.timeout`` / ``reward.workers``, or
    verl's ``reward_kwargs``); keyword arguments named like a field of ``e3.reward.score.VerifyOptions`` are those
    options (math-verify's, and ``last_boxed=True``: parse only the last complete ``\\boxed{...}``). Other keyword
    arguments verl passes (e.g. ``reward_router_address``) are ignored, and so are ``data_source``/``extra_info``.
    Bad options raise ``ValueError``.
    """
    timeout, opts = _bound(timeout), VerifyOptions.among(kwargs)
    result = _score(_pool(workers), as_golds(ground_truth), as_text(solution_str), opts, timeout)
    return {"score": result["score"], "acc": result["acc"]}


def _item(i: int, item) -> tuple[str, list[str]]:
    if isinstance(item, dict):
        for field in ("solution_str", "ground_truth"):
            if field not in item:
                raise ValueError(f"e3.reward.score_batch: item {i}: missing field {field!r}")
        return as_text(item["solution_str"]), as_golds(item["ground_truth"])
    if isinstance(item, (tuple, list)) and 3 <= len(item) <= 4:
        return as_text(item[1]), as_golds(item[2])
    raise ValueError(f"e3.reward.score_batch: item {i}: expected a dict with 'solution_str' and 'ground_truth' or "
                     f"a tuple (data_source, solution_str, ground_truth[, extra_info]), got {type(item).__name__}")


def score_batch(items, timeout: float = DEFAULT_TIMEOUT, workers: int | None = None, **options) -> list[dict]:
    """Score ``(data_source, solution_str, ground_truth[, extra_info])`` items (dicts or tuples) in parallel.

    ``workers`` processes (default: all cores), each item bounded by ``timeout``, order preserved. Each result is
    ``{"score", "acc", "timeout": 0|1, "error": 0|1}``. A malformed item raises ``ValueError`` naming it before any
    work starts; ``options`` are ``VerifyOptions``' fields, as for ``compute_score``.
    """
    timeout, opts = _bound(timeout), VerifyOptions(**options)
    work = [_item(i, it) for i, it in enumerate(items)]
    if not work:
        return []
    n = max(1, int(workers or os.cpu_count() or 1))
    pool = _pool(n)
    with ThreadPoolExecutor(max_workers=min(n, len(work)), thread_name_prefix="e3-reward") as ex:
        return list(ex.map(lambda w: _score(pool, w[1], w[0], opts, timeout), work))
