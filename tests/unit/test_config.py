"""The typed E3 config: paper defaults, validation on load naming the key, lossless round trip."""

import copy
import json
import re

import pytest

from e3.schema import E3Config


def test_defaults_are_the_paper_values():
    c = E3Config()
    a, t, cu, w, ad = c.allocation, c.temperature, c.curriculum, c.weighting, c.advantage
    # E3 section 4: dynamic rollout on, n_min/n_max move by 2 per epoch within [4, 12], unseen prompts are hardest
    assert (a.enable, a.policy, a.n_update, a.n_low, a.n_high, a.prior_accuracy) == (True, "e3", 2, 4, 12, 0.0)
    # E3 Eq. 4-5: tau_0 = 1, one warm-up step, annealing over the last 40 % down to eta = 0.9
    assert (t.enable, t.init_temperature, t.warmup_steps, t.anneal, t.anneal_ratio, t.anneal_floor) == (
        True, 1.0, 1, True, 0.4, 0.9)
    assert (t.tau_min, t.tau_max) == (0.5, 2.0)
    # PREPO: K/|B| = 20 %, both PREPO pieces off so the default run is E3
    assert (cu.enable, cu.window_ratio, cu.mode) == (False, 0.2, "online")
    assert (w.enable, w.token_weighted, w.clip_min, w.clip_max) == (False, False, None, None)
    # GRPO eps 1e-6; length bias off, suggested mu = 0.001 for k <= 0.1
    assert (ad.eps, ad.length_bias, ad.length_penalty_coeff, ad.length_rank_threshold) == (1e-6, False, 0.001, 0.1)
    assert c.reward.timeout > 0
    assert E3Config.from_dict(None) == c and E3Config.from_dict({}) == c


def test_round_trip_to_dict_from_dict():
    d = {"allocation": {"n_update": 1, "n_low": 2, "n_high": 16, "seed": 7},
         "temperature": {"init_temperature": 0.8, "warmup_steps": 3, "tau_min": 0.6},
         "curriculum": {"enable": True, "mode": "offline", "window_ratio": 0.5},
         "weighting": {"enable": True, "token_weighted": True, "clip_min": 0.5, "clip_max": 2.0},
         "advantage": {"length_bias": True}, "reward": {"timeout": 2.5, "workers": 3}}
    c = E3Config.from_dict(d)
    assert c.allocation.n_high == 16 and c.temperature.warmup_steps == 3 and c.weighting.clip_max == 2.0
    again = E3Config.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.to_dict() == c.to_dict()


def test_int_is_accepted_for_a_float_field():
    c = E3Config.from_dict({"temperature": {"tau_max": 3}})
    assert c.temperature.tau_max == 3.0 and isinstance(c.temperature.tau_max, float)


@pytest.mark.parametrize("data, key", [
    ({"allocaton": {}}, "e3.allocaton"),
    ({"allocation": {"n_hi": 12}}, "e3.allocation.n_hi"),
    ({"temperature": {"tau": 1.0}}, "e3.temperature.tau"),
    ({"reward": {"timeout_s": 1.0}}, "e3.reward.timeout_s"),
])
def test_unknown_key_raises_naming_it(data, key):
    with pytest.raises(ValueError, match="unknown config key " + re.escape(key) + r"\b"):
        E3Config.from_dict(data)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown config key e3\.reward\.timeout_s \(known: timeout, workers\)"):
        E3Config.from_dict({"reward": {"timeout_s": 1.0}})


def test_schema_is_omegaconf_structured_with_the_paper_defaults():
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(E3Config)
    assert OmegaConf.get_type(schema.allocation).__name__ == "AllocationConfig"
    assert OmegaConf.to_object(schema) == E3Config()
    assert E3Config.from_dict(OmegaConf.merge(schema, {"temperature": {"anneal": False}})).temperature.anneal is False


