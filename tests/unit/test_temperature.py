"""E3 Eq. 4 (entropy-targeting temperature) and Eq. 5 (cosine annealing of the target), with our clamps."""

import json
import math
import pickle

import pytest

from e3.temperature import TemperatureScheduler, annealed_target, temperature_update, vocab_scale

QWEN_VOCAB = 151_936


def test_vocab_scale_for_qwen_by_hand():
    # ln(151,936) = 11.931214658529285, ln(11.931214658529285) = 2.4791580463946503 -> sum 14.410372704923935
    assert vocab_scale(QWEN_VOCAB) == pytest.approx(14.410372704923935, abs=1e-12)
    assert round(vocab_scale(QWEN_VOCAB), 4) == 14.4104
    with pytest.raises(ValueError, match="vocab_size=2"):
        vocab_scale(2)


def test_one_eq4_step_by_hand():
    # tau_0 = 1, H_target = 1.0, H_t = 0.8:
    # tau_1 = 1 * (1 + 1 * ln(1.0 / 0.8) / 14.410372704923935) = 1 + 0.22314355131420976 / 14.4103727...
    #       = 1.0154849257464356
    assert temperature_update(1.0, 0.8, 1.0, QWEN_VOCAB) == pytest.approx(1.0154849257464356, abs=1e-12)
    # tau_t = 1.2, H_target = 2.0, H_t = 1.6: 1.2 * (1 + 1.2 * ln(1.25) / 14.41037...) = 1.2222982930748674
    assert temperature_update(1.2, 1.6, 2.0, QWEN_VOCAB) == pytest.approx(1.2222982930748674, abs=1e-12)


def test_scheduler_first_step_defines_target_then_eq4():
    s = TemperatureScheduler(QWEN_VOCAB, max_steps=100)
    assert math.isnan(s.target_entropy) and s.temperature == 1.0
    assert s.step(1.0) == 1.0  # warm-up step at tau_0: H_init = 1.0, tau unchanged
    assert s.target_entropy == 1.0 and s.initial_entropy == 1.0
    # step 2 (before annealing starts at t_a = 60): entropy 0.8 below target -> Eq. 4 by hand above
    assert s.step(0.8) == pytest.approx(1.0154849257464356, abs=1e-12)
    assert s.temperature == pytest.approx(1.0154849257464356, abs=1e-12)


def test_direction_low_entropy_raises_tau_high_entropy_lowers_it():
    up = TemperatureScheduler(QWEN_VOCAB, anneal=False)
    up.step(1.0)
    assert up.step(0.9) > 1.0  # below target -> hotter
    down = TemperatureScheduler(QWEN_VOCAB, anneal=False)
    down.step(1.0)
    assert down.step(1.1) < 1.0  # above target -> cooler
    same = TemperatureScheduler(QWEN_VOCAB, anneal=False)
    same.step(1.0)
    assert same.step(1.0) == 1.0  # on target -> unchanged


def test_warmup_target_is_mean_of_first_warmup_entropies():
    s = TemperatureScheduler(QWEN_VOCAB, warmup_steps=3, anneal=False, init_temperature=1.1)
    assert s.step(0.9) == 1.1 and s.step(1.2) == 1.1
    assert math.isnan(s.target_entropy)
    assert s.step(1.5) == 1.1  # third warm-up step still at tau_0
    assert s.target_entropy == pytest.approx((0.9 + 1.2 + 1.5) / 3)  # 1.2
    # first Eq. 4 step: ln(1.2 / 1.0) = 0.18232155679395462; 1.1 * 0.1823... / 14.410372704923935 = 0.0139173162;
    # tau = 1.1 * (1 + 0.0139173162) = 1.1153090477420688
    assert s.step(1.0) == pytest.approx(1.1153090477420688, abs=1e-12)


