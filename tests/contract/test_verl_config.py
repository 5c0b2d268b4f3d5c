"""Contract: the hydra overlay and the paper run configs compose on verl 0.9.1's own ppo_trainer and validate."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from e3.schema import E3Config
from e3.engines.verl.configs import CONFIG_DIR

PAPER = ["e3_r1_1.5b", "e3_r1_7b"]
ONE_GPU = ["e3_r1_1.5b_1gpu"]
CPU = ["verl_cpu_grpo", "verl_cpu_tiny", "verl_cpu_tiny_async"]  # verl on the CPU: test_verl_cpu_plugin.py and tests/e2e/
ABLATIONS = {"e3_r1_1.5b_grpo": (False, False, False), "e3_r1_1.5b_ts": (False, True, False),
             "e3_r1_1.5b_ts_an": (False, True, True), "e3_r1_1.5b_dr": (True, False, False)}


@functools.lru_cache(maxsize=None)
def _compose(name: str, overrides: tuple[str, ...]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def compose(name: str, *overrides: str):
    return copy.deepcopy(_compose(name, overrides))


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml"))


def test_every_shipped_config_is_listed_here():
    assert shipped_configs() == sorted(["e3_trainer", *PAPER, *ONE_GPU, *ABLATIONS, *CPU])


@pytest.mark.parametrize("name", ["e3_trainer", *PAPER, *ONE_GPU, *ABLATIONS])
def test_config_composes_on_verls_ppo_trainer_and_validates(name):
    from e3.engines.verl.trainer import check_supported, e3_config_from
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(name)
    # verl's own defaults are there (found through pkg://verl.trainer.config, not copied) ...
    assert cfg.actor_rollout_ref.actor.clip_ratio == 0.2 and "transfer_queue" in cfg
    # ... with our plug-in points
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "e3"
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class == "e3.engines.verl.rollout.E3AgentLoopManager"
    assert cfg.reward.custom_reward_function.path == "pkg://e3.reward"
    assert cfg.reward.custom_reward_function.reward_kwargs == {"timeout": cfg.e3.reward.timeout,
                                                               "workers": cfg.e3.reward.workers}
    assert cfg.algorithm.adv_estimator == "grpo"
    e3 = e3_config_from(cfg)
    check_supported(cfg, e3)
    omega_conf_to_dataclass(cfg.algorithm)
    omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


@pytest.mark.parametrize("name", [*PAPER, *ONE_GPU, *ABLATIONS])
def test_run_configs_pass_verls_own_validation(name):
    """The preflight of ``python -m e3.main_train`` minus the GPU check: verl's ``validate_config``."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose(name)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert not need_reference_policy(cfg) and not need_critic(cfg)  # kl_loss_coef 0 in the paper: no ref model


def test_e3_section_mirrors_the_typed_config():
    section = OmegaConf.to_container(compose("e3_trainer").e3, resolve=True)
    defaults = E3Config().to_dict()
    assert {k: sorted(v) for k, v in section.items()} == {k: sorted(v) for k, v in defaults.items()}
    expected = {**defaults, "curriculum": {**defaults["curriculum"], "mode": "offline"}}  # verl: offline only
    assert section == expected
    assert [f.name for f in dataclasses.fields(E3Config)] == list(section)


def test_paper_runs_have_the_papers_settings():
    small, large = compose("e3_r1_1.5b"), compose("e3_r1_7b")
    for cfg in (small, large):
        assert cfg.data.train_batch_size == 64 and cfg.actor_rollout_ref.rollout.n == 8
        assert cfg.data.max_response_length == 6144 and cfg.trainer.total_epochs == 3
        assert cfg.trainer.total_training_steps is None  # max_steps = epochs x len(data) // 64, from the data
        alloc, temp = cfg.e3.allocation, cfg.e3.temperature
        assert (alloc.enable, alloc.n_low, alloc.n_high, alloc.n_update) == (True, 4, 12, 2)
        assert (temp.enable, temp.anneal, temp.anneal_floor, temp.init_temperature) == (True, True, 0.9, 1.0)
        assert cfg.actor_rollout_ref.rollout.name == "vllm"
    assert small.actor_rollout_ref.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert small.actor_rollout_ref.actor.optim.lr == 5e-6 and small.trainer.n_gpus_per_node == 4
    assert large.actor_rollout_ref.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert large.actor_rollout_ref.actor.optim.lr == 2e-6 and large.trainer.n_gpus_per_node == 8


