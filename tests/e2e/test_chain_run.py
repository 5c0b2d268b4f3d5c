"""End to end: a tiny real run of the local engine on the chain task (e3/config/local/chain.yaml shrunk).

What a user checks: the start-up report is printed and logged (never / always solved, per level), validation logs
``val/pass@K`` with standard errors for every K up to ``val.n_samples``, and those numbers are the unbiased
estimator applied to the per-problem counts the run wrote; GRPO steps run on scratchpad answers.
"""

import json
import os
import re
from math import comb

import numpy as np
import pytest
from omegaconf import OmegaConf

from e3.engines.local.engine import run
from e3.engines.local.schema import PACKAGE_CONFIG_DIR, ConfigError, load_config

CHAIN = os.path.join(PACKAGE_CONFIG_DIR, "chain.yaml")


@pytest.fixture(scope="module")
def ws_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("chain_ws"))


def tiny_chain(ws_cache) -> dict:
    cfg = load_config(CHAIN, [
        "threads=1", "device=cpu", "plots=false", "task.levels=[1d+1dx1,1d+-1dx2]", "task.train_size=32",
        "task.val_size=24", "task.report_samples=3", "task.chain.problems_per_level=300", "task.chain.demo_levels=null",
        "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
        "warm_start.steps=40", "warm_start.batch_size=64", "warm_start.lr=3e-3", "warm_start.min_lr=3e-4",
        "warm_start.warmup_steps=5", f"warm_start.cache_dir={ws_cache}", "rollout.batch_size=8", "rollout.n=4",
        "trainer.total_steps=3", "trainer.val_every=3", "trainer.save_every=3", "val.n_samples=4",
        "val.pass_k=[1,2,4,8]", "e3.allocation.n_low=2", "e3.allocation.n_high=6"])
    return OmegaConf.to_container(cfg)


def test_chain_run_reports_difficulty_and_pass_at_k(tmp_path, ws_cache, capsys):
    res = run(tiny_chain(ws_cache), run_dir=str(tmp_path / "run"))
    err = capsys.readouterr().err
    m0 = res.metrics[0]
    # the start-up report: printed, logged at step 0, shares adding up, one entry per level
    assert "difficulty of the 32 RL prompts for the warm start (3 samples each at T=1)" in err
    assert re.search(r"level 1 +1d\+-1dx2: pass rate", err)
    assert m0["task/prompts"] == 32 and m0["task/report_samples"] == 3
    assert m0["task/never_solved"] + m0["task/always_solved"] + m0["task/mixed"] == pytest.approx(1.0)
    for lv in (0, 1):
        assert 0.0 <= m0[f"task/pass_rate_level_{lv}"] <= 1.0
    assert m0["task/response_tokens_level_1"] > 1.0  # scratchpad answers take several tokens
    # pass@k at every validation, k <= n_samples only, with standard errors and paired changes after step 0
    vals = [m for m in res.metrics if "val/accuracy" in m]
    assert [m["step"] for m in vals] == [0, 3]
    for m in vals:
        assert {f"val/pass@{k}" for k in (1, 2, 4)} <= set(m) and "val/pass@8" not in m
        assert m["val/pass@1"] == pytest.approx(m["val/accuracy"])
        assert m["val/pass@1"] <= m["val/pass@2"] <= m["val/pass@4"]
        assert m["val/pass@4_stderr"] >= 0
    assert "val/pass@4_delta" in vals[-1] and "val/pass@4_delta_stderr" in vals[-1]
    # the logged numbers are Chen et al.'s estimator on the per-problem counts the run wrote

    with open(os.path.join(res.run_dir, "val", "step_000003.json")) as fh:
        per = json.load(fh)
    c = np.rint(np.array(per["val/accuracy"]) * 4).astype(int)
    for k in (2, 4):
        want = [1 - comb(4 - ci, k) / comb(4, k) for ci in c]
        assert per[f"val/pass@{k}"] == pytest.approx(want)
        assert vals[-1][f"val/pass@{k}"] == pytest.approx(np.mean(want))
    # RL steps ran on the chain task
    assert all(m["rollout/n_total"] == 32 for m in res.metrics[1:])


def test_chain_config_is_checked():
    with pytest.raises(ConfigError, match="bad chain level spec"):
        load_config(CHAIN, ["task.levels=[2d+-1d]"])
    with pytest.raises(ConfigError, match="warm_start.demo_error_rate"):
        load_config(CHAIN, ["warm_start.demo_error_rate=0.25"])
    with pytest.raises(ConfigError, match="task.kind"):
        load_config(None, ["task.kind=poetry"])
    with pytest.raises(ConfigError, match="val.pass_k"):
        load_config(None, ["val.pass_k=[0]"])
