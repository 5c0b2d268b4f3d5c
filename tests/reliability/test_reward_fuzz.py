"""Reward fuzzing, fast version (``bench/reliability.py`` runs 10,000 of the same generator's inputs):
no exception, every call back within the per-call bound, through the batch scorer and through ``compute_score``
called from a non-main thread."""

import threading
import time

from fuzz_inputs import KINDS, fuzz_inputs

from e3.reward import compute_score, reset_reward_stats, reward_stats, score_batch

TIMEOUT = 0.5
SLACK = 1.0  # seconds past the timeout allowed for the kill and the reply on a busy 2-core machine


def test_generator_is_seeded_and_covers_every_kind():
    a, b = fuzz_inputs(44, seed=3), fuzz_inputs(44, seed=3)
    assert a == b and a != fuzz_inputs(44, seed=4)
    assert {x["kind"] for x in a} == set(KINDS)
    assert max(len(x["solution_str"] or "") for x in fuzz_inputs(len(KINDS) * 4, seed=0)) >= 100_000


def test_fuzzed_inputs_never_raise_and_every_call_is_bounded():
    items = fuzz_inputs(200, seed=7)
    compute_score("fuzz", "\\boxed{1}", "1")  # start the pool outside the timed part
    reset_reward_stats()
    got = score_batch(items, timeout=TIMEOUT, workers=2)
    stats = reward_stats()
    assert len(got) == len(items)
    assert all(set(r) == {"score", "acc", "timeout", "error"} and r["score"] in (0.0, 1.0) for r in got)
    assert stats["calls"] == len(items) and stats["crashes"] == 0 and stats["errors"] == 0
    assert stats["timeouts"] == sum(r["timeout"] for r in got) >= 1  # the bound was exercised
    assert stats["slowest_s"] <= TIMEOUT + SLACK, stats

    # the same kind of inputs one by one from a worker thread (as verl's executor threads call it)
    sample = fuzz_inputs(len(KINDS) * 2, seed=8)
    times, errors = [], []

    def run():
        for it in sample:
            t0 = time.monotonic()
            try:
                out = compute_score(it["data_source"], it["solution_str"], it["ground_truth"], it["extra_info"],
                                    timeout=TIMEOUT)
                assert out["acc"] in (0, 1)
            except BaseException as e:  # noqa: BLE001 - any exception is the failure being tested for
                errors.append(repr(e))
            times.append(time.monotonic() - t0)

    t = threading.Thread(target=run)
    t.start()
    t.join(len(sample) * (TIMEOUT + SLACK) + 30)
    assert not t.is_alive() and errors == []
    assert len(times) == len(sample) and max(times) <= TIMEOUT + SLACK, max(times)
