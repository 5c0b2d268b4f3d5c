"""Contract: the CPU plugin for verl 0.9.1 (``e3.engines.verl.cpu``) against the real verl.

- It is loaded the way verl documents (``VERL_USE_EXTERNAL_MODULES`` + ``VERL_PLATFORM``, in a fresh interpreter)
  and verl's own lookups then resolve to it: platform, rollout replica, rollout adapter, and verl's own
  process-group initialisation gives a working gloo group on device ``cpu``.
- The two verl internals it touches fail loudly, naming the installed verl, when they change.
- The ``hf`` rollout server samples every request with its own parameters (per-request temperature; its
  log-probs are log softmax(logits / tau)) and refuses a weight sync that does not match its model name for name.

- ``verl_cpu_grpo`` (verl's own GRPO with the plugin's settings, no E3) composes and passes verl's checks with a
  user's model and files; without them ``scripts/train.sh`` stops naming the keys; settings the plugin cannot run are
  refused naming the key.

The server is driven in-process here (no Ray); ``tests/e2e/test_verl_cpu.py`` runs it as verl's Ray actor, and
``tests/e2e/test_verl_cpu_grpo.py`` runs ``verl_cpu_grpo``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from .verl_harness import build_tiny_model  # noqa: E402

PROBE = textwrap.dedent("""
    import json, os
    import torch
    import verl
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class
    from verl.workers import engine_workers  # imports the name the training worker calls
    p = get_platform()
    out = {"platform": type(p).__module__ + "." + type(p).__name__, "device": get_device_name(),
           "backend": get_nccl_backend(), "ray_resource": p.ray_resource_name()}
    if p.device_name == "cpu":
        out["free_total"] = list(get_torch_device().mem_get_info())
        out["adapter"] = get_rollout_class("hf", "async").__qualname__
        out["replica"] = get_rollout_replica_class("hf").__qualname__
        engine_workers.initialize_global_process_group_ray(timeout_second=60)  # what TrainingWorker calls
        t = torch.ones(3)
        torch.distributed.all_reduce(t)
        out["pg_backend"] = torch.distributed.get_backend()
        out["all_reduce"] = t.tolist()
    print("PROBE" + json.dumps(out))
