"""E3 Algorithm 1 (difficulty-aware rollout budgets), its fixes, the epoch schedule and the difficulty tracker."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from e3.allocation.allocator import DifficultyTracker, RolloutAllocator, RolloutSchedule
from e3.allocation.e3 import allocate_rollouts
from e3.allocation.uniform import uniform_rollouts
from e3.schema import E3Config


def authors_alg1(k, total, n_min):
    """E3 Algorithm 1 as printed (no cap in steps 1-2): the oracle for the cases where no cap binds.

    1. everybody gets n_min; R = total - B*n_min;  2. + floor(R*k_i/sum k) (sum k = 0: spread evenly);
    3. the leftover one at a time in descending k (ties: batch order).
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.full(k.size, n_min, dtype=np.int64)
    r = total - k.size * n_min
    w = k if k.sum() > 0 else np.ones_like(k)
    n += np.floor(r * w / w.sum()).astype(np.int64)
    left = total - int(n.sum())
    for i in np.argsort(-k, kind="stable")[:left]:
        n[i] += 1
    return n


def check_invariants(n, k, total, n_min, n_max):
    k = np.asarray(k, dtype=np.float64)
    assert n.dtype.kind == "i"
    assert n.shape == k.shape
    assert int(n.sum()) == total
    assert n.min() >= n_min and n.max() <= n_max
    assert n.min() >= 2
    # harder never gets fewer: k_i > k_j  =>  n_i >= n_j
    harder = k[:, None] > k[None, :]
    assert not np.any(harder & (n[:, None] < n[None, :])), (k, n)


# ---------------------------------------------------------------- hand examples of Alg. 1


def test_alg1_hand_example_four_prompts():
    # k = [.2, .4, .6, .8], N = 32, n_min = 4: R = 32 - 4*4 = 16, sum k = 2.0
    # R*k/sum k = [1.6, 3.2, 4.8, 6.4] -> floors [1, 3, 4, 6] (sum 14), leftover 2 -> k=.8 then k=.6
    # n = 4 + [1, 3, 4+1, 6+1] = [5, 7, 9, 11]
    n = allocate_rollouts([0.2, 0.4, 0.6, 0.8], total=32, n_min=4, n_max=12)
    assert n.tolist() == [5, 7, 9, 11]


def test_alg1_hand_example_ranks_of_a_batch():
    # k = rank/8 = [0, 1/8, ..., 7/8], N = 64, n_min = 4: R = 32, sum k = 3.5
    # R*k/sum k = i * 32/28 = [0, 1.14, 2.29, 3.43, 4.57, 5.71, 6.86, 8.0] -> floors [0,1,2,3,4,5,6,8] (sum 29)
    # leftover 3 -> k = 7/8, 6/8, 5/8 get one each: n = 4 + [0,1,2,3,4,6,7,9]
    n = allocate_rollouts(np.arange(8) / 8, total=64, n_min=4, n_max=16)
    assert n.tolist() == [4, 5, 6, 7, 8, 10, 11, 13]


def test_alg1_all_zero_difficulty_spreads_evenly():
    # sum k = 0: R = 17 - 3*4 = 5 spread evenly: floor(5/3) = 1 each, leftover 2 to the first two (ties, batch order)
    n = allocate_rollouts([0.0, 0.0, 0.0], total=17, n_min=4, n_max=12)
    assert n.tolist() == [6, 6, 5]


def test_alg1_leftover_goes_one_at_a_time_when_no_cap_binds():
    # k = [1, .1, .1, .1, .1], N = 20, n_min = 2, n_max = 20 (never binds): R = 20 - 10 = 10, sum k = 1.4
    # R*k/sum k = [7.14, .71, .71, .71, .71] -> floors [7, 0, 0, 0, 0] -> n = [9, 2, 2, 2, 2], leftover 3
    # step 3: one each in descending k: prompt 0, then the first two tied k=.1 -> [10, 3, 3, 2, 2]
    n = allocate_rollouts([1.0, 0.1, 0.1, 0.1, 0.1], total=20, n_min=2, n_max=20)
    assert n.tolist() == [10, 3, 3, 2, 2]