@pytest.mark.parametrize("data, key", [
    ({"allocation": {"n_low": "four"}}, "e3.allocation.n_low"),
    ({"allocation": {"n_low": 4.5}}, "e3.allocation.n_low"),
    ({"allocation": {"enable": "maybe"}}, "e3.allocation.enable"),
    ({"allocation": {"n_update": True}}, "e3.allocation.n_update"),
    ({"temperature": {"tau_max": "hot"}}, "e3.temperature.tau_max"),
    ({"temperature": {"anneal": "sometimes"}}, "e3.temperature.anneal"),
    ({"curriculum": {"mode": 3}}, "e3.curriculum.mode"),  # converted to "3", then refused by the range check
    ({"weighting": "off"}, "e3.weighting"),
])
def test_wrong_type_raises_naming_the_key(data, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        E3Config.from_dict(data)


def test_values_are_converted_as_omegaconf_and_hydra_convert_them():
    # the same conversions as a hydra override on the command line (e3.allocation.n_low=4 arrives as a string
    # from some callers): a numeric string for a number, true/false/yes/no for a bool
    c = E3Config.from_dict({"allocation": {"n_low": "4", "enable": "false"}, "temperature": {"tau_max": "2"},
                            "reward": {"workers": "3"}})
    assert (c.allocation.n_low, c.allocation.enable, c.temperature.tau_max, c.reward.workers) == (4, False, 2.0, 3)
    assert isinstance(c.temperature.tau_max, float)


@pytest.mark.parametrize("data, key", [
    ({"weighting": {"clip_min": "abc"}}, "e3.weighting.clip_min"),
    ({"reward": {"workers": "four"}}, "e3.reward.workers"),
    ({"reward": {"workers": 2.5}}, "e3.reward.workers"),  # not 2.5 worker processes
    ({"allocation": {"n_low": None}}, "e3.allocation.n_low"),
    ({"temperature": {"tau_min": None}}, "e3.temperature.tau_min"),
])
def test_wrong_type_of_optional_or_null_raises_value_error_naming_the_key(data, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        E3Config.from_dict(data)


@pytest.mark.parametrize("value", [False, 0, []])
def test_falsy_non_mapping_section_raises(value):
    with pytest.raises(ValueError, match=r"e3\.allocation must be a mapping"):
        E3Config.from_dict({"allocation": value})


@pytest.mark.parametrize("data, key", [
    ({"allocation": {"n_low": 1}}, "e3.allocation.n_low"),
    ({"allocation": {"n_low": 6, "n_high": 5}}, "e3.allocation.n_high"),
    ({"allocation": {"policy": " "}}, "e3.allocation.policy"),
    ({"allocation": {"prior_accuracy": 1.5}}, "e3.allocation.prior_accuracy"),
    ({"allocation": {"n_update": -1}}, "e3.allocation.n_update"),
    ({"temperature": {"warmup_steps": 0}}, "e3.temperature.warmup_steps"),
    ({"temperature": {"anneal_ratio": 0.0}}, "e3.temperature.anneal_ratio"),
    ({"temperature": {"anneal_floor": 1.2}}, "e3.temperature.anneal_floor"),
    ({"temperature": {"tau_min": 1.5, "tau_max": 1.2}}, "e3.temperature.tau_min"),
    ({"temperature": {"init_temperature": 2.5}}, "e3.temperature.init_temperature"),
    ({"curriculum": {"window_ratio": 0.0}}, "e3.curriculum.window_ratio"),
    ({"curriculum": {"mode": "sometimes"}}, "e3.curriculum.mode"),
    ({"weighting": {"clip_min": 2.0, "clip_max": 1.0}}, "e3.weighting.clip_min"),
    ({"weighting": {"clip_max": float("inf")}}, "e3.weighting.clip_max"),
    ({"advantage": {"eps": 0.0}}, "e3.advantage.eps"),
    ({"advantage": {"length_rank_threshold": 2.0}}, "e3.advantage.length_rank_threshold"),
    ({"reward": {"timeout": 0.0}}, "e3.reward.timeout"),
    ({"reward": {"workers": 0}}, "e3.reward.workers"),
])
def test_invalid_value_raises_naming_the_key(data, key):
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        E3Config.from_dict(data)
    assert str(err.value).startswith(f"config key {key} ")  # a range or a rule, not a type error ("key: ...")


def test_custom_where_prefix():
    with pytest.raises(ValueError, match=r"unknown config key cfg\.e3\.allocation\.x"):
        E3Config.from_dict({"allocation": {"x": 1}}, where="cfg.e3")


def test_from_dict_leaves_its_input_alone():
    d = {"temperature": {"tau_min": 1, "init_temperature": 1}}
    before = copy.deepcopy(d)
    E3Config.from_dict(d)
    assert d == before and type(d["temperature"]["tau_min"]) is int
