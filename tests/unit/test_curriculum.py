"""PREPO perplexity-paced window: l(rho) = floor(rho * (|B| - K)) over candidates sorted by ascending perplexity."""

import json
import pickle

import numpy as np
import pytest

from e3.curriculum import OfflinePacer, PerplexityPacer, candidate_count, perplexity_window, window_start


def test_window_start_by_hand():
    assert window_start(50, 0.37, 10) == 14  # floor(0.37 * (50 - 10)) = floor(14.8)
    assert window_start(50, 0.0, 10) == 0
    assert window_start(50, 1.0, 10) == 40  # the last K
    assert window_start(50, 0.99, 10) == 39  # floor(39.6)
    assert window_start(50, -0.3, 10) == 0 and window_start(50, 1.7, 10) == 40  # rho clipped to [0, 1]
    with pytest.raises(ValueError, match="progress must be finite"):
        window_start(50, float("nan"), 10)


def test_window_by_hand():
    ppl = [5.0, 1.0, 4.0, 2.0, 3.0]  # ascending order of positions: 1, 3, 4, 2, 0
    assert perplexity_window(ppl, 0.0, 2).tolist() == [1, 3]  # lowest perplexity K
    assert perplexity_window(ppl, 0.5, 2).tolist() == [3, 4]  # start floor(0.5 * 3) = 1
    assert perplexity_window(ppl, 1.0, 2).tolist() == [2, 0]  # highest perplexity K
    assert perplexity_window(ppl, 0.3, 5).tolist() == [1, 3, 4, 2, 0]  # K = |B|: everything


def test_window_moves_from_easy_to_hard():
    rng = np.random.default_rng(0)
    ppl = rng.lognormal(1.0, 0.5, 200)
    means = [ppl[perplexity_window(ppl, rho, 40)].mean() for rho in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(means, means[1:]))
    lo = perplexity_window(ppl, 0.0, 40)
    hi = perplexity_window(ppl, 1.0, 40)
    assert ppl[lo].max() <= np.sort(ppl)[39] and ppl[hi].min() >= np.sort(ppl)[160]


def test_nan_perplexity_sorts_hardest():
    ppl = [float("nan"), 3.0, 1.0, 2.0]
    assert perplexity_window(ppl, 1.0, 1).tolist() == [0]
    assert perplexity_window(ppl, 0.0, 3).tolist() == [2, 3, 1]


@pytest.mark.parametrize("k", [0, 6, -1])
def test_invalid_window_size_raises(k):
    with pytest.raises(ValueError, match=f"window size k={k} must be in \\[1, 5\\]"):
        perplexity_window([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, k)


def test_candidate_count_gives_k_over_b_ratio():
    assert candidate_count(8, 0.2) == 40
    assert candidate_count(3, 0.2) == 15
    assert candidate_count(128, 1.0) == 128


def test_online_pacer_selects_paced_window():
    pacer = PerplexityPacer(batch_size=8, total_steps=11, window_ratio=0.2)  # rho = step / 10
    assert pacer.num_candidates == 40
    ppl = np.arange(40, 0, -1, dtype=float)  # position j has perplexity 40 - j: ascending order = 39, 38, ...
    assert sorted(pacer.select(ppl, 0).tolist()) == list(range(32, 40))  # the 8 lowest
    assert pacer.metrics()["curriculum/window_start"] == 0
    # step 5: rho = 0.5, start floor(0.5 * 32) = 16 -> sorted positions 16..23 = perplexities 17..24
    assert sorted(ppl[pacer.select(ppl, 5)].tolist()) == list(range(17, 25))
    assert pacer.metrics()["curriculum/window_start"] == 16
    assert pacer.metrics()["curriculum/ppl_mean"] == pytest.approx(20.5)
    assert sorted(pacer.select(ppl, 10).tolist()) == list(range(0, 8))  # the last step: the 8 highest
    with pytest.raises(ValueError, match="total_steps > 0"):
        PerplexityPacer(8, 0)


def test_last_step_window_ends_at_the_hardest_prompt():
    """Steps are counted 0 .. T-1 when a batch is chosen (completed steps): rho = step / (T - 1) reaches 1 at the
    last step, whose window is the K hardest prompts (rho = step / T would stop one position short)."""
    pacer = PerplexityPacer(batch_size=8, total_steps=10, window_ratio=0.2)
    ppl = np.arange(40, 0, -1, dtype=float)  # position j has perplexity 40 - j
    assert sorted(pacer.select(ppl, 9).tolist()) == list(range(0, 8))  # the 8 highest perplexities
    assert pacer.metrics()["curriculum/window_start"] == 32 and pacer.metrics()["curriculum/progress"] == 1.0
    offline = OfflinePacer(np.arange(100), np.arange(100, dtype=float), total_steps=10, window_ratio=0.2)
    assert set(offline.batch(9, 8).tolist()) <= set(range(80, 100))  # window of the 20 hardest
    assert offline.metrics()["curriculum/window_start"] == 80 and offline.metrics()["curriculum/progress"] == 1.0


def _offline(seed=0):
    rng = np.random.default_rng(42)
    indices = np.arange(100, 200)
    ppl = rng.uniform(1.0, 50.0, 100)
    return OfflinePacer(indices, ppl, total_steps=11, window_ratio=0.2, seed=seed), dict(zip(indices.tolist(), ppl))


def test_offline_pacer_windows_move_easy_to_hard():
    pacer, ppl_of = _offline()
    order = sorted(ppl_of, key=ppl_of.get)  # dataset indices by ascending perplexity
    w = 20  # max(batch 8, 0.2 * 100)
    prev_start = -1
    for step in range(11):
        batch = pacer.batch(step, 8)
        start = int(np.floor(step / 10 * (100 - w)))  # l(rho) with rho = step / (total_steps - 1)
        assert len(set(batch.tolist())) == 8
        assert set(batch.tolist()) <= set(order[start:start + w])
        assert pacer.metrics()["curriculum/window_start"] == start > prev_start
        prev_start = start
    assert set(pacer.batch(0, 8).tolist()) <= set(order[:20])
    assert set(pacer.batch(10, 8).tolist()) <= set(order[80:])


def test_offline_pacer_nan_hardest_and_bad_input():
    pacer = OfflinePacer([1, 2, 3, 4], [float("nan"), 1.0, 2.0, 3.0], total_steps=2, window_ratio=0.25)
    assert pacer.batch(2, 1).tolist() == [1]
    with pytest.raises(ValueError, match="one perplexity per index, got 3 and 2"):
        OfflinePacer([1, 2, 3], [1.0, 2.0], total_steps=2)
    with pytest.raises(ValueError, match="batch_size=5 > dataset size 4"):
        pacer.batch(0, 5)


@pytest.mark.parametrize("roundtrip", [lambda d: pickle.loads(pickle.dumps(d)), lambda d: json.loads(json.dumps(d))],
                         ids=["pickle", "json"])
def test_offline_pacer_state_round_trip(roundtrip):
    a, _ = _offline(seed=1)
    for step in range(3):
        a.batch(step, 8)
    b, _ = _offline(seed=77)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert [b.batch(s, 8).tolist() for s in range(3, 8)] == [a.batch(s, 8).tolist() for s in range(3, 8)]
