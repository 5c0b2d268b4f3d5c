"""Controller robustness: every odd input to ``E3Controller`` has a defined, logged outcome.

Cases: NaN / inf / zero / negative entropy (temperature kept, counted in ``rollout/invalid_entropy``, a warning
logged; the warm-up target is not polluted), an empty batch (``plan([])`` / ``observe`` with empty arrays), a batch
where every group is all-correct (and all-wrong), a prompt index never seen before (difficulty from the configured
prior), a budget that cannot be met (``ValueError`` with the numbers), mismatched lengths, and a NaN score.

Each ``case_*`` function is plain Python (no pytest fixture) and returns a one-line description of the outcome, so
``bench/reliability.py`` runs the same cases and counts them; ``CASES`` lists them with the known bugs.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import pytest

from e3.schema import E3Config
from e3.controller import E3Controller

VOCAB = 1000
BAD_ENTROPIES = (float("nan"), float("inf"), float("-inf"), 0.0, -1.0)


@contextlib.contextmanager
def captured_warnings(name: str = "e3"):
    """Collect WARNING+ records of the ``e3`` loggers (works in and outside pytest)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger, handler = logging.getLogger(name), Keep(logging.WARNING)
    logger.addHandler(handler)
    old = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def controller(n: int = 8, size: int = 10, **sections) -> E3Controller:
    raw = E3Config().to_dict()
    for section, values in sections.items():
        raw[section].update(values)
    cfg = E3Config.from_dict(raw)
    return E3Controller(cfg, n, VOCAB, max_steps=100, dataset_indices=np.arange(size))


def step(ctrl: E3Controller, indices, scores_of, entropy: float) -> dict:
    """plan -> scores -> observe, the way an engine drives the controller."""
    plan = ctrl.plan(indices)
    roll = plan.rollout_indices()
    scores = np.array([scores_of(int(i), k) for k, i in enumerate(roll)], dtype=np.float64)
    return ctrl.observe(roll, scores, entropy)


def _mixed(i: int, k: int) -> float:
    return float((i + k) % 3 == 0)


# ------------------------------------------------------------------------------------------------ the cases
def case_invalid_entropy_keeps_temperature() -> str:
    """After the warm-up, each bad entropy keeps tau and the target, is counted and logged; a good one moves tau."""
    ctrl = controller()
    step(ctrl, [0, 1, 2], _mixed, 2.0)               # warm-up: H_target = 2.0
    step(ctrl, [3, 4, 5], _mixed, 3.0)               # entropy above target: tau goes down
    tau, target = ctrl.temperature, ctrl.scheduler.target_entropy
    assert tau < 1.0 and target == 2.0
    for count, bad in enumerate(BAD_ENTROPIES, start=1):
        with captured_warnings() as logs:
            m = step(ctrl, [6, 7], _mixed, bad)
        assert ctrl.temperature == tau and m["rollout/next_temperature"] == tau, (bad, ctrl.temperature)
        assert m["rollout/invalid_entropy"] == count and ctrl.scheduler.target_entropy == target
        assert any("invalid entropy" in r.getMessage() and r.levelno == logging.WARNING for r in logs), bad
        assert math.isfinite(m["rollout/temperature"])
    step(ctrl, [8, 9], _mixed, 3.0)
    assert ctrl.temperature < tau  # a valid entropy moves it again
    return f"{len(BAD_ENTROPIES)} bad entropies: tau kept at {tau:.4f}, counted, warned"


def case_invalid_entropy_during_warmup() -> str:
    """A bad entropy at step 1 does not become the target; the first valid one does."""
    ctrl = controller()
    with captured_warnings() as logs:
        step(ctrl, [0, 1], _mixed, float("nan"))
    assert logs and math.isnan(ctrl.scheduler.target_entropy) and ctrl.temperature == 1.0
    step(ctrl, [2, 3], _mixed, 1.7)
    assert ctrl.scheduler.target_entropy == 1.7 and ctrl.temperature == 1.0
    return "NaN at step 1: no target yet, tau 1.0; the next valid entropy (1.7) becomes the target"


def case_empty_batch() -> str:
    """An empty batch: an empty plan (Σn = 0), observe counts the step, learns nothing, keeps tau, warns."""
    ctrl = controller()
    step(ctrl, [0, 1, 2], _mixed, 2.0)
    before = ctrl.allocator.tracker.state_dict()
    tau = ctrl.temperature
    plan = ctrl.plan([])
    assert plan.n_per_prompt.size == 0 and plan.total == 0 and plan.temperature == tau
    roll = plan.rollout_indices()
    assert roll.size == 0
    assert ctrl.advantages(np.zeros(0), roll).size == 0
    with captured_warnings() as logs:
        m = ctrl.observe(roll, np.zeros(0), float("nan"))  # the token-mean entropy of no tokens
    assert m["step"] == 2 and m["rollout/n_total"] == 0 and m["groups/num_groups"] == 0
    assert math.isnan(m["reward/mean"]) and m["groups/all_wrong"] == 0.0
    assert ctrl.temperature == tau and m["rollout/invalid_entropy"] == 1 and logs
    assert ctrl.allocator.tracker.state_dict() == before  # nothing learned from nothing
    return "plan([]) -> empty plan; observe(empty) -> step counted, reward/mean NaN, 0 groups, tau kept, warning"