# ---------------------------------------------------------------- the cap fix


def test_one_hard_prompt_among_easy_ones_is_capped_and_the_rest_redistributed():
    # 20 prompts, G = 8, bounds [4, 12]: N = 160, R = 160 - 80 = 80, k = [0]*19 + [1] (sum k = 1)
    # the authors' code: the hard prompt gets 4 + floor(80 * 1/1) = 84 rollouts, far above n_max = 12
    k = [0.0] * 19 + [1.0]
    assert authors_alg1(k, 160, 4)[-1] == 84
    # ours: the hard prompt takes min(80, 12 - 4) = 8 -> 12; the other 72 go to the 19 easy ones evenly:
    # floor(72/19) = 3 each -> 7, leftover 72 - 57 = 15 -> one each to the first 15 easy prompts -> 8
    n = allocate_rollouts(k, total=160, n_min=4, n_max=12)
    assert n.tolist() == [8] * 15 + [7] * 4 + [12]
    check_invariants(n, k, 160, 4, 12)


def test_cap_holds_with_rank_difficulties():
    # one prompt at k = 31/32 among 31 easy ones at k = 1/32 (ties): the authors' code exceeds n_max
    k = np.array([1 / 32] * 31 + [31 / 32])
    assert authors_alg1(k, 32 * 8, 4)[-1] > 12
    n = allocate_rollouts(k, total=32 * 8, n_min=4, n_max=12)
    assert n[-1] == 12
    check_invariants(n, k, 256, 4, 12)


def test_hard_prompts_filling_up_exactly_leaves_the_rest_to_the_easy_one():
    # k = [0, 1, 1, 1, 1], N = 56, bounds [2, 13]: R = 56 - 10 = 46, sum k = 4, floor(46/4) = floor(11.5) = 11
    # -> the four hard prompts reach 2 + 11 = 13 = n_max exactly, 2 left; only the easy prompt can take them
    n = allocate_rollouts([0.0, 1.0, 1.0, 1.0, 1.0], total=56, n_min=2, n_max=13)
    assert n.tolist() == [4, 13, 13, 13, 13]


def test_hard_prompts_filling_up_exactly_leaves_the_rest_to_the_easy_ones():
    # 20 prompts at k = 0 and 24 at k = .25; N = 357, bounds [6, 9]: R = 357 - 44*6 = 93, sum k = 6
    # floor(93 * .25 / 6) = floor(3.875) = 3 -> the 24 hard prompts reach n_max = 9 exactly (72 given), 21 left
    # the cap stops them, so the 21 go to the 20 easy prompts: floor(21/20) = 1 each -> 7, the last one to the first
    k = [0.0] * 20 + [0.25] * 24
    n = allocate_rollouts(k, total=357, n_min=6, n_max=9)
    assert n.tolist() == [8] + [7] * 19 + [9] * 24
    check_invariants(n, k, 357, 6, 9)


def test_total_equal_to_caps_gives_everyone_n_max_and_n_min():
    k = np.linspace(0, 1, 10)
    assert allocate_rollouts(k, 120, 4, 12).tolist() == [12] * 10
    assert allocate_rollouts(k, 40, 4, 12).tolist() == [4] * 10


# ---------------------------------------------------------------- properties


@st.composite
def budgets(draw, tied=False):
    b = draw(st.integers(1, 48))
    if tied:  # few distinct levels: many ties, like ranks of a small dataset or accuracies of few samples
        k = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=b, max_size=b))
    else:
        k = draw(st.lists(st.floats(0.0, 1.0, allow_subnormal=True), min_size=b, max_size=b))
    n_min = draw(st.integers(2, 8))
    n_max = draw(st.integers(n_min, 16))
    total = draw(st.integers(b * n_min, b * n_max))
    return k, total, n_min, n_max


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budgets())
@example(([0.0, 1.0, 1.0, 1.0, 1.0], 56, 2, 13))  # hard prompts reach n_max exactly in the proportional pass
def test_invariants_random_difficulty(args):
    k, total, n_min, n_max = args
    check_invariants(allocate_rollouts(k, total, n_min, n_max), k, total, n_min, n_max)


