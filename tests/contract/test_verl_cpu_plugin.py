"""Contract: the CPU plugin for verl 0.9.1 (``e3.engines.verl.cpu``) against the real verl.

- It is loaded the way verl documents (``VERL_USE_EXTERNAL_MODULES`` + ``VERL_PLATFORM``, in a fresh interpreter)
  and verl's own lookups then resolve to it: platform, rollout replica, rollout adapter, and verl's own
  process-group initialisation gives a working gloo group on device ``cpu``.
- The two verl internals it touches fail loudly, naming the installed verl, when they change.
- The ``hf`` rollout server samples every request with its own parameters (per-request temperature; its
  log-probs are log softmax(logits / tau)) and refuses a weight sync that does not match its model name for name.
- Partial rollouts (verl's colocate_async), with the server as a Ray actor launched as ``HFReplica`` launches it: an
  abort stops a long generation at once and answers with the tokens so far; requests wait behind the closed gate
  until ``resume_generation`` (or come back at once with ``reject_request``); a resumed request keeps its
  temperature and every segment carries, and logs, the weights version that sampled it; verl's own
  ``FullyAsyncLLMServerClient`` gets one full response across an abort, a weight update and a resume.
- verl builds the polling replay buffer for the sync and the colocate_async trainers from the same config name.

- ``verl_cpu_grpo`` (verl's own GRPO with the plugin's settings, no E3) composes and passes verl's checks with a
  user's model and files; without them ``scripts/train.sh`` stops naming the keys; settings the plugin cannot run are
  refused naming the key.

The sampling tests drive the server in-process (no Ray), the partial-rollout ones as a Ray actor;
``tests/e2e/test_verl_cpu.py`` runs it inside verl's trainer, and ``tests/e2e/test_verl_cpu_grpo.py`` runs
``verl_cpu_grpo``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

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


# ---------------------------------------------------------------- partial rollouts (verl's colocate_async trainer)
TAU = 0.7  # the sharpened tiny models never sample EOS at this temperature (p < 1e-10 a token): rows run to budget
LONG = 600  # response budget of the partial-rollout server: ~2 s of sampling on a CPU core


def sharpened(path):
    """The tiny model with its logits sharpened (x30), as the ``server`` fixture does: temperature matters."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    return model


def logprobs_under(model, prompt, tokens, tau) -> list[float]:
    with torch.no_grad():
        ids = torch.tensor([list(prompt) + list(tokens)])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        return torch.log_softmax(logits / tau, -1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1).tolist()


@pytest.fixture(scope="module")
def partial_server(tmp_path_factory, repo_root):
    """An ``HFServer`` Ray actor launched as ``HFReplica`` launches it, on a config with ``LONG`` responses and a
    request log; ``models[v]`` is the model of weights version ``v`` (1: seed 0, 2: seed 1, both sharpened) and
    ``sync(v)`` loads it into the server as verl's weight update does."""
    import ray

    from e3.engines.verl.cpu.hf_rollout import HFServer
    from e3.engines.verl.configs import compose

    root = tmp_path_factory.mktemp("hf_partial")
    build_tiny_model(root / "model")
    build_tiny_model(root / "other", seed=1)
    config = compose("e3_trainer", [f"actor_rollout_ref.model.path={root / 'model'}",
                                    "actor_rollout_ref.rollout.name=hf", "data.max_prompt_length=64",
                                    f"data.max_response_length={LONG}",
                                    f"+actor_rollout_ref.rollout.engine_kwargs.hf.request_log={root / 'log.jsonl'}"])
    models = {1: sharpened(root / "model"), 2: sharpened(root / "other")}
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(repo_root), "TOKENIZERS_PARALLELISM": "false"}})
    try:
        actor = ray.remote(HFServer).options(max_concurrency=64, num_cpus=0).remote(
            config.actor_rollout_ref.rollout, config.actor_rollout_ref.model)

        def sync(version):  # the full state (the tied lm_head comes with the embeddings), as the adapter sends it
            state = {k: v for k, v in models[version].state_dict().items() if k != "lm_head.weight"}
            return ray.get(actor.update_weights.remote(state, version))

        sync(1)
        yield {"actor": actor, "config": config, "models": models, "sync": sync, "log": root / "log.jsonl"}
    finally:
        ray.shutdown()