def case_empty_plan_is_usable_as_an_index() -> str:
    """An engine carries out the empty plan: its rollout indices index numpy arrays (and tensors)."""
    ctrl = controller()
    roll = ctrl.plan([]).rollout_indices()
    prompts = np.arange(30).reshape(10, 3)
    assert prompts[roll].shape == (0, 3), roll.dtype
    return "empty plan indexes arrays"


def case_all_correct_batch() -> str:
    """Every group all-correct: advantages exactly 0, groups/all_correct 1.0; all-wrong likewise; budgets hold."""
    ctrl = controller()
    idx = [0, 1, 2, 3]
    plan = ctrl.plan(idx)
    roll = plan.rollout_indices()
    ones = np.ones(roll.size)
    adv = ctrl.advantages(ones, roll)
    assert adv.shape == ones.shape and np.all(adv == 0.0)
    m = ctrl.observe(roll, ones, 2.0)
    assert m["groups/all_correct"] == 1.0 and m["groups/all_wrong"] == 0.0
    assert m["groups/informative_rollouts"] == 0.0 and m["reward/mean"] == 1.0
    zeros = np.zeros(roll.size)
    assert np.all(ctrl.advantages(zeros, roll) == 0.0)
    m = ctrl.observe(roll, zeros, 2.0)
    assert m["groups/all_wrong"] == 1.0 and m["groups/all_correct"] == 0.0
    ctrl.end_epoch()  # every prompt tied: the seeded tie-break ranks them; budgets stay within bounds
    n = ctrl.plan(idx).n_per_prompt
    lo, hi = ctrl.allocator.schedule.n_min, ctrl.allocator.schedule.n_max
    assert n.sum() == len(idx) * 8 and n.min() >= lo and n.max() <= hi
    return f"advantages 0, all_correct 1.0 / all_wrong 1.0; after ranking ties n={n.tolist()} in [{lo},{hi}]"


def case_unseen_prompt_uses_prior() -> str:
    """A prompt never seen (not even in the dataset) gets its difficulty from the configured prior accuracy."""
    out = []
    for prior in (0.0, 1.0):
        ctrl = controller(allocation={"prior_accuracy": prior})
        # before any ranking every prompt (seen or not) has k = 0: an even split
        assert ctrl.plan([0, 10_000]).n_per_prompt.tolist() == [8, 8]
        for i in range(10):  # accuracies 0.0, 0.1, ..., 0.9
            ctrl.observe([i] * 10, [1.0] * i + [0.0] * (10 - i), 2.0)
        ctrl.end_epoch()
        k = ctrl.allocator.tracker.difficulty([10_000])[0]
        acc = np.arange(10) / 10  # its average rank were it ranked: easier prompts plus half of those tied with it
        assert k == pytest.approx(np.mean(acc > prior) + np.mean(acc == prior) / 2), (prior, k)
        n = ctrl.plan([5, 10_000]).n_per_prompt  # prompt 5 has accuracy 0.5
        assert (n[1] > n[0]) if prior == 0.0 else (n[1] < n[0]), (prior, n)
        out.append(f"prior {prior}: k={k:.1f}, n={n.tolist()}")
    return "; ".join(out)


def case_budget_cannot_be_met() -> str:
    """A total outside [B*n_min, B*n_max] is refused with the numbers; mismatched lengths name both counts."""
    ctrl = controller()
    with pytest.raises(ValueError) as low:
        ctrl.plan([0, 1, 2, 3], total=31)
    for number in ("31", "4", "8", "32"):
        assert number in str(low.value), str(low.value)
    with pytest.raises(ValueError) as high:
        ctrl.plan([0, 1, 2, 3], total=33)  # before any epoch n_max = n = 8
    assert "33" in str(high.value) and "32" in str(high.value), str(high.value)
    with pytest.raises(ValueError, match="3 indices but 2 rewards"):
        ctrl.observe([0, 0, 1], [1.0, 0.0], 2.0)
    assert ctrl.step == 0  # a refused call changes nothing
    return f"ValueError: {low.value} | {high.value}"


