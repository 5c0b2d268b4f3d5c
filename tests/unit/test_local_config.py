"""The local engine's configs, composed by the real Hydra (compose API, defaults lists, search path) over the typed
schema ``LocalConfig``: every shipped config loads, user files build on the shipped ones, bad keys are named."""

import os
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import e3
from e3.schema import E3Config
from e3.engines.local.engine import main
from e3.engines.local.schema import (PACKAGE_CONFIG_DIR, ConfigError, LocalConfig, from_any, load_config,
                                     shipped_configs)

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = {"grpo": (False, False, False, False), "ts": (False, True, False, False),
             "ts_an": (False, True, False, False), "dr": (True, False, False, False), "e3": (True, True, False, False),
             "prepo": (False, False, True, True), "e3_prepo": (True, True, True, True)}


def test_configs_are_shipped_inside_the_package():
    # a non-editable install copies e3/config/**/*.yaml (package data): the loader looks next to the e3 package
    assert Path(PACKAGE_CONFIG_DIR).resolve().parent.parent == Path(e3.__file__).resolve().parent
    assert {"default", *ABLATIONS} <= set(shipped_configs())
    # the clone's configs/local is the same directory (paths like configs/local/grpo.yaml keep working)
    assert (REPO / "configs" / "local").resolve() == Path(PACKAGE_CONFIG_DIR).resolve()


def test_default_is_the_schema_defaults():
    cfg = load_config()
    assert OmegaConf.get_type(cfg) is LocalConfig
    assert OmegaConf.to_object(cfg) == LocalConfig()
    assert OmegaConf.to_object(cfg.e3) == E3Config()
    assert (cfg.trainer.total_steps, cfg.rollout.batch_size, cfg.rollout.n, cfg.trainer.lr) == (300, 32, 8, 3e-5)
    assert list(cfg.trainer.logger) == []  # metrics.jsonl and the progress bar only


def test_every_ablation_composes_and_switches_the_right_pieces():
    for name, (dr, ts, cur, w) in ABLATIONS.items():
        by_name, by_path = load_config(name), load_config(os.path.join(PACKAGE_CONFIG_DIR, f"{name}.yaml"))
        assert by_name == by_path
        e = by_name.e3
        assert (e.allocation.enable, e.temperature.enable, e.curriculum.enable, e.weighting.enable) == (dr, ts, cur, w)
        assert by_name.trainer == load_config().trainer  # the engine sections come from default
        raw = OmegaConf.load(os.path.join(PACKAGE_CONFIG_DIR, f"{name}.yaml"))
        assert list(raw.defaults) == ["default", "_self_"] and set(raw) <= {"defaults", "e3"}  # overlays stay small
    assert load_config("ts").e3.temperature.anneal is False and load_config("ts_an").e3.temperature.anneal is True


def test_user_overlay_outside_the_package_builds_on_the_shipped_default(tmp_path):
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        defaults: [grpo, _self_]
        trainer: {total_steps: 7}
        e3: {weighting: {enable: true}}
    """))
    cfg = load_config(str(tmp_path / "mine.yaml"), ["trainer.lr=1e-4"])
    assert (cfg.trainer.total_steps, cfg.trainer.lr, cfg.rollout.n) == (7, 1e-4, 8)
    assert cfg.e3.weighting.enable and not cfg.e3.allocation.enable  # grpo's switches, then the file's


def test_file_without_defaults_list_is_an_overlay_of_the_defaults(tmp_path):
    (tmp_path / "partial.yaml").write_text("trainer: {total_steps: 9}\n")
    cfg = load_config(str(tmp_path / "partial.yaml"), ["data.train_file=/data/x.jsonl", "task.levels=[2d+-1d,2d*1d]"])
    assert (cfg.trainer.total_steps, cfg.data.train_file, cfg.rollout.n) == (9, "/data/x.jsonl", 8)
    assert list(cfg.task.levels) == ["2d+-1d", "2d*1d"]


@pytest.mark.parametrize("overrides, message", [
    (["trainer.bogus=1"], "unknown config key trainer.bogus"),
    (["e3.temperature.nope=1"], "unknown config key e3.temperature.nope"),
    (["trainer.total_steps=abc"], "config key trainer.total_steps"),
    (["trainer.total_steps=0"], "config key trainer.total_steps must be >= 1"),
    (["task.val_fraction=0.6", "task.demo_fraction=0.5"], "config key task.demo_fraction"),
    (["task.levels=[3z]"], "config key task.levels bad level spec '3z'"),
    (["model.num_heads=3"], "config key model.hidden_size must be divisible"),
    (["rollout.n=13"], r"config key rollout.n must lie in \[e3.allocation.n_low"),
    (["trainer.logger=[console,foo]"], "config key trainer.logger"),
    (["device=gpu"], "config key device must be auto, cpu or cuda"),
    (["e3.allocation.n_low=1"], r"config key e3.allocation.n_low must be >= 2 \(a group of one has no baseline\)"),
    (["trainer.total_steps"], "must look like key=value"),
])
def test_bad_override_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_key_in_a_file_is_named(tmp_path):
    composed = tmp_path / "typo.yaml"  # schema in its defaults list: Hydra's composition refuses the key
    composed.write_text("defaults: [default, _self_]\ntrainer: {totl_steps: 9}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key trainer.totl_steps \(known: total_steps"):
        load_config(str(composed))
    plain = tmp_path / "plain.yaml"  # no defaults list: the merge over the schema refuses it
    plain.write_text("e3: {allocation: {n_hi: 12}}\n")
    with pytest.raises(ConfigError, match="unknown config key e3.allocation.n_hi"):
        load_config(str(plain))
    missing = tmp_path / "missing.yaml"
    missing.write_text("defaults: [defolt, _self_]\n")
    with pytest.raises(ConfigError, match="missing.yaml: .*defolt"):
        load_config(str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {total_steps: [9\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot read the config"):
        load_config(str(broken))


def test_unknown_config_name_or_missing_file():
    with pytest.raises(ConfigError, match=r"unknown config 'nope': .*shipped config \(chain, default, "):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found: /no/such.yaml"):
        load_config("/no/such.yaml")


def test_dict_configs_are_checked_against_the_same_schema():
    cfg = from_any({"trainer": {"total_steps": 5}, "e3": {"temperature": {"enable": False}}})
    assert cfg.trainer.total_steps == 5 and cfg.e3.temperature.enable is False and cfg.rollout.n == 8
    with pytest.raises(ConfigError, match="unknown config key warm_start.stepz"):
        from_any({"warm_start": {"stepz": 1}})


def test_cli_prints_the_composed_config_and_names_a_bad_key(capsys):
    assert main(["--config", "grpo", "--print-config", "trainer.total_steps=11"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.trainer.total_steps == 11 and printed.e3.allocation.enable is False
    assert main(["--print-config", "trainer.bogus=1"]) == 2
    assert "unknown config key trainer.bogus" in capsys.readouterr().err