@pytest.fixture
def partial(partial_server):
    """The partial-rollout server with weights version 1, its gate open again after the test (passed or not)."""
    import ray

    partial_server["sync"](1)
    yield partial_server
    ray.get(partial_server["actor"].resume_generation.remote())


def tokenizer_of(partial):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(partial["config"].actor_rollout_ref.model.path)


def ask(actor, request_id, prompt, tau=TAU, **params):
    return actor.generate.remote(request_id, prompt_ids=prompt, sampling_params={
        "temperature": tau, "top_p": 1.0, "top_k": -1, "logprobs": True, **params})


def wait_until_sampling(actor, timeout=60.0):
    import ray

    deadline = time.monotonic() + timeout
    while ray.get(actor.status.remote())["sampling"] == 0:
        assert time.monotonic() < deadline, "the server never started sampling"
        time.sleep(0.02)


def log_since(path, start: float) -> list[dict]:
    return [rec for rec in map(json.loads, path.read_text().splitlines()) if rec["time"] >= start]


def test_abort_stops_a_long_generation_at_once_with_the_tokens_so_far(partial):
    import ray

    actor, model = partial["actor"], partial["models"][1]
    tok = tokenizer_of(partial)
    prompts = [tok.encode(f"q{i}: what is {i} + 3?", add_special_tokens=False) for i in range(4)]
    refs = [ask(actor, f"a{i}", p, max_tokens=LONG) for i, p in enumerate(prompts)]
    wait_until_sampling(actor)
    time.sleep(0.3)
    start = time.monotonic()
    report = ray.get(actor.abort_all_requests.remote())
    took = time.monotonic() - start  # returns once the running generate has stopped
    outs = ray.get(refs, timeout=5)
    assert ray.get(actor.status.remote())["paused"]
    ray.get(actor.resume_generation.remote())
    assert took < 1.0, took  # one decoding step of the batch (~25 ms here), not the ~2 s left
    assert report["aborted_count"] == 4 and sorted(report["request_ids"]) == [f"a{i}" for i in range(4)]
    lengths = {len(o.token_ids) for o in outs}
    assert len(lengths) == 1 and 0 < min(lengths) < LONG, lengths  # one batch, cut at the same token
    for prompt, out in zip(prompts, outs):
        assert out.stop_reason == "aborted" and out.extra_fields["global_steps"] == 1
        assert tok.pad_token_id not in out.token_ids and tok.eos_token_id not in out.token_ids
        assert np.allclose(out.log_probs, logprobs_under(model, prompt, out.token_ids, TAU), atol=1e-4)


def test_requests_wait_behind_the_closed_gate_until_resume_or_are_rejected_at_once(partial):
    import ray

    actor = partial["actor"]
    prompt = tokenizer_of(partial).encode("q9: what is 4 + 4?", add_special_tokens=False)
    assert ray.get(actor.abort_all_requests.remote()) == {"aborted_count": 0, "request_ids": []}
    parked = ask(actor, "parked", prompt, max_tokens=4)
    assert not ray.wait([parked], timeout=1.0)[0]  # nothing is sampled while paused
    ray.get(actor.resume_generation.remote())
    out = ray.get(parked, timeout=30)
    assert (out.stop_reason, len(out.token_ids), out.extra_fields["global_steps"]) == ("length", 4, 1)

    ray.get(actor.abort_all_requests.remote())
    waiting = ask(actor, "waiting", prompt, max_tokens=4)
    assert not ray.wait([waiting], timeout=0.5)[0]
    ray.get(actor.abort_all_requests.remote(reject_request=True))  # those waiting and those arriving: rejected
    rejected = ask(actor, "rejected", prompt, max_tokens=4)
    for ref in (waiting, rejected):
        out = ray.get(ref, timeout=2)
        assert (out.stop_reason, out.token_ids, out.extra_fields["global_steps"]) == ("aborted", [], 1)
    ray.get(actor.resume_generation.remote())
    assert ray.get(ask(actor, "after", prompt, max_tokens=4), timeout=30).stop_reason == "length"


