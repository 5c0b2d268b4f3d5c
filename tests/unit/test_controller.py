"""The driver-side facade E3Controller over a few synthetic epochs: plan -> sample -> advantages -> observe."""


import numpy as np
import pytest

from e3.advantage import grpo_advantages, length_bias_scores
from e3.schema import E3Config
from e3.controller import E3Controller
from e3.metrics import group_stats
from e3.weighting import relative_entropy_weights

VOCAB = 151_936
N = 8  # rollout.n
PROMPTS = np.arange(100, 132)  # 32 dataset rows (non-contiguous from 0 on purpose)
BATCH = 8
STEPS_PER_EPOCH = len(PROMPTS) // BATCH
EPOCHS = 3
SHARED_NAMES = ["step", "rollout/temperature", "rollout/entropy", "rollout/target_entropy", "rollout/n_min",
                "rollout/n_max", "rollout/n_total", "reward/mean", "groups/all_correct", "groups/all_wrong",
                "groups/informative_rollouts"]


def true_accuracy(idx):
    """Synthetic task: prompt 100 is always solved, prompt 131 never."""
    return 1.0 - (np.asarray(idx) - 100) / 31


def make(cfg=None, max_steps=STEPS_PER_EPOCH * EPOCHS, dataset=PROMPTS, **kw):
    return E3Controller(cfg or E3Config(), N, VOCAB, max_steps=max_steps, dataset_indices=dataset, **kw)


def run_step(ctl, batch, rng, entropy):
    plan = ctl.plan(batch)
    rows = plan.rollout_indices()
    scores = (rng.random(rows.size) < true_accuracy(rows)).astype(float)
    ent = rng.uniform(0.5, 1.5, rows.size)
    adv = ctl.advantages(scores, rows, entropies=ent, lengths=rng.integers(10, 200, rows.size))
    metrics = ctl.observe(rows, scores, entropy)
    return plan, rows, scores, adv, metrics


def run_epochs(ctl, seed=0, epochs=EPOCHS, entropy=lambda t: 1.0 - 0.03 * t):
    rng = np.random.default_rng(seed)
    log = []
    for _ in range(epochs):
        order = rng.permutation(PROMPTS)
        for b in range(STEPS_PER_EPOCH):
            log.append(run_step(ctl, order[b * BATCH:(b + 1) * BATCH], rng, entropy(ctl.step)))
        ctl.end_epoch()
    return log


def test_budget_constant_and_bounds_follow_schedule():
    ctl = make()
    log = run_epochs(ctl)
    expected_bounds = [(8, 8)] * 4 + [(6, 10)] * 4 + [(4, 12)] * 4
    for (plan, rows, _, _, m), (lo, hi) in zip(log, expected_bounds):
        assert plan.total == BATCH * N == m["rollout/n_total"] == rows.size
        assert (m["rollout/n_min"], m["rollout/n_max"]) == (lo, hi)
        assert lo <= plan.n_per_prompt.min() and plan.n_per_prompt.max() <= hi
    assert [m["step"] for *_, m in log] == list(range(1, 13))
    # after two epochs of evidence, hard prompts get more rollouts than easy ones
    last = [(p.indices, p.n_per_prompt) for p, *_ in log[-4:]]
    idx = np.concatenate([i for i, _ in last])
    n = np.concatenate([k for _, k in last])
    assert n[true_accuracy(idx) < 0.3].mean() > n[true_accuracy(idx) > 0.7].mean()
    # the always-solved prompt gets the floor, the never-solved one more than G
    assert n[idx == 100].tolist() == [4] and n[idx == 131][0] > N


def test_metric_names_and_values():
    ctl = make()
    for plan, rows, scores, _, m in run_epochs(ctl, epochs=1):
        assert set(SHARED_NAMES) <= set(m)
        assert m["reward/mean"] == pytest.approx(scores.mean())
        stats = group_stats(scores, rows)
        for key in ("all_correct", "all_wrong", "informative_rollouts"):
            assert m[f"groups/{key}"] == stats[key]
        assert m["rollout/temperature"] == plan.temperature