""")


def probe(**env) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            **env}
    for key in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM"):
        if key not in env:
            full.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")][-1]
    return json.loads(line[len("PROBE"):])


def test_verl_loads_the_plugin_and_its_own_lookups_resolve_to_it():
    from e3.engines.verl.cpu import RUNTIME_ENV

    out = probe(VERL_USE_EXTERNAL_MODULES=RUNTIME_ENV["VERL_USE_EXTERNAL_MODULES"],
                VERL_PLATFORM=RUNTIME_ENV["VERL_PLATFORM"])
    assert out["platform"] == "e3.engines.verl.cpu.platform.CPUPlatform"
    assert (out["device"], out["backend"], out["ray_resource"]) == ("cpu", "gloo", "GPU")
    assert out["adapter"] == "HFServerAdapter" and out["replica"] == "HFReplica"
    assert out["pg_backend"] in ("gloo", "cpu:gloo") and out["all_reduce"] == [1.0, 1.0, 1.0]
    free, total = out["free_total"]
    assert 0 < free <= total  # host RAM, not zeros


def test_the_cpu_platform_is_never_picked_without_verl_platform():
    out = probe(VERL_USE_EXTERNAL_MODULES="e3.engines.verl.cpu")
    assert out["platform"] != "e3.engines.verl.cpu.platform.CPUPlatform"


def test_changed_verl_internals_fail_loudly_naming_the_version(monkeypatch):
    import verl
    import verl.utils.distributed as dist
    import verl.workers.rollout.base as base

    from e3.engines.verl.cpu import verl_internals as vi
    from e3.engines.verl.internals import VerlInternalsChanged, check_version

    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(VerlInternalsChanged, match=r"verl==0\.9\.1.*installed verl is 0\.9\.2"):
        check_version()
    monkeypatch.setattr(dist, "initialize_global_process_group_ray", lambda timeout_second=None: None)
    with pytest.raises(vi.VerlInternalsChanged, match="initialize_global_process_group_ray"):
        vi.patch_process_group_backend()
    monkeypatch.setattr(base, "_ROLLOUT_REGISTRY", None)
    with pytest.raises(vi.VerlInternalsChanged, match="_ROLLOUT_REGISTRY"):
        vi.register_rollout_adapter("hf", "async", "x.Y")


def test_weight_name_check_covers_missing_unexpected_misshaped_and_tied():
    from e3.engines.verl.cpu.hf_rollout import WeightSyncError, check_weight_names

    expected = {"emb": (4, 2), "head": (4, 2), "w": (2, 2)}
    tied = [{"emb", "head"}]
    check_weight_names({"emb": (4, 2), "w": (2, 2)}, expected, tied)  # a tied alias counts as received
    with pytest.raises(WeightSyncError, match=r"missing \['w'\]"):
        check_weight_names({"emb": (4, 2)}, expected, tied)
    with pytest.raises(WeightSyncError, match=r"unexpected \['extra'\]"):
        check_weight_names({"emb": (4, 2), "w": (2, 2), "extra": (1,)}, expected, tied)
    with pytest.raises(WeightSyncError, match=r"w: sent \(2, 3\), model \(2, 2\)"):
        check_weight_names({"emb": (4, 2), "w": (2, 3)}, expected, tied)
    with pytest.raises(WeightSyncError, match=r"missing \['emb', 'head'\]"):
        check_weight_names({"w": (2, 2)}, expected, tied)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from e3.engines.verl.cpu.hf_rollout import HFServer
    from e3.engines.verl.configs import compose

    root = tmp_path_factory.mktemp("hf_server")
    build_tiny_model(root / "model")
    config = compose("e3_trainer", [f"actor_rollout_ref.model.path={root / 'model'}",
                                    "actor_rollout_ref.rollout.name=hf", "data.max_prompt_length=64",
                                    "data.max_response_length=8",
                                    f"+actor_rollout_ref.rollout.engine_kwargs.hf.request_log={root / 'log.jsonl'}"])
    srv = HFServer(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model)
    with torch.no_grad():  # a random tiny model is nearly uniform; sharpen its logits so temperature matters
        srv.model.model.norm.weight.mul_(30.0)
    return {"server": srv, "root": root, "log": root / "log.jsonl"}


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_every_request_is_sampled_with_its_own_temperature(server):
    srv = server["server"]
    tok = srv.model_config.tokenizer
    prompt = tok.encode("q1: what is 2 + 3?", add_special_tokens=False)
    taus = [0.0] * 4 + [0.3] * 48 + [3.0] * 48

    async def fire():  # all at once, as verl's agent loop fires the n_i sessions: one batch, several temperatures
        return await asyncio.gather(*[
            srv.generate(f"r{i}", prompt_ids=prompt, sampling_params={"temperature": t, "top_p": 1.0, "top_k": -1,
                                                                      "logprobs": True, "max_tokens": 6})
            for i, t in enumerate(taus)])

    outs = run(fire())
    logged = [json.loads(line) for line in server["log"].read_text().splitlines()]
    assert sorted(r["temperature"] for r in logged[-len(taus):]) == sorted(taus)
    lp_at_1 = []
    with torch.no_grad():
        for tau, out in zip(taus, outs):
            ids = torch.tensor([prompt + out.token_ids])
            logits = srv.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            want = torch.log_softmax(logits / (tau or 1.0), -1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1)
            assert np.allclose(out.log_probs, want.tolist(), atol=1e-4)  # log softmax(logits / own tau)
            if tau == 0.0:
                assert out.token_ids == logits.argmax(-1).tolist()[:len(out.token_ids)]  # greedy
            lp_at_1.append(float(torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None]).mean()))
    lp = np.asarray(lp_at_1)
    cold, hot = lp[np.asarray(taus) == 0.3], lp[np.asarray(taus) == 3.0]
    assert cold.mean() > hot.mean() + 1.0, (cold.mean(), hot.mean())  # tau 0.3: likely tokens; 3.0: far less


def test_weight_sync_loads_every_tensor_or_refuses(server, tmp_path):
    from transformers import AutoModelForCausalLM

    from e3.engines.verl.cpu.hf_rollout import WeightSyncError

    srv = server["server"]
    build_tiny_model(tmp_path / "other", seed=1)
    other = AutoModelForCausalLM.from_pretrained(tmp_path / "other").state_dict()
    before = {k: v.clone() for k, v in srv.model.state_dict().items()}
    broken = {k: v for k, v in other.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(WeightSyncError, match="model.layers.1.mlp.up_proj.weight"):
        run(srv.update_weights(broken, 5))
    with pytest.raises(WeightSyncError, match="not_in_the_model"):
        run(srv.update_weights({**other, "not_in_the_model": torch.zeros(1)}, 5))
    assert all(torch.equal(v, before[k]) for k, v in srv.model.state_dict().items())  # nothing half-loaded
    sent = {k: v for k, v in other.items() if k != "lm_head.weight"}  # tied to the embeddings in this model
    result = run(srv.update_weights(sent, 7))
    assert result["version"] == 7 and run(srv.status())["weights_version"] == 7
    assert all(torch.equal(v, other[k]) for k, v in srv.model.state_dict().items())


def test_the_public_verl_symbols_the_plugin_builds_on():
    """The public extension points and behaviours e3/engines/verl/cpu relies on (verl 0.9.1), in one place."""
    import inspect

    import verl
    from verl.plugin.platform import PlatformRegistry, get_platform, set_platform
    from verl.single_controller.ray.base import ResourcePoolManager
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout.base import BaseRollout
    from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry, TokenOutput

    from e3.engines.verl.cpu.platform import CPUPlatform

    assert callable(get_platform) and callable(set_platform) and callable(PlatformRegistry.register)
    assert not getattr(CPUPlatform, "__abstractmethods__", None)  # implements every abstract method of this verl
    assert {"resume", "update_weights", "release"} <= BaseRollout.__abstractmethods__
    assert RolloutReplica.__abstractmethods__ == frozenset({"launch_servers"}) and RolloutMode.HYBRID
    assert list(inspect.signature(RolloutReplicaRegistry.register).parameters) == ["name", "loader"]
    assert {"token_ids", "log_probs", "stop_reason", "extra_fields"} <= set(TokenOutput.model_fields)
    # loaded by `import verl` in every process; the engine lookup honours VERL_ENGINE_DEVICE
    assert "VERL_USE_EXTERNAL_MODULES" in inspect.getsource(verl)
    assert 'os.getenv("VERL_ENGINE_DEVICE")' in inspect.getsource(EngineRegistry.get_engine_cls)
    # why the platform names its Ray resource "GPU": verl counts only GPU/NPU node resources
    assert '"GPU"' in inspect.getsource(ResourcePoolManager._check_resource_available)


def test_verl_builds_the_polling_replay_buffer_from_the_cpu_config():
    """verl's trainer builds the configured custom sampler; settings verl would not pass it are refused."""
    from e3.engines.verl.cpu.sampler import PollingReplayBuffer, check_config
    from e3.engines.verl.trainer import E3Trainer
    from e3.engines.verl.configs import compose

    config = compose("verl_cpu_tiny")
    check_config(config)
    buffer = E3Trainer(config).replay_buffer  # built by verl's PPOTrainer._build_replay_buffer
    assert type(buffer) is PollingReplayBuffer and buffer.poll_interval == pytest.approx(0.05)
    for key in ("algorithm.filter_groups.enable=true", "trainer.v1.sampler.sync_refill_failed_groups=true"):
        with pytest.raises(ValueError, match=key.split("=")[0].replace(".", r"\.")):
            check_config(compose("verl_cpu_tiny", [key]))