def test_annealed_target_by_hand():
    # max_steps = 100, ratio 0.4: t_a = 100 - floor(40) = 60. step 80: p = 20/40 = 0.5, cos(pi/2) = 0
    # H(80) = H_init * (0.9 + 0.1 * (1 + 0) / 2) = 0.95 * H_init
    assert annealed_target(2.0, 80, 100) == pytest.approx(1.9, abs=1e-12)
    assert annealed_target(2.0, 59, 100) == 2.0
    assert annealed_target(2.0, 60, 100) == pytest.approx(2.0, abs=1e-12)  # p = 0: cos 0 = 1
    assert annealed_target(2.0, 100, 100) == pytest.approx(1.8, abs=1e-12)  # p = 1: eta * H_init
    # step 70: p = 0.25 -> 0.9 + 0.1 * (1 + cos(pi/4)) / 2 = 0.9 + 0.05 * 1.7071067811865475 = 0.9853553390593274
    assert annealed_target(1.0, 70, 100) == pytest.approx(0.9853553390593274, abs=1e-12)


def test_annealed_target_is_non_increasing_and_ends_at_floor():
    vals = [annealed_target(1.0, t, 50, 0.4, 0.9) for t in range(1, 51)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert vals[0] == 1.0 and vals[-1] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="max_steps > 0, got 0"):
        annealed_target(1.0, 1, 0)


def test_target_stays_at_the_floor_past_max_steps():
    """A run longer than max_steps keeps the annealed target eta * H_init: p is clamped to 1 (without the clamp
    cos(pi * p) climbs back, e.g. step 140 of 100 would give H_init again)."""
    for step in (100, 101, 120, 140, 160, 1000):
        assert annealed_target(2.0, step, 100) == pytest.approx(1.8, abs=1e-12), step
    s = TemperatureScheduler(QWEN_VOCAB, max_steps=10)
    s.step(1.0)  # H_init = 1.0
    for _ in range(25):
        s.step(1.0)
    assert s.target_entropy == pytest.approx(0.9, abs=1e-12)


def test_scheduler_target_follows_annealing_through_steps():
    s = TemperatureScheduler(QWEN_VOCAB, max_steps=100, anneal_ratio=0.4, anneal_floor=0.9)
    s.step(2.0)  # H_init = 2.0
    targets = {}
    for t in range(2, 101):
        s.step(2.0)
        targets[t] = s.target_entropy
    assert targets[59] == 2.0
    assert targets[80] == pytest.approx(1.9, abs=1e-12)
    assert targets[100] == pytest.approx(0.9 * 2.0, abs=1e-12)


def test_annealing_lowers_target_so_tau_falls_at_constant_entropy():
    s = TemperatureScheduler(QWEN_VOCAB, max_steps=20)
    s.step(1.0)
    taus = [s.step(1.0) for _ in range(19)]
    t_a = 20 - 8
    assert all(t == 1.0 for t in taus[: t_a - 2])  # steps 2..t_a: on target
    assert taus[-1] < taus[t_a]  # annealed target below the entropy -> cooler


@pytest.mark.parametrize("max_steps", [None, 0, -5])
def test_anneal_refuses_unknown_run_length(max_steps):
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        TemperatureScheduler(QWEN_VOCAB, max_steps=max_steps, anneal=True)
    TemperatureScheduler(QWEN_VOCAB, max_steps=max_steps, anneal=False)  # fine without annealing