def test_temperature_follows_eq4_and_is_used_for_the_next_plan():
    ctl = make()
    rng = np.random.default_rng(0)
    p1, *_, m1 = run_step(ctl, PROMPTS[:8], rng, entropy=1.0)  # warm-up: H_init = 1.0
    assert p1.temperature == 1.0 and m1["rollout/target_entropy"] == 1.0
    p2, *_, m2 = run_step(ctl, PROMPTS[8:16], rng, entropy=0.8)
    assert p2.temperature == 1.0 and m2["rollout/entropy"] == 0.8
    # Eq. 4: 1 * (1 + ln(1 / 0.8) / (ln 151936 + ln ln 151936)) = 1.0154849257464356
    assert m2["rollout/next_temperature"] == pytest.approx(1.0154849257464356, abs=1e-12)
    p3, *_, m3 = run_step(ctl, PROMPTS[16:24], rng, entropy=1.0)
    assert p3.temperature == ctl.plan(PROMPTS[:8]).temperature == m3["rollout/temperature"]
    assert p3.temperature == pytest.approx(1.0154849257464356, abs=1e-12)


def test_falling_entropy_heats_up_sampling():
    log = run_epochs(make())
    temps = [m["rollout/temperature"] for *_, m in log]
    assert temps[0] == temps[1] == 1.0
    assert temps[-1] > 1.05
    assert all(b >= a for a, b in zip(temps[1:], temps[2:]))


def test_temperature_disabled_stays_at_init():
    cfg = E3Config.from_dict({"temperature": {"enable": False, "init_temperature": 0.9}})
    ctl = E3Controller(cfg, N, VOCAB, max_steps=None, dataset_indices=PROMPTS)  # no run length needed
    log = run_epochs(ctl)
    assert {p.temperature for p, *_ in log} == {0.9}
    assert {m["rollout/temperature"] for *_, m in log} == {0.9}
    assert [m["rollout/entropy"] for *_, m in log][:2] == [1.0, pytest.approx(0.97)]  # still logged


def test_allocation_disabled_gives_everyone_n():
    ctl = make(E3Config.from_dict({"allocation": {"enable": False}}))
    for plan, *_, m in run_epochs(ctl):
        assert plan.n_per_prompt.tolist() == [N] * BATCH
        assert (m["rollout/n_min"], m["rollout/n_max"]) == (N, N)


def test_plain_grpo_advantages_without_prepo():
    ctl = make()
    rng = np.random.default_rng(3)
    _, rows, scores, adv, m = run_step(ctl, PROMPTS[:8], rng, 1.0)
    np.testing.assert_array_equal(adv, grpo_advantages(scores, rows, 1e-6))
    assert not any(k.startswith("weights/") for k in m)


@pytest.mark.parametrize("weighting", [{"enable": True}, {"enable": True, "token_weighted": True},
                                       {"enable": True, "clip_min": 0.8, "clip_max": 1.2}])
def test_prepo_weights_multiply_grpo_advantages(weighting):
    ctl = make(E3Config.from_dict({"weighting": weighting}))
    plan = ctl.plan(PROMPTS[:8])
    rows = plan.rollout_indices()
    rng = np.random.default_rng(1)
    scores = (rng.random(rows.size) < 0.5).astype(float)
    ent = rng.uniform(0.2, 2.0, rows.size)
    lens = rng.integers(5, 300, rows.size)
    adv = ctl.advantages(scores, rows, entropies=ent, lengths=lens)
    w = relative_entropy_weights(ent, lens if weighting.get("token_weighted") else None,
                                 (weighting.get("clip_min"), weighting.get("clip_max")))
    np.testing.assert_allclose(adv, grpo_advantages(scores, rows) * w, rtol=0, atol=1e-15)
    assert not np.allclose(w, 1.0)
    m = ctl.observe(rows, scores, 1.0)
    assert m["weights/mean"] == pytest.approx(w.mean()) and m["weights/max"] == pytest.approx(w.max())
    with pytest.raises(ValueError, match="entropies"):
        ctl.advantages(scores, rows)