def test_a_resumed_request_keeps_its_temperature_and_each_segment_logs_its_weights_version(partial):
    """Resumed as verl's client resumes (prompt + tokens so far, the budget left, the same sampling params) across
    a weight update: every trajectory gets its full length, each segment sampled (log-probs) and logged with the
    weights of its version at the request's own temperature."""
    import ray

    actor, models = partial["actor"], partial["models"]
    tok = tokenizer_of(partial)
    taus = [0.5, 0.5, 0.7, 0.7]  # two batches: the second may be aborted before it starts (no tokens), also legal
    prompts = [tok.encode(f"q{i}: what is 7 + {i}?", add_special_tokens=False) for i in range(4)]
    start = time.time()
    refs = [ask(actor, f"c{i}-1", p, tau=t, max_tokens=LONG) for i, (p, t) in enumerate(zip(prompts, taus))]
    wait_until_sampling(actor)
    time.sleep(0.3)
    ray.get(actor.abort_all_requests.remote())
    first = ray.get(refs, timeout=5)
    partial["sync"](2)
    ray.get(actor.resume_generation.remote())
    second = ray.get([ask(actor, f"c{i}-2", p + o.token_ids, tau=t, max_tokens=LONG - len(o.token_ids))
                      for i, (p, t, o) in enumerate(zip(prompts, taus, first))], timeout=120)
    assert any(o.token_ids for o in first)
    log = {rec["request_id"]: rec for rec in log_since(partial["log"], start)}
    for i, (prompt, tau, a, b) in enumerate(zip(prompts, taus, first, second)):
        assert a.stop_reason == "aborted" and b.stop_reason == "length"
        assert len(a.token_ids) + len(b.token_ids) == LONG  # the full response
        assert (a.extra_fields["global_steps"], b.extra_fields["global_steps"]) == (1, 2)
        one, two = log[f"c{i}-1"], log[f"c{i}-2"]
        assert (one["weights_version"], two["weights_version"]) == (1, 2)
        assert one["temperature"] == two["temperature"] == tau
        assert (one["stop_reason"], two["stop_reason"]) == ("aborted", "length")
        assert one["prompt_ids"] == prompt and two["prompt_ids"] == prompt + one["response_ids"]
        assert one["response_ids"] + two["response_ids"] == a.token_ids + b.token_ids
        assert two["max_tokens"] == LONG - len(one["response_ids"])
        assert np.allclose(a.log_probs, logprobs_under(models[1], prompt, a.token_ids, tau), atol=1e-4)
        assert np.allclose(b.log_probs, logprobs_under(models[2], prompt + a.token_ids, b.token_ids, tau), atol=1e-4)


def test_verls_fully_async_client_gets_one_response_across_abort_weight_update_and_resume(partial):
    """verl's ``FullyAsyncLLMServerClient`` (colocate_async's client) through verl's load balancer: the abort cuts
    its request, its resend (after its 1 s pause) waits at the gate across the weight update, the resumed segment
    is sampled by the new weights, and the client returns one full response spanning versions 1 and 2."""
    from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient
    from verl.workers.rollout.router import get_router_handle

    actor, models = partial["actor"], partial["models"]
    prompt = tokenizer_of(partial).encode("q5: what is 6 + 1?", add_special_tokens=False)
    client = FullyAsyncLLMServerClient(config=partial["config"],
                                       load_balancer_handle=get_router_handle({"hf-replica-0": actor}))
    start = time.time()

    async def drive():
        task = asyncio.ensure_future(client.generate(
            "trajectory", prompt_ids=prompt, sampling_params={"temperature": TAU, "top_p": 1.0, "logprobs": True}))
        deadline = time.monotonic() + 60
        while (await actor.status.remote())["sampling"] == 0:
            assert time.monotonic() < deadline, "the server never started sampling"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        report = await actor.abort_all_requests.remote()  # colocate_async's on_sample_end
        await asyncio.sleep(1.5)  # the resend arrives while paused and waits
        state = {k: v for k, v in models[2].state_dict().items() if k != "lm_head.weight"}
        await actor.update_weights.remote(state, 2)  # on_step_end: update_weights, then resume_generation
        await actor.resume_generation.remote()
        return report, await task

    report, out = run(drive())
    assert report["aborted_count"] == 1
    assert out.stop_reason == "length" and len(out.token_ids) == len(out.log_probs) == LONG
    assert (out.extra_fields["min_global_steps"], out.extra_fields["max_global_steps"]) == (1, 2)  # span 2
    segments = [rec for rec in log_since(partial["log"], start) if rec["prompt_ids"][:len(prompt)] == prompt]
    assert [(s["weights_version"], s["stop_reason"], s["temperature"]) for s in segments] == \
        [(1, "aborted", TAU), (2, "length", TAU)]
    cut = len(segments[0]["response_ids"])
    assert 0 < cut < LONG and segments[1]["prompt_ids"] == prompt + out.token_ids[:cut]
    assert segments[0]["response_ids"] + segments[1]["response_ids"] == out.token_ids
    assert np.allclose(out.log_probs[:cut], logprobs_under(models[1], prompt, out.token_ids[:cut], TAU), atol=1e-4)
    assert np.allclose(out.log_probs[cut:], logprobs_under(models[2], prompt + out.token_ids[:cut],
                                                          out.token_ids[cut:], TAU), atol=1e-4)


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


