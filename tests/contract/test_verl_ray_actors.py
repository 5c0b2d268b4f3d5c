"""Contract: our agent-loop worker built as a real Ray actor, as verl builds it, on a local Ray (CPU).

verl's ``AgentLoopManager._init_agent_loop_workers`` creates every worker with
``agent_loop_workers_class.options(...).remote(config, llm_client, teacher_client, reward_handles)``: the class is
pickled to another process and constructed there. These tests do exactly that with ``E3AgentLoopWorker`` and with
``E3AgentLoopManager`` (two workers), against verl's real ``LLMServerClient`` and request router, verl's real
reward-loop workers (Ray actors, our math reward) and TransferQueue. Only the LLM server is scripted (a Ray actor
answering from ``ScriptedServer``, which records every request's prompt and temperature).

What they cannot see: a real model's sampling (the server is scripted) and vLLM's handling of the parameters it is
sent; the end-to-end test on verl's CPU platform (``tests/e2e/test_verl_cpu.py``) samples for real.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from e3.data import write_rows  # noqa: E402

from .verl_harness import ScriptedServer, arithmetic_rows, build_tiny_model, ray_and_transfer_queue  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    # the scripted server's module lives under tests/ (imported by pytest, not installed): let workers import it
    path = os.pathsep.join([str(HERE.parent), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])
    with ray_and_transfer_queue(4, {"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}}):
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl_ray")
    build_tiny_model(root / "model")
    write_rows(arithmetic_rows(8, "train"), root / "train.parquet")
    return root


def compose(workdir, *extra):
    from hydra import compose as hydra_compose, initialize_config_dir

    from e3.engines.verl.configs import CONFIG_DIR

    overrides = [
        f"actor_rollout_ref.model.path={workdir / 'model'}",
        f"data.train_files={workdir / 'train.parquet'}", f"data.val_files={workdir / 'train.parquet'}",
        "data.train_batch_size=4", "data.dataloader_num_workers=0", "data.max_prompt_length=128",
        "data.max_response_length=32", "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.calculate_log_probs=false", "reward.num_workers=1",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name="e3_trainer", overrides=overrides)


@pytest.fixture(scope="module")
def services(cluster, workdir):
    """verl's real request router and client in front of a scripted server actor, and verl's reward workers."""
    from transformers import AutoTokenizer

    from verl.experimental.reward_loop.reward_loop import RewardLoopManager
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import get_router_handle

    config = compose(workdir)
    server = ray.remote(ScriptedServer).options(max_concurrency=64).remote(
        AutoTokenizer.from_pretrained(workdir / "model"))
    client = LLMServerClient(config=config, load_balancer_handle=get_router_handle({"scripted:0": server}))
    rewards = RewardLoopManager(config=config, rm_resource_pool=None)
    return {"server": server, "client": client, "reward_handles": rewards.reward_loop_worker_handles}


def requests_of(server) -> list[tuple[int, float]]:
    return ray.get(server.__ray_call__.remote(lambda self: list(self.requests)))


def prompt_batch(config, workdir, indices, n, tau):
    """A train batch as verl's ``_next_train_batch`` makes it (RLHFDataset rows, uid, global_steps) plus the two
    columns ``E3Trainer`` adds: ``__rollout_n__`` (the budgets) and ``__temperature__`` (the step's tau)."""
    import torch
    from transformers import AutoTokenizer

    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import collate_fn

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    dataset = create_rl_dataset(config.data.train_files, config.data, tok, None, is_train=True)
    batch_dict = collate_fn([dataset[i] for i in indices])
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in indices], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", 1)
    batch["__rollout_n__"] = torch.as_tensor(n, dtype=torch.int64)
    batch["__temperature__"] = torch.full((len(indices),), float(tau), dtype=torch.float32)
    return batch


def wait_finished(uids, timeout=240.0) -> dict:
    """Poll TransferQueue until every prompt's status tag is terminal (what verl's replay buffer waits for)."""
    deadline = time.time() + timeout
    while True:
        listed = tq.kv_list(partition_id="train").get("train", {})
        status = {u: (listed.get(u) or {}).get("status") for u in uids}
        if all(s in ("finished", "failure") for s in status.values()):
            return status
        if time.time() > deadline:
            raise TimeoutError(f"prompts not finished after {timeout}s: {status}")
        time.sleep(0.2)