def test_length_bias_applied_to_easy_prompts_before_grpo():
    ctl = make(E3Config.from_dict({"advantage": {"length_bias": True}}))
    run_epochs(ctl, epochs=1)  # rank prompts
    plan = ctl.plan(PROMPTS[:8])
    rows = plan.rollout_indices()
    scores = np.ones(rows.size)
    lens = np.arange(rows.size) * 10 + 10
    k = ctl.allocator.tracker.difficulty(rows)
    assert (k <= 0.1).any() and (k > 0.1).any()
    expected = grpo_advantages(length_bias_scores(scores, lens, k, 0.001, 0.1), rows)
    adv = ctl.advantages(scores, rows, lengths=lens)
    np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-15)
    assert np.any(adv[k <= 0.1] != 0) and np.all(adv[k > 0.1] == 0)  # all-correct hard groups stay 0
    with pytest.raises(ValueError, match="lengths"):
        ctl.advantages(scores, rows)


def test_length_bias_spares_prompts_not_ranked_yet():
    """Before the first epoch-end ranking no prompt is known to be easy: unranked prompts count as the hardest, as
    in the authors' code, so the length bias leaves them alone and the advantages are plain GRPO's."""
    ctl = make(E3Config.from_dict({"advantage": {"length_bias": True}}))
    rows = np.array([100, 100, 100, 100])
    adv = ctl.advantages([1.0, 1.0, 1.0, 0.0], rows, lengths=[100, 200, 300, 50])
    # mean 0.75, std (N-1) 0.5: A = [0.25, 0.25, 0.25, -0.75] / 0.5 (a penalty would give [0.666, 0.486, 0.334, -1.486])
    np.testing.assert_allclose(adv, [0.5, 0.5, 0.5, -1.5], rtol=0, atol=1e-5)


def test_online_curriculum_window():
    cfg = E3Config.from_dict({"curriculum": {"enable": True, "window_ratio": 0.2}})
    ctl = make(cfg, batch_size=BATCH)
    assert ctl.num_candidates == 40
    ppl = np.arange(40, 0, -1, dtype=float)
    assert sorted(ctl.select_window(ppl).tolist()) == list(range(32, 40))  # step 0: the easiest 8
    with pytest.raises(ValueError, match="batch_size and max_steps"):
        make(cfg)
    with pytest.raises(RuntimeError, match="curriculum"):
        make().select_window(ppl)


@pytest.mark.parametrize("roundtrip", [lambda s: s, "torch"])
def test_offline_curriculum_is_owned_by_the_controller_and_resumes_identically(roundtrip):
    """PREPO offline: the engine hands over the scores once; batches, metrics and state come from the controller."""
    from roundtrip import torch_roundtrip

    cfg = E3Config.from_dict({"curriculum": {"enable": True, "mode": "offline", "window_ratio": 0.25}})
    ppl = np.linspace(3.0, 1.0, PROMPTS.size)  # the last dataset rows are the easiest
    ctl = make(cfg)
    assert ctl.paces_offline and ctl.num_candidates is None
    with pytest.raises(RuntimeError, match="pace_offline"):
        ctl.paced_prompts(BATCH)
    ctl.pace_offline(PROMPTS, ppl, seed=3)
    first = ctl.paced_prompts(BATCH)
    assert set(first.tolist()) <= set(PROMPTS[-8:].tolist())  # step 0: inside the window of the 8 easiest
    rows = np.repeat(first, N)
    metrics = ctl.observe(rows, np.ones(rows.size), 1.0)
    assert metrics["curriculum/progress"] == 0.0 and metrics["curriculum/window_start"] == 0
    assert metrics["curriculum/ppl_mean"] == pytest.approx(ppl[np.isin(PROMPTS, first)].mean())
    state = ctl.state_dict() if roundtrip != "torch" else torch_roundtrip(ctl.state_dict())
    restored = make(cfg)  # never scored: the window is rebuilt from the checkpoint
    restored.load_state_dict(state)
    for _ in range(STEPS_PER_EPOCH * EPOCHS - 1):
        a, b = ctl.paced_prompts(BATCH), restored.paced_prompts(BATCH)
        assert a.tolist() == b.tolist()
        ma = ctl.observe(np.repeat(a, N), np.zeros(a.size * N), 1.0)
        mb = restored.observe(np.repeat(b, N), np.zeros(b.size * N), 1.0)
        assert ma == mb
    assert set(a.tolist()) <= set(PROMPTS[:8].tolist())  # the last step: the 8 hardest
    with pytest.raises(ValueError, match="offline curriculum state"):
        make(cfg).load_state_dict(make(E3Config()).state_dict())
    with pytest.raises(RuntimeError, match="mode=offline"):
        make().pace_offline(PROMPTS, ppl)