@pytest.mark.parametrize("name", ["e3_trainer", *PAPER, *ONE_GPU, *ABLATIONS, "verl_cpu_tiny"])
def test_every_shipped_e3_config_trains_with_fsdp2(name):
    """One strategy for the GPU configs and the CPU end-to-end run: verl's FSDP2 engine (FSDP1 is deprecating)."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(name)
    assert cfg.actor_rollout_ref.actor.strategy == "fsdp2" and cfg.actor_rollout_ref.ref.strategy == "fsdp2"
    if name != "e3_trainer":  # the template leaves micro-batch sizes to the user; verl's dataclass needs them
        assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).engine.strategy == "fsdp2"  # the engine's


def test_tau_0_is_verls_rollout_temperature():
    from e3.engines.verl.trainer import check_supported, e3_config_from

    cfg = compose("e3_r1_1.5b_grpo", "actor_rollout_ref.rollout.temperature=0.6")  # a fixed-tau ablation at 0.6
    e3 = e3_config_from(cfg)
    assert e3.temperature.init_temperature == 0.6 and not e3.temperature.enable
    check_supported(cfg, e3)
    cold = compose("e3_r1_1.5b_grpo", "actor_rollout_ref.rollout.temperature=0.3")  # below tau_min: no scheduler
    check_supported(cold, e3_config_from(cold))
    clash = compose("e3_r1_1.5b", "e3.temperature.init_temperature=0.8")
    with pytest.raises(ValueError, match=r"e3.temperature.init_temperature=0.8 contradicts "
                                         r"actor_rollout_ref.rollout.temperature=1.0"):
        check_supported(clash, e3_config_from(clash))
    hot = compose("e3_r1_1.5b", "actor_rollout_ref.rollout.temperature=3.0")  # scheduler on: outside its clamps
    with pytest.raises(ValueError, match=r"init_temperature.*on verl it is actor_rollout_ref.rollout.temperature"):
        e3_config_from(hot)
    # no e3 section at all (a user's own verl config): tau_0 still comes from rollout.temperature
    bare = compose("e3_r1_1.5b", "actor_rollout_ref.rollout.temperature=0.7")
    OmegaConf.set_struct(bare, False)
    bare.pop("e3")
    assert e3_config_from(bare).temperature.init_temperature == 0.7


def test_dr_grpo_is_verls_norm_adv_by_std_in_grpo():
    from e3.engines.verl.trainer import check_supported, e3_config_from

    cfg = compose("e3_r1_1.5b", "algorithm.norm_adv_by_std_in_grpo=false")
    e3 = e3_config_from(cfg)
    assert e3.advantage.norm_by_std is False
    check_supported(cfg, e3)
    clash = compose("e3_r1_1.5b", "e3.advantage.norm_by_std=false")
    with pytest.raises(ValueError, match=r"e3.advantage.norm_by_std=False contradicts "
                                         r"algorithm.norm_adv_by_std_in_grpo=True"):
        check_supported(clash, e3_config_from(clash))


@pytest.mark.parametrize("overrides,dtype", [
    ((), "bf16"),  # verl's default mixed precision
    (("+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",), "fp32"),
    (("+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp16",), "fp16"),
    # a reference policy in bf16 beside an fp32 actor: the coarser grid serves both
    (("+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32", "algorithm.use_kl_in_reward=true"),
     "bf16"),
])
def test_tau_is_emitted_in_the_dtype_the_training_passes_divide_by(overrides, dtype):
    from e3.engines.verl.trainer import logits_dtype

    assert logits_dtype(compose("e3_r1_1.5b", *overrides)) == dtype
    assert logits_dtype(compose("verl_cpu_tiny")) == "fp32"


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_rows_differ_from_the_paper_run_only_in_the_e3_switches(name):
    base = OmegaConf.to_container(compose("e3_r1_1.5b"))
    row = OmegaConf.to_container(compose(name))
    dr, ts, an = ABLATIONS[name]
    assert row["e3"]["allocation"]["enable"] is dr
    assert row["e3"]["temperature"]["enable"] is ts and row["e3"]["temperature"]["anneal"] is an
    for cfg in (base, row):
        cfg.pop("e3")
        cfg["trainer"].pop("experiment_name")
    assert row == base


def test_overrides_and_bad_keys():
    from e3.engines.verl.trainer import check_supported, e3_config_from

    cfg = compose("e3_r1_1.5b", "e3.temperature.enable=false", "actor_rollout_ref.rollout.n=6")
    assert e3_config_from(cfg).temperature.enable is False and cfg.actor_rollout_ref.rollout.n == 6
    with pytest.raises(ValueError, match=r"e3\.temperature\.bogus"):
        e3_config_from(compose("e3_trainer", "+e3.temperature.bogus=1"))
    with pytest.raises(ValueError, match="e3.allocation.n_low"):
        e3_config_from(compose("e3_trainer", "e3.allocation.n_low=1"))
    with pytest.raises(ValueError, match="mode=online is not available on the verl engine"):
        cfg = compose("e3_trainer", "e3.curriculum.enable=true", "e3.curriculum.mode=online")
        check_supported(cfg, e3_config_from(cfg))
    with pytest.raises(ValueError, match=r"rollout.n=16 must lie in \[e3.allocation.n_low, n_high\] = \[4, 12\]"):
        cfg = compose("e3_r1_1.5b", "actor_rollout_ref.rollout.n=16")
        check_supported(cfg, e3_config_from(cfg))
    with pytest.raises(ValueError, match="adv_estimator"):
        cfg = compose("e3_trainer", "algorithm.adv_estimator=gae")
        check_supported(cfg, e3_config_from(cfg))


def test_one_gpu_run_is_the_paper_run_on_one_card_with_memory_settings():
    """Same algorithm, data and batch as e3_r1_1.5b; only placement and memory settings differ (not measured here)."""
    base = OmegaConf.to_container(compose("e3_r1_1.5b"))
    one = OmegaConf.to_container(compose("e3_r1_1.5b_1gpu"))
    assert one["trainer"]["n_gpus_per_node"] == 1 and one["trainer"]["nnodes"] == 1
    actor, rollout = one["actor_rollout_ref"]["actor"], one["actor_rollout_ref"]["rollout"]
    assert actor["fsdp_config"]["optimizer_offload"] and actor["entropy_from_logits_with_chunking"]
    assert rollout["free_cache_engine"] and rollout["gpu_memory_utilization"] <= 0.5
    assert rollout["tensor_model_parallel_size"] == 1
    # the only differences from the paper run: placement, memory and the run's name
    changed = {("trainer", "n_gpus_per_node"), ("trainer", "experiment_name"),
               ("actor", "entropy_from_logits_with_chunking"), ("actor", "entropy_checkpointing"),
               ("actor", "fsdp_config"), ("rollout", "gpu_memory_utilization"), ("rollout", "max_num_seqs"),
               ("rollout", "max_num_batched_tokens"), ("rollout", "log_prob_max_token_len_per_gpu")}
    for section, key in changed:
        for cfg in (base, one):
            root = cfg["trainer"] if section == "trainer" else cfg["actor_rollout_ref"][section]
            root.pop(key)
    assert one == base


REFUSED = {
    "parameter_sync_step": (("+trainer.v1.sync.parameter_sync_step=2",),
                            r"trainer\.v1\.sync\.parameter_sync_step=2: .*k times too fast"),
    "prepo_weighting_bypass": (("e3.temperature.enable=false", "e3.weighting.enable=true",
                                "algorithm.rollout_correction.bypass_mode=true"),
                               r"algorithm\.rollout_correction\.bypass_mode=true .*no `entropy` field.*e3\.weighting"),
    "temperature_bypass": (("algorithm.rollout_correction.bypass_mode=true",),
                           r"algorithm\.rollout_correction\.bypass_mode=true .*e3\.temperature"),
}


@pytest.mark.parametrize("case", sorted(REFUSED) + ["hdfs_without_client"])
def test_settings_the_adapter_cannot_honour_are_refused_by_the_preflight(case):
    """``python -m e3.main_train`` stops on the driver, before Ray or any worker starts, naming the key."""
    import shutil

    from e3.engines.verl.trainer import E3Trainer
    from e3.engines.verl.launch import preflight

    if case == "hdfs_without_client":
        if shutil.which("hdfs"):
            pytest.skip("an `hdfs` client is installed here: checks the refusal without one")
        overrides, message = ("trainer.default_hdfs_dir=hdfs://cluster/e3",), r"trainer\.default_hdfs_dir=hdfs://"
    else:
        overrides, message = REFUSED[case]
    cfg = compose("e3_r1_1.5b", *overrides)
    with pytest.raises(ValueError, match=message):
        preflight(cfg)
    with pytest.raises(ValueError, match=message):  # and the trainer itself, if built some other way
        E3Trainer(cfg)


def test_settings_next_to_the_refused_ones_pass():
    from e3.engines.verl.trainer import check_supported, e3_config_from

    for overrides in [("+trainer.v1.sync.parameter_sync_step=1",),
                      ("e3.temperature.enable=false", "algorithm.rollout_correction.bypass_mode=true"),
                      ("e3.weighting.enable=true", "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum"),
                      ("trainer.default_hdfs_dir=/mnt/shared/e3",)]:
        cfg = compose("e3_r1_1.5b", *overrides)
        check_supported(cfg, e3_config_from(cfg))