def test_verl_builds_the_async_polling_replay_buffer_for_colocate_async_from_the_same_name():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls

    from e3.engines.verl.cpu.sampler import NAME, PollingReplayBuffer, PollingReplayBufferAsync
    from e3.engines.verl.configs import compose

    config = compose("verl_cpu_grpo", USER + ["trainer.v1.trainer_mode=colocate_async",
                                              "trainer.v1.sampler.sampler_kwargs.poll_interval=0.1"])
    assert config.trainer.v1.sampler.custom_sampler.name == NAME
    buffer = get_trainer_cls("colocate_async")(config).replay_buffer  # verl's PPOTrainer._build_replay_buffer
    assert type(buffer) is PollingReplayBufferAsync and isinstance(buffer, ReplayBufferAsync)
    assert buffer.poll_interval == pytest.approx(0.1) and buffer.trainer_mode == "colocate_async"
    assert buffer._has_enough_samples.__qualname__ == "ReplayBufferAsync._has_enough_samples"  # async sampling
    sync = get_trainer_cls("sync")(compose("verl_cpu_grpo", USER)).replay_buffer
    assert type(sync) is PollingReplayBuffer and not isinstance(sync, ReplayBufferAsync)


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
    ("trainer.v1.trainer_mode=e3_separate_async", "trainer.v1.trainer_mode=e3_separate_async"),
    ("trainer.v1.trainer_mode=nope", "trainer.v1.trainer_mode=nope"),
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


def test_the_hybrid_trainers_run_on_the_cpu_and_separate_async_is_refused_with_the_reason():
    from e3.engines.verl.cpu import check_supported
    from e3.engines.verl.configs import compose

    for mode in ("sync", "e3", "colocate_async", "e3_colocate_async"):
        check_supported(compose("verl_cpu_grpo", USER + [f"trainer.v1.trainer_mode={mode}"]))
    with pytest.raises(ValueError, match=r"checkpoint_engine\.backend.*CUDA/cupy, NCCL.*mooncake.*hybrid mode only"):
        check_supported(compose("verl_cpu_grpo", USER + ["trainer.v1.trainer_mode=separate_async"]))


def test_trainers_e3_main_train_does_not_run_are_refused_naming_the_key():
    from e3.engines.verl.configs import ConfigError, compose
    from e3.engines.verl.launch import check_trainer_mode

    with pytest.raises(ConfigError, match=r"trainer\.use_v1=false"):
        check_trainer_mode(compose("verl_cpu_grpo", USER + ["trainer.use_v1=false"]))
    with pytest.raises(ConfigError, match=r"trainer\.v1\.trainer_mode=nope: not a verl v1 trainer"):
        check_trainer_mode(compose("verl_cpu_grpo", USER + ["trainer.v1.trainer_mode=nope"]))