def case_nan_score_is_refused_or_neutral() -> str:
    """A NaN score (a broken custom reward) must not reach the update or the difficulty history silently:
    either refused with a ValueError or neutral (finite advantages, finite accuracy)."""
    ctrl = controller()
    plan = ctrl.plan([0, 1])
    roll = plan.rollout_indices()
    scores = np.array([1.0, 0.0] * (roll.size // 2))
    scores[0] = np.nan
    try:
        adv = ctrl.advantages(scores, roll)
        ctrl.observe(roll, scores, 2.0)
    except ValueError as e:
        return f"refused: {e}"
    assert np.all(np.isfinite(adv)), adv
    assert np.all(np.isfinite(ctrl.allocator.tracker.accuracy([0, 1])))
    return "NaN score neutralised"


BUG_EMPTY_PLAN = ("BUG e3/controller.py E3Controller.plan: plan([]) returns float64 indices (np.asarray([]) has "
                  "dtype float64), so an empty plan's rollout_indices() cannot index a numpy array (IndexError)")
BUG_NAN_SCORE = ("BUG e3/controller.py advantages/observe: a NaN score is accepted silently: grpo_advantages gives "
                 "NaN to every rollout of its group (NaN loss) and DifficultyTracker keeps a NaN accuracy for the "
                 "prompt forever (it then never ranks as hard or easy)")
# (name, function, known bug or None)
CASES = [
    ("invalid entropy keeps temperature", case_invalid_entropy_keeps_temperature, None),
    ("invalid entropy during warm-up", case_invalid_entropy_during_warmup, None),
    ("empty batch", case_empty_batch, None),
    ("empty plan usable as an index", case_empty_plan_is_usable_as_an_index, None),
    ("all-correct / all-wrong batch", case_all_correct_batch, None),
    ("never-seen prompt index", case_unseen_prompt_uses_prior, None),
    ("budget cannot be met", case_budget_cannot_be_met, None),
    ("NaN score", case_nan_score_is_refused_or_neutral, None),
]


def run_cases() -> list[dict]:
    """Run every case: ``{"name", "ok", "outcome", "bug"}`` (for bench/reliability.py)."""
    out = []
    for name, fn, bug in CASES:
        try:
            outcome, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - the failure is the result being reported
            outcome, ok = " ".join(f"{type(e).__name__}: {e}".split())[:200], False
        out.append({"name": name, "ok": ok, "outcome": outcome, "bug": bug})
    return out


# ------------------------------------------------------------------------------------------------ pytest
@pytest.mark.parametrize("bad", BAD_ENTROPIES, ids=repr)
def test_invalid_entropy_is_logged_through_standard_logging(caplog, bad):
    ctrl = controller()
    step(ctrl, [0, 1], _mixed, 2.0)
    step(ctrl, [2, 3], _mixed, 2.5)
    tau = ctrl.temperature
    with caplog.at_level(logging.WARNING, logger="e3"):
        m = step(ctrl, [4, 5], _mixed, bad)
    assert ctrl.temperature == tau and m["rollout/invalid_entropy"] == 1
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "invalid entropy" in r.getMessage()]
    assert len(warned) == 1 and f"tau={tau:.4f}" in warned[0].getMessage()


def test_invalid_entropy_keeps_temperature():
    case_invalid_entropy_keeps_temperature()


def test_invalid_entropy_during_warmup():
    case_invalid_entropy_during_warmup()


def test_empty_batch():
    case_empty_batch()


def test_empty_plan_is_usable_as_an_index():
    case_empty_plan_is_usable_as_an_index()


def test_all_correct_batch():
    case_all_correct_batch()


def test_unseen_prompt_uses_prior():
    case_unseen_prompt_uses_prior()


def test_budget_cannot_be_met():
    case_budget_cannot_be_met()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on the NaN itself
def test_nan_score_is_refused_or_neutral():
    case_nan_score_is_refused_or_neutral()


def test_controller_state_survives_odd_inputs():
    """After all the odd inputs a state_dict round trip reproduces the next decision exactly."""
    ctrl = controller()
    step(ctrl, [0, 1, 2], _mixed, 2.0)
    step(ctrl, [], _mixed, float("nan"))
    step(ctrl, [3, 4], _mixed, float("inf"))
    step(ctrl, [5, 6, 7], lambda i, k: 1.0, 0.0)
    ctrl.end_epoch()
    step(ctrl, [8, 9, 10_000], _mixed, 2.2)
    twin = controller()
    twin.load_state_dict(ctrl.state_dict())
    a, b = ctrl.plan([1, 5, 9, 10_000]), twin.plan([1, 5, 9, 10_000])
    assert a.temperature == b.temperature and a.n_per_prompt.tolist() == b.n_per_prompt.tolist()