@settings(max_examples=150, deadline=None)
@given(budgets(tied=True))
def test_invariants_tied_difficulty(args):
    k, total, n_min, n_max = args
    check_invariants(allocate_rollouts(k, total, n_min, n_max), k, total, n_min, n_max)


@settings(max_examples=200, deadline=None)
@given(budgets())
def test_equals_alg1_whenever_no_cap_binds(args):
    k, total, n_min, n_max = args
    ref = authors_alg1(k, total, n_min)
    if ref.max() <= n_max:
        assert allocate_rollouts(k, total, n_min, n_max).tolist() == ref.tolist()


# ---------------------------------------------------------------- infeasible arguments


def test_total_below_floor_raises_with_numbers():
    with pytest.raises(ValueError, match=r"total=15 < 4 prompts x n_min=4 = 16"):
        allocate_rollouts([0.5] * 4, total=15, n_min=4, n_max=12)


def test_total_above_cap_raises_with_numbers():
    with pytest.raises(ValueError, match=r"total=49 > 4 prompts x n_max=12 = 48"):
        allocate_rollouts([0.5] * 4, total=49, n_min=4, n_max=12)


def test_n_min_below_two_raises():
    with pytest.raises(ValueError, match=r"n_min=1 < 2"):
        allocate_rollouts([0.5] * 4, total=8, n_min=1, n_max=12)


def test_n_max_below_n_min_raises():
    with pytest.raises(ValueError, match=r"n_max=3 < n_min=4"):
        allocate_rollouts([0.5] * 4, total=16, n_min=4, n_max=3)


@pytest.mark.parametrize("bad", [[0.5, float("nan")], [0.5, -0.1], [0.5, float("inf")]])
def test_bad_difficulty_raises(bad):
    with pytest.raises(ValueError, match="difficulty"):
        allocate_rollouts(bad, total=16, n_min=4, n_max=12)


def test_uniform_rollouts_split_and_remainder_to_hardest():
    assert uniform_rollouts(4, 34, 4, 12, difficulty=[0.1, 0.9, 0.5, 0.0]).tolist() == [8, 9, 9, 8]
    with pytest.raises(ValueError, match="total=10 < 4 prompts"):
        uniform_rollouts(4, 10, 4, 12)


# ---------------------------------------------------------------- schedule


def test_paper_schedule_8_then_6_10_then_4_12():
    s = RolloutSchedule(8, n_update=2, n_low=4, n_high=12)
    seen = [(s.n_min, s.n_max)]
    for _ in range(3):
        s.end_epoch()
        seen.append((s.n_min, s.n_max))
    assert seen == [(8, 8), (6, 10), (4, 12), (4, 12)]


def test_paper_schedule_from_default_config():
    alloc = RolloutAllocator.from_config(E3Config().allocation, 8)
    idx = np.arange(16)
    bounds = []
    for _ in range(3):
        n = alloc.allocate(idx)
        assert n.sum() == 16 * 8
        bounds.append((alloc.metrics()["rollout/n_min"], alloc.metrics()["rollout/n_max"], int(n.min()), int(n.max())))
        alloc.observe(np.repeat(idx, n), (np.repeat(idx, n) % 3 == 0).astype(float))
        alloc.end_epoch(idx)
    assert [b[:2] for b in bounds] == [(8, 8), (6, 10), (4, 12)]
    assert bounds[0][2:] == (8, 8)  # first epoch: every prompt gets G
    assert all(n_min <= lo and hi <= n_max for n_min, n_max, lo, hi in bounds)


@pytest.mark.parametrize("args", [(8, 2, 1, 12), (3, 2, 4, 12), (13, 2, 4, 12), (8, -1, 4, 12)])
def test_bad_schedule_raises(args):
    with pytest.raises(ValueError):
        RolloutSchedule(*args)