@pytest.mark.parametrize("kwargs", [dict(init_temperature=3.0), dict(tau_min=0.0), dict(warmup_steps=0),
                                    dict(tau_min=1.5, tau_max=1.2, init_temperature=1.3)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        TemperatureScheduler(QWEN_VOCAB, anneal=False, **kwargs)


def test_clamped_to_tau_max_and_tau_min():
    hot = TemperatureScheduler(QWEN_VOCAB, anneal=False, tau_max=1.3)
    hot.step(1.0)
    # entropy collapse: 1 * (1 + ln(1/1e-6) / 14.41) = 1.9587 > 1.3 -> clamped
    assert hot.step(1e-6) == 1.3
    assert hot.step(1e-6) == 1.3
    cold = TemperatureScheduler(QWEN_VOCAB, anneal=False, tau_min=0.6)
    cold.step(1.0)
    # entropy blow-up: 1 * (1 + ln(1e-6) / 14.41) = 0.0413 < 0.6 -> clamped
    assert cold.step(1e6) == 0.6
    # from the clamp, Eq. 4 continues with tau = 0.6: 0.6 * (1 + 0.6 * ln(1/0.5) / 14.41037...)
    assert cold.step(0.5) == pytest.approx(0.6 * (1 + 0.6 * math.log(2.0) / 14.410372704923935), abs=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 0.0, -1.0])
def test_invalid_entropy_keeps_tau_and_is_counted(bad, caplog):
    s = TemperatureScheduler(QWEN_VOCAB, anneal=False)
    assert s.step(bad) == 1.0  # during warm-up: not taken as H_init
    assert s.initial_entropy is None
    s.step(1.0)
    tau = s.step(0.8)
    assert s.step(bad) == tau
    assert s.temperature == tau
    assert s.metrics()["rollout/invalid_entropy"] == 2
    assert s.target_entropy == 1.0
    assert "invalid entropy" in caplog.text


def test_metrics_names_and_values():
    s = TemperatureScheduler(QWEN_VOCAB, anneal=False)
    s.step(1.0)
    s.step(0.8)
    m = s.metrics()
    assert m["rollout/temperature"] == s.temperature
    assert m["rollout/target_entropy"] == 1.0
    assert m["rollout/entropy"] == 0.8
    assert m["rollout/invalid_entropy"] == 0


@pytest.mark.parametrize("roundtrip", [lambda d: pickle.loads(pickle.dumps(d)), lambda d: json.loads(json.dumps(d))],
                         ids=["pickle", "json"])
def test_state_round_trip_gives_same_outputs(roundtrip):
    entropies = [1.0, 0.9, 1.1, float("nan"), 0.7, 1.3, 0.95, 1.02, 0.88, 1.0, 0.99, 1.05]
    a = TemperatureScheduler(QWEN_VOCAB, warmup_steps=2, max_steps=14)
    for h in entropies[:5]:
        a.step(h)
    b = TemperatureScheduler(QWEN_VOCAB, warmup_steps=2, max_steps=14)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert b.temperature == a.temperature and b.target_entropy == a.target_entropy
    outs_a = [(a.step(h), a.target_entropy) for h in entropies[5:]]
    outs_b = [(b.step(h), b.target_entropy) for h in entropies[5:]]
    assert outs_a == outs_b
    assert outs_a[-1][1] < outs_a[0][1]  # the continuation reached the annealing phase
    assert a.metrics() == b.metrics()


def test_representable_tau_is_what_the_trainer_casts_it_to():
    import torch

    from e3.temperature import representable

    # bf16 has 8 significant bits: 0.6 -> 0.6015625 (= 77/128), 1.0 stays; fp16 11 bits: 0.6 -> 0.60009765625
    assert representable(0.6, "bf16") == 0.6015625 and representable(1.0, "bf16") == 1.0
    assert representable(0.6, "fp16") == 0.60009765625
    assert representable(0.6, "fp32") == float(torch.tensor(0.6, dtype=torch.float32))
    for tau in (0.5, 0.73, 0.6015625, 1.2345678, 1.999):
        for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
            r = representable(tau, dtype)
            # what verl's engine divides by: tau -> float32 -> logits dtype; a representable tau survives both casts
            assert float(torch.tensor(r, dtype=torch.float32).to(torch_dtype)) == r
            assert abs(r - tau) <= abs(tau) * {"bf16": 2 ** -8, "fp16": 2 ** -11, "fp32": 2 ** -24}[dtype]
        assert representable(representable(tau, "bf16"), "fp16") == representable(tau, "bf16")  # bf16 grid in fp16
    with pytest.raises(ValueError, match="logits dtype 'int8'"):
        representable(1.0, "int8")