def test_engines_import_no_pacer():
    """The engines carry the controller's curriculum decisions; none of them builds a pacer itself."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "e3" / "engines"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "e3.curriculum", path
            elif isinstance(node, ast.Import):
                assert all(a.name != "e3.curriculum" for a in node.names), path


def test_end_epoch_needs_dataset_indices():
    ctl = E3Controller(E3Config(), N, VOCAB, max_steps=10)
    with pytest.raises(RuntimeError, match="dataset_indices"):
        ctl.end_epoch()


from roundtrip import pickle_roundtrip as _pickle  # noqa: E402
from roundtrip import torch_roundtrip as _torch_save  # noqa: E402


@pytest.mark.parametrize("roundtrip", [_pickle, _torch_save])
def test_state_round_trip_gives_identical_next_plans(roundtrip):
    cfg = E3Config.from_dict({"weighting": {"enable": True}})
    # 16 dataset rows are never sampled: they tie at the prior with the never-solved prompt and share its rank
    dataset = np.concatenate([PROMPTS, np.arange(500, 516)])
    original = make(cfg, max_steps=20, dataset=dataset)
    run_epochs(original, epochs=2)  # mid-run: ranked twice, temperature moved, bounds [4, 12]
    restored = make(cfg, max_steps=20, dataset=dataset)
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert (restored.step, restored.epoch) == (original.step, original.epoch) == (8, 2)

    def continue_run(ctl):
        out = []
        for (p, rows, scores, adv, m) in run_epochs(ctl, seed=11, epochs=2, entropy=lambda t: 0.9 + 0.01 * t):
            m = {k: v for k, v in m.items() if k != "rollout/n_hist"}
            out.append((p.indices.tolist(), p.n_per_prompt.tolist(), p.temperature, adv.tolist(), m))
        out.append(ctl.allocator.tracker.difficulty(dataset).tolist())
        return out

    a, b = continue_run(original), continue_run(restored)
    assert a == b
    assert len({tuple(n) for _, n, *_ in a[:-1]}) > 1  # decisions are not trivially constant
    assert a[0][2] != 1.0


def test_kl_terms_are_added_after_the_length_bias_decided_on_the_raw_score():
    """verl's KL-in-reward: return = raw score + KL term. Correctness (and so the length bias) is the raw score: a
    wrong answer with a positive return is not 'correct', a correct one keeps its KL term."""
    ctl = make(E3Config.from_dict({"advantage": {"length_bias": True, "length_rank_threshold": 1.0}}))
    run_epochs(ctl, epochs=1)  # every prompt ranked, threshold 1: every prompt is 'easy'
    rows = np.array([100, 100, 100, 100])
    raw = np.array([1.0, 1.0, 0.0, 0.0])
    kl = np.array([-0.2, 0.1, 0.3, -0.1])  # rollout 2 is wrong, but its KL-penalised return 0.3 is > 0
    lens = np.array([100.0, 200.0, 300.0, 50.0])
    adv = ctl.advantages(raw, rows, lengths=lens, kl_terms=kl)
    # 1 / (1 + 0.001 l) for the two correct ones, then + KL: [1/1.1 - 0.2, 1/1.2 + 0.1, 0.3, -0.1]
    returns = np.array([1 / 1.1 - 0.2, 1 / 1.2 + 0.1, 0.3, -0.1])
    np.testing.assert_allclose(adv, grpo_advantages(returns, rows), rtol=0, atol=1e-12)
    k = ctl.allocator.tracker.difficulty(rows)
    old = grpo_advantages(length_bias_scores(raw + kl, lens, k, 0.001, 1.0), rows)  # bias on the penalised return
    assert not np.allclose(adv, old)


def test_groups_are_the_group_ids_and_difficulty_stays_per_index():
    """One prompt dispatched twice in a step (verl: two uids) is two GRPO groups, normalised separately."""
    ctl = make()
    rows = np.array([100, 100, 100, 100, 100, 100])
    uids = np.array(["u1", "u1", "u1", "u2", "u2", "u2"])
    scores = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    adv = ctl.advantages(scores, rows, group_ids=uids)
    np.testing.assert_allclose(adv, np.concatenate([grpo_advantages(scores[:3], [0] * 3),
                                                    grpo_advantages(scores[3:], [0] * 3)]), rtol=0, atol=1e-15)
    assert not np.allclose(adv, grpo_advantages(scores, rows))  # pooled by index it would differ
    ctl.plan(np.array([100, 100]))
    ctl.observe(rows, scores, 1.0)
    tracker = ctl.allocator.tracker
    assert tracker.counts(np.array([100])).tolist() == [6]  # one record for the index, all six rollouts
    assert tracker.accuracy(np.array([100])).tolist() == [0.5]


def test_dr_grpo_through_the_controller():
    ctl = make(E3Config.from_dict({"advantage": {"norm_by_std": False}}))
    rows = np.array([100, 100, 100, 101, 101])
    adv = ctl.advantages([1.0, 0.0, 0.0, 1.0, 0.0], rows)
    np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, 0.5, -0.5], rtol=0, atol=1e-15)


def test_tau_is_emitted_on_the_logits_dtype_grid_while_the_scheduler_keeps_the_exact_value():
    from e3.temperature import representable

    ctl = make(tau_dtype="bf16")
    run_epochs(ctl, epochs=1)  # falling entropy: tau rises off 1.0
    exact = ctl.scheduler.temperature
    assert exact != representable(exact, "bf16")  # the exact tau is not on the bf16 grid ...
    assert ctl.temperature == representable(exact, "bf16")  # ... the emitted one is
    plan = ctl.plan(PROMPTS[:8])
    assert plan.temperature == ctl.temperature
    m = ctl.observe(plan.rollout_indices(), np.ones(plan.total), 1.0)
    assert m["rollout/temperature"] == plan.temperature
    assert make().temperature == 1.0 and make(tau_dtype=None).scheduler.temperature == 1.0
    with pytest.raises(ValueError, match="logits dtype"):
        make(tau_dtype="fp8")


def test_scheduler_off_takes_a_tau_0_outside_the_clamps():
    """An ablation at a fixed tau: the clamps bound the scheduler only, so tau_0 = 0.3 with TS off is fine."""
    ctl = make(E3Config.from_dict({"temperature": {"enable": False, "init_temperature": 0.3}}))
    assert ctl.plan(PROMPTS[:8]).temperature == 0.3
    with pytest.raises(ValueError, match="e3.temperature.init_temperature"):
        E3Config.from_dict({"temperature": {"init_temperature": 0.3}})  # scheduler on: within [tau_min, tau_max]


def test_plans_ahead_of_the_observations_leave_the_observation_unchanged():
    """verl's colocate_async dispatches before it trains (warm-up and step 1 both plan before step 1 trains, and
    each later step plans its dispatch before training an older one): a plan that no observe follows changes
    neither the step counter, the scheduler nor the difficulty records; ``rollout/temperature`` reports the latest
    plan (so the asynchronous trainer logs the tau of what it trained itself)."""
    ahead, plain = make(), make()
    warmup, first = ahead.plan(PROMPTS[:8]), ahead.plan(PROMPTS[8:16])
    assert warmup.total == first.total == 8 * N and warmup.temperature == first.temperature == 1.0
    only = plain.plan(PROMPTS[:8])
    assert only.n_per_prompt.tolist() == warmup.n_per_prompt.tolist()
    rows = warmup.rollout_indices()
    scores = (np.arange(rows.size) % 3 == 0).astype(float)
    m_ahead, m_plain = ahead.observe(rows, scores, 1.2), plain.observe(rows, scores, 1.2)
    assert ahead.step == plain.step == 1
    assert ahead.scheduler.state_dict() == plain.scheduler.state_dict()
    assert ahead.allocator.tracker.state_dict() == plain.allocator.tracker.state_dict()
    assert ahead.allocator.tracker.counts(PROMPTS[8:16]).tolist() == [0] * 8  # planned, not yet trained
    same = {k for k in m_plain if not k.startswith(("rollout/n_", "allocation/"))}
    assert {k: m_ahead[k] for k in same} == {k: m_plain[k] for k in same}
    assert m_ahead["rollout/temperature"] == first.temperature
