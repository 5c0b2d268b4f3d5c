"""PREPO relative-entropy weights w_i = H_i / H_bar, normalised over the whole batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.weighting import relative_entropy_weights


def test_plain_mean_by_hand():
    # H = [1, 2, 3], H_bar = 2 -> w = [0.5, 1.0, 1.5]
    assert relative_entropy_weights([1.0, 2.0, 3.0]).tolist() == [0.5, 1.0, 1.5]


def test_token_weighted_mean_by_hand():
    # lengths [1, 1, 2]: H_bar = (1*1 + 1*2 + 2*3) / 4 = 9/4 = 2.25 -> w = [1/2.25, 2/2.25, 3/2.25]
    w = relative_entropy_weights([1.0, 2.0, 3.0], lengths=[1, 1, 2])
    np.testing.assert_allclose(w, [0.4444444444444444, 0.8888888888888888, 1.3333333333333333], rtol=0, atol=1e-15)


def test_normalised_over_batch_not_group():
    # two "groups" with very different entropy levels: weights still relative to the single batch mean 2.5
    w = relative_entropy_weights([1.0, 1.0, 4.0, 4.0])
    assert w.tolist() == [0.4, 0.4, 1.6, 1.6]


def test_clip_by_hand():
    assert relative_entropy_weights([1.0, 2.0, 3.0], clip=(0.8, 1.2)).tolist() == [0.8, 1.0, 1.2]
    assert relative_entropy_weights([1.0, 2.0, 3.0], clip=(None, 1.2)).tolist() == [0.5, 1.0, 1.2]
    assert relative_entropy_weights([1.0, 2.0, 3.0], clip=(0.7, None)).tolist() == [0.7, 1.0, 1.5]


def test_non_finite_entropy_gets_weight_one_and_is_left_out_of_the_mean():
    # finite mean over [1, 3] = 2 -> [0.5, 1 (nan), 1.5, 1 (inf)]
    w = relative_entropy_weights([1.0, float("nan"), 3.0, float("inf")])
    assert w.tolist() == [0.5, 1.0, 1.5, 1.0]
    w = relative_entropy_weights([1.0, float("nan"), 3.0], lengths=[3, 100, 1])  # (3 + 3) / 4 = 1.5
    np.testing.assert_allclose(w, [1 / 1.5, 1.0, 2.0])


def test_degenerate_batches():
    assert relative_entropy_weights([]).shape == (0,)
    assert relative_entropy_weights([float("nan")] * 3).tolist() == [1.0, 1.0, 1.0]
    assert relative_entropy_weights([0.0, 0.0]).tolist() == [1.0, 1.0]  # mean entropy 0: no reweighting
    assert relative_entropy_weights([1.0, 2.0], lengths=[0, 0]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="3 entropies but 2 lengths"):
        relative_entropy_weights([1.0, 2.0, 3.0], lengths=[1, 2])


def test_negative_entropies_never_give_weights_of_the_wrong_sign():
    """An entropy is >= 0; a negative value (bf16 rounding of logsumexp - sum p * logit, or a caller's bug) counts
    as 0, in its weight and in the batch mean."""
    np.testing.assert_allclose(relative_entropy_weights([-1.0, 1.0, 3.0]), [0.0, 0.75, 2.25], rtol=0, atol=1e-15)
    # token-weighted: (1*0 + 1*1 + 2*3) / 4 = 1.75
    w = relative_entropy_weights([-1.0, 1.0, 3.0], lengths=[1, 1, 2])
    np.testing.assert_allclose(w, [0.0, 1 / 1.75, 3 / 1.75], rtol=0, atol=1e-15)
    assert relative_entropy_weights([-2.0, -1.0]).tolist() == [1.0, 1.0]  # mean 0: no reweighting


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.floats(0.01, 20.0), st.just(float("nan"))), min_size=1, max_size=64))
def test_unweighted_mean_of_weights_is_one(h):
    w = relative_entropy_weights(h)
    assert w.shape == (len(h),)
    assert np.all(w > 0)
    assert w.mean() == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 20.0), st.integers(1, 500)), min_size=1, max_size=64))
def test_token_weighted_mean_of_weights_is_one(pairs):
    h, lens = map(np.asarray, zip(*pairs))
    w = relative_entropy_weights(h, lengths=lens)
    assert (w * lens).sum() / lens.sum() == pytest.approx(1.0, rel=1e-9)