def check_rollouts(server, before, indices, n, tau, uids):
    status = wait_finished(uids)
    assert set(status.values()) == {"finished"}, status
    seen = requests_of(server)[before:]
    assert Counter(k for k, _ in seen) == Counter(dict(zip(indices, n)))  # n_i requests per prompt
    assert seen and all(t == pytest.approx(tau) for _, t in seen)  # the step's tau, not the config's 1.0
    # every session's output landed in TransferQueue under {uid}_{session}_{index}, scored by our reward
    listed = tq.kv_list(partition_id="train")["train"]
    rows = [k for k in listed if k.rsplit("_", 2)[0] in set(uids) and k.count("_") >= 2]
    assert Counter(k.rsplit("_", 2)[0] for k in rows) == Counter(dict(zip(uids, n)))
    data = tq.kv_batch_get(keys=rows, partition_id="train", select_fields=["rm_scores"])
    assert {float(t.sum()) for t in data["rm_scores"].unbind()} <= {0.0, 1.0}
    tq.kv_clear(keys=rows + list(uids), partition_id="train")


def test_agent_loop_worker_runs_as_a_ray_actor(services, workdir):
    """``E3AgentLoopWorker`` (verl builds it with ``.options(...).remote(...)``) is constructed in its own process
    and samples n_i at tau."""
    from e3.engines.verl.rollout import E3AgentLoopWorker

    config = compose(workdir)
    worker = E3AgentLoopWorker.options(name=f"e3_worker_test_{uuid.uuid4().hex[:6]}").remote(
        config, services["client"], None, services["reward_handles"])
    assert ray.get(worker.__ray_ready__.remote(), timeout=300)
    assert ray.get(worker.__ray_call__.remote(lambda self: os.getpid())) != os.getpid()

    indices, n, tau = [0, 1, 2], [2, 5, 3], 0.73
    batch = prompt_batch(config, workdir, indices, n, tau)
    uids = list(batch["uid"])
    tq.kv_batch_put(keys=uids, partition_id="train", tags=[{"is_prompt": True, "status": "pending"}] * len(uids))
    before = len(requests_of(services["server"]))
    ray.get(worker.generate_sequences.remote(batch))
    check_rollouts(services["server"], before, indices, n, tau, uids)
    ray.kill(worker)


def test_agent_loop_manager_with_two_workers_honours_per_prompt_n_and_temperature(services, workdir):
    """``E3AgentLoopManager.create`` (as verl's TaskRunner calls it) spawns two Ray-actor workers; the batch is
    split between them and every prompt gets its own n_i, all at the step's tau."""
    from e3.engines.verl.rollout import E3AgentLoopManager

    config = compose(workdir, "actor_rollout_ref.rollout.agent.num_workers=2")
    manager = E3AgentLoopManager.create(config=config, llm_client=services["client"], teacher_client=None,
                                        reward_loop_worker_handles=services["reward_handles"])
    workers = manager.agent_loop_workers
    assert len(workers) == 2
    pids = ray.get([w.__ray_call__.remote(lambda self: (os.getpid(), type(self).__name__)) for w in workers],
                   timeout=300)
    assert len({pid for pid, _ in pids}) == 2 and all(name.startswith("E3AgentLoopWorker") for _, name in pids)

    indices, n, tau = [3, 4, 5, 6], [4, 2, 6, 4], 1.31
    batch = prompt_batch(config, workdir, indices, n, tau)
    uids = list(batch["uid"])
    tq.kv_batch_put(keys=uids, partition_id="train", tags=[{"is_prompt": True, "status": "pending"}] * len(uids))
    before = len(requests_of(services["server"]))
    manager.generate_sequences(batch)
    check_rollouts(services["server"], before, indices, n, tau, uids)
    for w in workers:
        ray.kill(w)