def test_disabled_allocator_gives_everyone_n():
    alloc = RolloutAllocator(8, enable=False)
    idx = np.arange(6)
    alloc.observe(np.repeat(idx, 8), np.tile([1.0, 0, 0, 0, 0, 0, 0, 0], 6))
    alloc.end_epoch(idx)
    alloc.end_epoch(idx)
    assert alloc.allocate(idx).tolist() == [8] * 6


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="unknown allocation policy 'nope'"):
        RolloutAllocator(8, policy="nope")


# ---------------------------------------------------------------- difficulty tracker


def _observe_accuracies(tracker, acc_by_prompt, samples=4):
    for i, a in acc_by_prompt.items():
        ones = int(round(a * samples))
        tracker.observe([i] * samples, [1.0] * ones + [0.0] * (samples - ones))


def test_ranking_highest_accuracy_first():
    t = DifficultyTracker()
    _observe_accuracies(t, {0: 0.5, 1: 1.0, 2: 0.0, 3: 0.75, 4: 0.25})
    t.end_epoch(range(5))
    # ranks by accuracy, highest first: 1 (1.0) -> 0, 3 (.75) -> 1, 0 (.5) -> 2, 4 (.25) -> 3, 2 (0) -> 4; k = rank/5
    assert t.difficulty([0, 1, 2, 3, 4]).tolist() == [0.4, 0.0, 0.8, 0.2, 0.6]


def test_accuracy_is_cumulative_over_epochs():
    t = DifficultyTracker()
    t.observe([7, 7], [1.0, 1.0])
    t.end_epoch([7])
    t.observe([7, 7, 7, 7], [0.0, 0.0, 0.0, 1.0])
    assert t.accuracy([7]).tolist() == [0.5]  # (1 + 1 + 0 + 0 + 0 + 1) / 6
    assert t.counts([7]).tolist() == [6]


def test_observe_length_mismatch_raises():
    with pytest.raises(ValueError, match="3 indices but 2 rewards"):
        DifficultyTracker().observe([1, 2, 3], [1.0, 0.0])


def test_ties_share_the_mean_rank_of_their_accuracy_level():
    t = DifficultyTracker()
    _observe_accuracies(t, {i: (1.0 if i < 10 else 0.0) for i in range(30)})
    t.end_epoch(range(30))
    k = t.difficulty(range(30))
    assert k[:10].tolist() == [4.5 / 30] * 10  # ranks 0..9
    assert k[10:].tolist() == [19.5 / 30] * 20  # ranks 10..29
    assert np.mean(k) == pytest.approx(np.mean(np.arange(30) / 30))  # the expected ranks of a random tie-break


def test_tied_prompts_share_the_average_rank():
    t = DifficultyTracker()
    _observe_accuracies(t, {0: 1.0, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.0})
    t.end_epoch(range(5))
    # highest accuracy first: 0 -> rank 0; 1, 2, 3 tie for ranks 1, 2, 3 -> 2 each; 4 -> rank 4; k = rank / 5
    assert t.difficulty(range(5)).tolist() == [0.0, 0.4, 0.4, 0.4, 0.8]


def test_tied_prompts_get_equal_budgets():
    """Equal evidence, equal budget: prompts of equal accuracy get the same k, so in one batch their budgets differ
    at most by the one leftover rollout of Alg. 1's last step."""
    alloc = RolloutAllocator(8)
    idx = np.arange(42)
    alloc.observe(np.repeat(idx[:40], 4), np.tile([1.0, 0.0, 1.0, 0.0], 40))  # 40 prompts tied at 0.5
    alloc.observe([40] * 4 + [41] * 4, [1.0] * 4 + [0.0] * 4)  # one easy, one hard
    alloc.end_epoch(idx)
    alloc.end_epoch(idx)  # bounds [4, 12]
    k = alloc.tracker.difficulty(idx[:40])
    assert np.all(k == k[0]) and k[0] == pytest.approx(20.5 / 42)  # ranks 1..40 -> 20.5
    for batch in np.array_split(np.random.default_rng(0).permutation(40), 5):
        n = alloc.allocate(np.concatenate([[40, 41], batch]))
        assert n[2:].max() - n[2:].min() <= 1, n