def test_the_cpu_config_composes_and_passes_the_checks_before_workers_start():
    """``verl_cpu_tiny`` composed on verl's ppo_trainer: our refusals and verl's own ``validate_config`` accept it."""
    from e3.engines.verl.trainer import check_supported, e3_config_from
    from e3.engines.verl.configs import compose
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose("verl_cpu_tiny", ["cpu_tiny.model_dir=/m", "cpu_tiny.data_dir=/d", "cpu_tiny.run_dir=/r"])
    assert cfg.trainer.device == "cpu" and cfg.actor_rollout_ref.rollout.name == "hf"
    assert cfg.actor_rollout_ref.model.path == "/m" and cfg.data.train_files == "/d/train.parquet"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "e3_cpu"
    check_supported(cfg, e3_config_from(cfg))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


USER = ["actor_rollout_ref.model.path=/my/hf_model", "data.train_files=/my/train.parquet",
        "data.val_files=/my/val.parquet"]


def test_the_stock_grpo_config_is_verl_with_the_plugin_settings_and_nothing_of_e3():
    from omegaconf import OmegaConf

    from e3.engines.verl.cpu import check_supported
    from e3.engines.verl.cpu.sampler import check_config
    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import check_required, check_trainer_mode
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose("verl_cpu_grpo", USER)
    assert "e3" not in cfg and "cpu_tiny" not in cfg
    assert check_trainer_mode(cfg) == "sync" and cfg.algorithm.adv_estimator == "grpo"
    assert OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.agent_loop_manager_class") is None  # verl's own
    assert cfg.reward.custom_reward_function.path is None  # verl's default scorer by data_source
    assert (cfg.trainer.device, cfg.actor_rollout_ref.rollout.name, cfg.actor_rollout_ref.actor.strategy) == \
        ("cpu", "hf", "fsdp2")
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert dict(cfg.actor_rollout_ref.actor.fsdp_config.mixed_precision) == \
        {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    assert cfg.trainer.v1.sampler.custom_sampler.name == "PollingReplayBuffer"
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert (env.VERL_USE_EXTERNAL_MODULES, env.VERL_PLATFORM, env.VERL_ENGINE_DEVICE) == \
        ("e3.engines.verl.cpu", "e3_cpu", "cuda")
    check_required(cfg)
    check_supported(cfg)
    check_config(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_the_stock_grpo_config_without_model_and_files_stops_naming_them(repo_root):
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "train.sh"), "--config", "verl_cpu_grpo",
                           "data.train_files=/my/train.parquet"], capture_output=True, text=True, timeout=300,
                          cwd=repo_root)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: actor_rollout_ref.model.path, data.val_files not set: give them on the command line "
                      "(actor_rollout_ref.model.path=... data.val_files=...; the model a Hugging Face model directory, "
                      "the files verl parquet)"]
    assert "Traceback" not in proc.stderr and "ray init" not in proc.stdout  # one line, before Ray starts


@pytest.mark.parametrize("override,key", [
    ("trainer.v1.trainer_mode=separate_async", "trainer.v1.trainer_mode=separate_async"),
    ("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.name=vllm"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "actor_rollout_ref.rollout.tensor_model_parallel_size=2"),
    ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy=fsdp"),
])
def test_what_the_plugin_cannot_run_is_refused_naming_the_key(override, key):
    import re

    from e3.engines.verl.cpu import check_supported
    from e3.engines.verl.configs import compose

    with pytest.raises(ValueError, match=re.escape(key)):
        check_supported(compose("verl_cpu_grpo", USER + [override]))


def test_trainers_e3_main_train_does_not_run_are_refused_naming_the_key():
    from e3.engines.verl.configs import ConfigError, compose
    from e3.engines.verl.launch import check_trainer_mode

    with pytest.raises(ConfigError, match=r"trainer\.use_v1=false"):
        check_trainer_mode(compose("verl_cpu_grpo", USER + ["trainer.use_v1=false"]))
    with pytest.raises(ConfigError, match=r"trainer\.v1\.trainer_mode=nope: not a verl v1 trainer"):
        check_trainer_mode(compose("verl_cpu_grpo", USER + ["trainer.v1.trainer_mode=nope"]))
