"""The colocate_async trainer's pure pieces (``e3.engines.verl.inflight``, ``rollouts.response_token_mean``):
the in-flight record across steps and a checkpoint, the rows the scheduler's entropy is taken over, the lag
metrics."""

from __future__ import annotations

import math

import pytest
import torch

from e3.engines.verl.inflight import Dispatch, InflightPrompts, lag_metrics, scheduler_rows
from e3.engines.verl.rollouts import response_token_mean


def jagged(rows):
    return torch.nested.as_nested_tensor([torch.tensor(r, dtype=torch.float32) for r in rows], layout=torch.jagged)


def test_a_dispatch_stays_recorded_until_its_group_is_trained_or_evicted():
    record = InflightPrompts()
    record.add(["a", "b"], [3, 5], [1.0, 1.0], step=1)  # warm-up
    record.add(["c", "d"], [4, 4], [1.0, 1.0], step=1)  # step 1's dispatch
    # step 1 trains a and c (one uid per rollout: repeats are one group)
    assert record.take(["a", "a", "a", "c"]) == {"a": Dispatch(3, 1.0, 1), "c": Dispatch(4, 1.0, 1)}
    record.add(["e"], [4], [1.25], step=2)
    assert len(record) == 3 and "b" in record and "a" not in record
    # verl evicted d (stale or failed): the refill's budget is what d held
    assert record.drop_missing({"b", "e", "b_0_0"}) == {"d": Dispatch(4, 1.0, 1)}
    with pytest.raises(KeyError, match=r"\['a'\] were never dispatched by this trainer \(or were already trained\)"):
        record.take(["a"])
    with pytest.raises(ValueError, match="uid=e is dispatched twice"):
        record.add(["e"], [2], [1.0], step=3)
    with pytest.raises(ValueError, match="2 uids, 1 budgets"):
        record.add(["f", "g"], [2], [1.0, 1.0], step=3)


def test_the_record_round_trips_through_a_checkpoint_in_dispatch_order():
    record = InflightPrompts()
    record.add(["x", "y"], [2, 6], [0.75, 0.75], step=4)
    record.add(["z"], [4], [0.8125], step=5)
    state = record.state_dict()
    assert state == [["x", 2, 0.75, 4], ["y", 6, 0.75, 4], ["z", 4, 0.8125, 5]]
    restored = InflightPrompts()
    restored.add(["stale"], [1], [1.0], step=0)
    restored.load_state_dict(state)  # replaces what was there
    assert restored.state_dict() == state and "stale" not in restored
    assert restored.take(["z", "x"]) == {"z": Dispatch(4, 0.8125, 5), "x": Dispatch(2, 0.75, 4)}


def test_the_scheduler_sees_the_rows_at_the_latest_tau_else_every_real_row():
    taus = [1.0, 1.25, 1.25, 1.25]
    tags = [{}, {}, {}, {"is_padding": True}]  # verl's padding copies a real row's fields, tau included
    assert scheduler_rows(taus, 1.25, tags) == ([False, True, True, False], True)
    assert scheduler_rows(taus, 1.5, tags) == ([True, True, True, False], False)  # none at 1.5: all real rows
    assert scheduler_rows(taus, None, None) == ([True] * 4, False)
    with pytest.raises(ValueError, match="4 temperatures but 1 tags"):
        scheduler_rows(taus, 1.0, [{}])


def test_response_token_mean_over_selected_rows():
    values, mask = jagged([[1, 3], [5, 7, 9], [100]]), jagged([[1, 1], [1, 1, 0], [1]])
    assert response_token_mean(values, mask) == pytest.approx((1 + 3 + 5 + 7 + 100) / 5)
    assert response_token_mean(values, mask, select=[False, True, False]) == pytest.approx(6.0)
    assert response_token_mean(values, mask, [{}, {}, {"is_padding": True}]) == pytest.approx(4.0)
    assert math.isnan(response_token_mean(values, mask, select=[False, False, False]))
    with pytest.raises(ValueError, match="3 rows but 3 tags and 2 selected flags"):
        response_token_mean(values, mask, select=[True, True])


def test_lag_metrics_count_rollouts_by_steps_since_dispatch():
    out = lag_metrics(5, [4, 4, 4, 3, 5])
    assert out == {"rollout/tau_lag/mean": pytest.approx(1.0), "rollout/tau_lag/max": 2,
                   "rollout/tau_lag_hist": [1, 1, 1, 2, 0]}
    assert lag_metrics(5, []) == {}
    with pytest.raises(ValueError, match="trained at step 5 was dispatched later, at step 6"):
        lag_metrics(5, [6])