def test_unseen_prompts_use_the_prior():
    for prior, expect_hardest in ((0.0, True), (1.0, False)):
        t = DifficultyTracker(prior_accuracy=prior)
        _observe_accuracies(t, {0: 0.25, 1: 0.5, 2: 0.75})
        t.end_epoch([0, 1, 2, 3])  # prompt 3 never seen
        assert t.accuracy([3]).tolist() == [prior]
        k = t.difficulty([0, 1, 2, 3])
        assert bool(k[3] == k.max()) is expect_hardest
        assert bool(k[3] == k.min()) is (not expect_hardest)


def test_prompt_outside_last_ranking_is_placed_by_accuracy():
    t = DifficultyTracker()
    _observe_accuracies(t, {0: 1.0, 1: 0.75, 2: 0.25, 3: 0.0})
    t.end_epoch([0, 1, 2, 3])
    _observe_accuracies(t, {9: 0.5})  # seen after the ranking: 2 of 4 ranked prompts are easier
    assert t.difficulty([9]).tolist() == [0.5]
    assert DifficultyTracker().difficulty([1, 2]).tolist() == [0.0, 0.0]  # before any ranking


# ---------------------------------------------------------------- state round trip


def _trained_allocator(seed=5):
    alloc = RolloutAllocator(8, seed=seed)
    idx = np.arange(24)
    rng = np.random.default_rng(0)
    for _ in range(2):
        n = alloc.allocate(idx[:12])
        rows = np.repeat(idx[:12], n)
        alloc.observe(rows, rng.integers(0, 2, rows.size).astype(float))
        alloc.end_epoch(idx)  # prompts 12..23 unseen: tied at the prior
    return alloc, idx


def _next_decisions(alloc, idx):
    out = [alloc.allocate(idx[:12]).tolist(), alloc.allocate(idx[12:]).tolist()]
    alloc.observe(np.repeat(idx[:4], 8), np.tile([1.0, 0.0], 16))
    alloc.end_epoch(idx)
    out += [alloc.allocate(idx[:12]).tolist(), alloc.allocate(idx[12:]).tolist(),
            alloc.tracker.difficulty(idx).tolist(), alloc.metrics()["rollout/n_min"]]
    return out


from roundtrip import pickle_roundtrip as _pickle  # noqa: E402
from roundtrip import torch_roundtrip as _torch_save  # noqa: E402


def _json(state):
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("roundtrip", [_pickle, _torch_save, _json])  # json: int prompt keys must survive
def test_restored_allocator_makes_the_same_decisions(roundtrip):
    original, idx = _trained_allocator()
    restored = RolloutAllocator(8, seed=999)
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert _next_decisions(restored, idx) == _next_decisions(original, idx)


# ---------------------------------------------------------------- real difficulty distribution


def test_real_difficulty_distribution(shared_data):
    """E3's all_data.parquet: level = wrong answers out of 10 by Qwen2.5-Math-7B (heavy ties at 0 and 10)."""
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(shared_data / "all_data.parquet", columns=["level"]).iloc[:3000]
    level = df["level"].to_numpy()
    alloc = RolloutAllocator(8, seed=0)
    idx = np.arange(level.size)
    rows = np.repeat(idx, 10)
    rewards = (np.tile(np.arange(10), level.size) >= level[rows]).astype(float)  # 10 - level correct of 10
    alloc.observe(rows, rewards)
    alloc.end_epoch(idx)
    alloc.end_epoch(idx)  # bounds [4, 12]
    rng = np.random.default_rng(0)
    got = np.zeros(level.size)
    for batch in np.array_split(rng.permutation(idx), 3000 // 128):
        n = alloc.allocate(batch)
        k = alloc.tracker.difficulty(batch)
        check_invariants(n, k, len(batch) * 8, 4, 12)
        got[batch] = n
    by_level = [got[level == lv].mean() for lv in range(11)]
    assert by_level[10] > by_level[5] > by_level[0]
    assert by_level[0] < 8 < by_level[10]
