"""The checks declared with the config fields (``e3.schema.checked``): every one of them, found by walking the
schemas, refuses a bad value and names its full key, so a new checked field is covered without a new test."""

import dataclasses
import math
import re
import typing
from types import SimpleNamespace

import pytest

from e3.engines.local.schema import ConfigError, LocalConfig, from_any
from e3.engines.verl.cpu.tiny import CpuTinyOptions, load_options
from e3.schema import CHECK, AllocationConfig, E3Config, Each, NonEmpty, OneOf, Range

try:
    from e3.engines.verl.cpu.hf_rollout import OPTIONS_KEY, HFOptions, backend_options
except ImportError:  # no verl: the hf rollout's options are not checked here
    HFOptions = None


def declared(cls, where=""):
    """(full key, check) of every checked field of ``cls`` and of the dataclasses in it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.metadata.get(CHECK) is not None:
            yield key, f.metadata[CHECK]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from declared(hints[f.name], key)


def bad_values(check) -> list:
    """Values the check must refuse (each of its bounds crossed, a choice not offered, ...)."""
    if isinstance(check, Range):
        out = [check.ge - 1] if check.ge is not None else [check.gt] if check.gt is not None else []
        out += [check.le + 1] if check.le is not None else [check.lt] if check.lt is not None else []
        return out + ([math.inf] if check.finite else [])
    if isinstance(check, OneOf):
        return ["none of " + "/".join(check.choices)]
    if isinstance(check, NonEmpty):
        return ["", "  "]
    if isinstance(check, Each):
        return [[value] for value in bad_values(check.check)]
    raise AssertionError(f"no bad value known for {check!r}: add its kind to bad_values")


def nested(key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def load_e3(key, value):
    E3Config.from_dict(nested(key.removeprefix("e3."), value))


def load_local(key, value):
    from_any(nested(key, value))


def load_hf(key, value):
    backend_options(SimpleNamespace(engine_kwargs={"hf": {key.rsplit(".", 1)[1]: value}}))


def load_cpu_tiny(key, value):
    load_options(nested(key.removeprefix("cpu_tiny."), value))


ROOTS = [(E3Config, "e3", load_e3), (LocalConfig, "", load_local), (CpuTinyOptions, "cpu_tiny", load_cpu_tiny)]
if HFOptions is not None:
    ROOTS.append((HFOptions, OPTIONS_KEY, load_hf))
CASES = [(key, value, load) for cls, where, load in ROOTS for key, check in declared(cls, where)
         for value in bad_values(check)]


def test_the_walk_finds_the_checked_fields_of_every_schema():
    keys = {key for key, _, _ in CASES}
    assert {"e3.allocation.n_low", "e3.temperature.tau_min", "e3.weighting.clip_max", "e3.validation.pass_k",
            "trainer.total_steps", "trainer.logger", "device", "rollout.n", "val.pass_k"} <= keys
    assert len(keys) >= 50
    assert {"cpu_tiny.val_fraction", "cpu_tiny.model.hidden_size", "cpu_tiny.warm_start.steps"} <= keys
    if HFOptions is not None:
        assert f"{OPTIONS_KEY}.max_batch" in keys


@pytest.mark.parametrize("key, value, load", CASES, ids=[f"{key}={value!r}" for key, value, _ in CASES])
def test_every_declared_check_refuses_a_bad_value_naming_its_key(key, value, load):
    with pytest.raises(ValueError) as err:
        load(key, value)
    message = str(err.value)  # the check's "config key <key> must ...", not a type error's "config key <key>: ..."
    assert message.startswith((f"config key {key} must ", f"config key {key} entries must ")), message
    if load is load_local:
        assert isinstance(err.value, ConfigError)


@pytest.mark.skipif(HFOptions is None, reason="verl is not installed")
def test_hf_rollout_options_arrive_as_verl_gives_them():
    from omegaconf import OmegaConf

    given = OmegaConf.create({"hf": {"max_batch": "8", "request_log": "/tmp/requests.jsonl"}, "vllm": {}})
    opts = backend_options(SimpleNamespace(engine_kwargs=given))  # verl's rollout config: engine_kwargs a mapping
    assert (opts.max_batch, opts.batch_wait_ms, opts.threads, opts.request_log) == (8, 5.0, 0, "/tmp/requests.jsonl")
    assert backend_options(SimpleNamespace(engine_kwargs={})) == HFOptions() == backend_options(SimpleNamespace())
    key = re.escape(OPTIONS_KEY)
    with pytest.raises(ValueError, match=rf"^unknown config key {key}\.max_batches \(known: max_batch, "):
        backend_options(SimpleNamespace(engine_kwargs={"hf": {"max_batches": 8}}))
    with pytest.raises(ValueError, match=rf"^config key {key} must be a mapping"):
        backend_options(SimpleNamespace(engine_kwargs={"hf": 8}))


def test_checks_render_their_bounds():
    assert Range(ge=0, lt=1).problem(1.0) == "must be in [0, 1), got 1.0"
    assert Range(gt=0, le=1).problem(0) == "must be in (0, 1], got 0"
    assert Range(ge=2, why="a group of one has no baseline").problem(1) == \
        "must be >= 2 (a group of one has no baseline), got 1"
    assert Range(ge=0, finite=True).problem(math.inf) == "must be finite and >= 0, got inf"
    assert Range(gt=0).problem(math.nan) == "must be > 0, got nan"
    assert Range(gt=0).problem(1e-9) is None and Range(ge=0, le=1).problem(1) is None
    assert OneOf("auto", "cpu", "cuda").problem("gpu") == "must be auto, cpu or cuda, got 'gpu'"
    assert OneOf("online").problem("x") == "must be online, got 'x'" and OneOf("a", "b").problem("b") is None
    assert Each(Range(ge=1)).problem([1, 0, -1]) == "entries must be >= 1, got 0"
    assert Each(Range(ge=1)).problem([]) is None


def test_null_passes_only_where_the_type_allows_it():
    assert E3Config.from_dict({"reward": {"workers": None}}).reward.workers is None  # Optional[int]
    built_in_python = E3Config(allocation=AllocationConfig(n_low=None))  # no OmegaConf on the way
    with pytest.raises(ValueError, match=r"^config key e3\.allocation\.n_low must be >= 2 .*, got None$"):
        built_in_python.check()


def test_field_checks_run_before_the_rules_across_fields():
    # num_heads=0 would divide by zero in model's rule; rollout.n=1 is refused as a field, not as outside [4, 12]
    with pytest.raises(ConfigError, match=r"^config key model\.num_heads must be >= 1, got 0$"):
        from_any({"model": {"num_heads": 0}})
    with pytest.raises(ConfigError, match=r"^config key rollout\.n must be >= 2"):
        from_any({"rollout": {"n": 1}})
    with pytest.raises(ConfigError, match=r"^config key trainer\.mini_batches must divide"):
        from_any({"trainer": {"mini_batches": 3}})
