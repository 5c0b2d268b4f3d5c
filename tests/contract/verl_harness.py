"""Harness for running verl 0.9.1's real trainer loop on CPU with only the GPU pieces replaced.

verl cannot run end to end without GPUs (its resource pool requires them; rollout needs vLLM/SGLang). These
contract tests therefore run verl's real classes — ``PPOTrainer.fit``/``step``, the replay buffer, TransferQueue
(Ray, one storage unit), ``RLHFDataset`` and its dataloader, the agent-loop worker with the single-turn agent loop,
the reward-loop worker with our reward, tracking (console/file/tensorboard) — and replace only:

- the LLM server (``ScriptedServer``): answers every request with a scripted response (and, when asked, its
  log-probs under the tiny model at the request's temperature), records the sampling params, can fail requests;
- the FSDP actor (and reference) worker group (``TinyActorGroup``): log-probs and entropies of the real tokens under
  a tiny randomly initialised Qwen2 built from a config (logits / the temperature verl passes, or each row's own
  ``temperature`` field when the batch carries no batch-wide one, as verl's engine does), split over ``dp``
  data-parallel ranks with verl's own ``KVBatchMeta.chunk`` as verl's dispatch does; records every call;
- the weight-sync / resource-pool managers (no GPUs to sync or count).

Nothing is downloaded: the tokenizer (bytes + ChatML tokens) and the model are built locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
from pathlib import Path

import torch
from tensordict import TensorDict

# Qwen's ChatML, so verl picks the same continuous-token builder it uses for DeepSeek-R1-Distill-Qwen.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(path: Path, seed: int = 0, init_range: float = 0.02) -> Path:
    """A byte-level BPE tokenizer without merges (one token per byte, Qwen's ChatML specials) and a tiny Qwen2
    (hidden 32, 2 layers, weights ~ N(0, init_range)), saved to ``path``. transformers loads the tokenizer as
    ``Qwen2Tokenizer``. At the default 0.02 every next-token distribution is nearly uniform (entropy ~ ln|V|
    everywhere); 0.5 gives entropies that differ between responses (~2.7-3.2 nats), which PREPO weights need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    cfg = Qwen2Config(vocab_size=len(vocab) + len(SPECIALS), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True, initializer_range=init_range)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def arithmetic_rows(count: int, split: str, start: int = 0) -> list[dict]:
    """verl rows "q<k>: what is a + b?" whose ground truth is a + b (k = extra_info.index)."""
    from e3.data import make_row

    rows = []
    for k in range(start, start + count):
        a, b = k % 7 + 1, k % 5 + 2
        rows.append(make_row(f"q{k}: what is {a} + {b}?", a + b, data_source="toy", split=split, index=k))
    return rows


def token_log_probs(model, ids: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-prob of the next real token and the entropy, under ``model`` with logits / tau.

    Position t holds log p(ids[t+1] | ids[:t+1]); the last position is 0 (verl's layout for the shifted outputs).
    """
    logits = model(input_ids=ids[None]).logits[0].float() / tau
    logp = torch.log_softmax(logits, dim=-1)
    nxt = logp[:-1].gather(-1, ids[1:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)[:-1]
    return torch.cat([nxt, nxt.new_zeros(1)]), torch.cat([ent, ent.new_zeros(1)])


class ScriptedServer:
    """The mocked LLM server: of every 4 consecutive requests for prompt q<k>, the first ``k % 4`` are answered
    correctly (so groups are all-wrong, mixed or all-correct depending on k and n_i).

    Records ``(prompt index, temperature)`` per request (the value exactly as the worker passed it); responses are
    the tokens of ``so \\boxed{answer}`` (right or off by one), ended by eos. With ``model`` set and
    ``sampling_params["logprobs"]`` true it returns the response's log-probs under that model at the request's
    temperature (what vLLM returns for ``rollout.calculate_log_probs``). ``fail(k, weights_version)`` -> True makes
    a request raise, as a crashed server call would.
    """

    def __init__(self, tokenizer, model=None, fail=None):
        self.tokenizer = tokenizer
        self.model = model
        self.fail = fail
        self.requests: list[tuple[int, float]] = []
        self.failed: list[tuple[int, int]] = []  # (prompt index, weights version) of every failed request
        self._seen: dict[int, int] = {}
        self.weights_version = 0  # set by NoWeightSync.update_weights, as verl's weight sync tags replicas

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        text = self.tokenizer.decode(prompt_ids)
        k, a, b = (int(x) for x in re.search(r"q(\d+): what is (\d+) \+ (\d+)", text).groups())
        version = self.weights_version
        if self.fail is not None and self.fail(k, version):
            self.failed.append((k, version))
            raise RuntimeError(f"scripted server failure for q{k}")
        self.requests.append((k, sampling_params["temperature"]))
        nth = self._seen.get(k, 0)
        self._seen[k] = nth + 1
        answer = a + b if nth % 4 < k % 4 else a + b + 1
        ids = self.tokenizer.encode(f"so \\boxed{{{answer}}}", add_special_tokens=False)
        ids = ids + [self.tokenizer.eos_token_id]
        log_probs = None
        if sampling_params.get("logprobs") and self.model is not None:
            with torch.no_grad():
                full = torch.tensor(list(prompt_ids) + ids)
                lp, _ = token_log_probs(self.model, full, float(sampling_params["temperature"]))
            log_probs = lp[len(prompt_ids) - 1:-1].tolist()
        return TokenOutput(token_ids=ids, log_probs=log_probs, stop_reason="completed",
                           extra_fields={"global_steps": version, "min_global_steps": version,
                                         "max_global_steps": version})


class InProcessAgentLoop:
    """Drives a real ``E3AgentLoopWorkerImpl`` in this process (verl's manager would start it as a Ray actor).

    The worker and the reward worker are built while ``self.loop`` is the current event loop: verl's reward manager
    keeps the loop it was created on, as it would in its own actor.
    """

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.worker = None

    def generate_sequences(self, batch) -> None:
        async def run():
            await self.worker.generate_sequences(batch)
            while self.worker.background_tasks:
                await asyncio.gather(*list(self.worker.background_tasks))

        self.loop.run_until_complete(run())


class LocalRewardHandle:
    """A verl ``RewardLoopWorker`` called in-process, shaped like its Ray actor handle (``compute_score.remote``)."""

    class _Method:
        def __init__(self, fn):
            self.remote = fn

    def __init__(self, worker):
        self.compute_score = self._Method(worker.compute_score)


class TinyActorGroup:
    """Stands in for verl's FSDP actor (or reference) worker group: real log-probs / entropies of a tiny model at
    verl's tau, over ``dp`` data-parallel ranks.

    Each call splits the batch over the ranks with ``KVBatchMeta.chunk`` (verl's dispatch of a KVBatchMeta), and
    ``update_actor`` checks what verl's ``train_mini_batch`` asserts: the mini-batch divides over the ranks and each
    rank's share divides into whole mini-batches. What it cannot see: the FSDP engine itself (sharding, the loss).
    """

    def __init__(self, model_dir: Path, dp: int = 1):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.dp = int(dp)
        self._dispatch_info = {"actor": list(range(self.dp))}
        self.calls: list[tuple[str, float]] = []  # (call, extra_info["temperature"]; None when verl's was dropped)
        self.row_taus: list[tuple[str, list[str], list[float]]] = []  # (call, keys, the tau each row is scored at)
        self.saved: list[str] = []
        self.loaded: list[str] = []
        self.advantages: list = []
        self.rank_sizes: list[tuple[str, list[int]]] = []  # (call, rows per rank)
        self.mini_batches: list[int] = []  # mini-batches per rank of every update

    def _query_dispatch_info(self, role):
        return list(range(self.dp))

    def _ranks(self, name: str, batch) -> list:
        shards = batch.chunk(self.dp)
        self.rank_sizes.append((name, [len(s) for s in shards]))
        return shards

    def _row_taus(self, name: str, batch, fetched=None) -> list[float]:
        """Each row's tau as verl's worker sees it: ``extra_info["temperature"]`` replaces a per-row ``temperature``
        field when set; without it (``e3_colocate_async``) the rows' own field. Recorded in ``row_taus``."""
        import transfer_queue as tq

        tau = batch.extra_info.get("temperature")
        if tau is not None:
            taus = [float(tau)] * len(batch)
        else:
            data = fetched if fetched is not None else tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=["temperature"])
            taus = data["temperature"].tolist()
        self.row_taus.append((name, list(batch.keys), taus))
        return taus

    @torch.no_grad()
    def _log_probs(self, name: str, batch, with_entropy: bool):
        import transfer_queue as tq

        tau = batch.extra_info.get("temperature")
        self.calls.append((name, tau))
        for shard in self._ranks(name, batch):
            if not len(shard):
                continue
            fields = ["input_ids"] if tau is not None else ["input_ids", "temperature"]
            data = tq.kv_batch_get(keys=shard.keys, partition_id=shard.partition_id, select_fields=fields)
            taus = self._row_taus(name, shard, data)
            rows = zip(data["input_ids"].unbind(), taus)
            logps, ents = zip(*(token_log_probs(self.model, ids, t) for ids, t in rows))
            fields = {"log_probs": torch.nested.as_nested_tensor(list(logps), layout=torch.jagged)}
            if with_entropy:
                fields["entropy"] = torch.nested.as_nested_tensor(list(ents), layout=torch.jagged)
            tq.kv_batch_put(keys=shard.keys, partition_id=shard.partition_id,
                            fields=TensorDict(fields, batch_size=len(shard)))
        return batch

    def compute_log_prob(self, batch):
        return self._log_probs("compute_log_prob", batch, with_entropy=True)

    def compute_ref_log_prob(self, batch):
        return self._log_probs("compute_ref_log_prob", batch, with_entropy=False)

    def update_actor(self, batch):
        import transfer_queue as tq

        self.calls.append(("update_actor", batch.extra_info.get("temperature")))
        self._row_taus("update_actor", batch)
        mini = int(batch.extra_info["mini_batch_size"])
        assert mini % self.dp == 0, f"mini_batch_size={mini} does not divide over dp={self.dp}"
        per_rank = mini // self.dp
        for shard in self._ranks("update_actor", batch):
            assert len(shard) % per_rank == 0, f"a rank got {len(shard)} rows for mini-batches of {per_rank}"
            self.mini_batches.append(len(shard) // per_rank)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
        self.advantages.append((list(batch.keys), [t.clone() for t in data["advantages"].unbind()]))
        return {"metrics": {"mfu": 0.0, "pg_loss": 0.0}}

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self.saved.append(local_path)

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.loaded.append(local_path)


class NoWeightSync:
    """Weight sync without GPUs: only the server's weights version moves, as after verl's update_weights. The
    colocate_async trainer's abort / resume of generation around the update are recorded in ``events``."""

    def __init__(self, server: ScriptedServer):
        self.server = server
        self.events: list[str] = []

    def update_weights(self, global_steps=None):
        if global_steps is not None:
            self.server.weights_version = int(global_steps)

    def sleep_replicas(self):
        pass

    def abort_replicas(self, reject_request: bool = False):
        self.events.append("abort")

    def resume_generation_replicas(self):
        self.events.append("resume")


class OneDevice:
    def get_n_gpus(self) -> int:
        return 1


def assemble(trainer, model_dir: Path, server: ScriptedServer, dp: int = 1, ref_model_dir: Path | None = None):
    """Initialise a constructed E3 trainer like ``PPOTrainer._setup`` does, with the GPU pieces replaced.

    Runs the real ``_init_tokenizer``, ``_init_dataloader``, ``_load_checkpoint`` (then, for
    ``E3ColocateAsyncTrainer``, its wrapping of the worker-group calls) and ``on_init_end``; returns the
    agent loop to pass to ``fit``. ``dp``: data-parallel ranks of the actor group; ``ref_model_dir``: the reference
    policy's model (needed when the config enables one, e.g. ``algorithm.use_kl_in_reward``).
    """
    from e3.engines.verl.rollout import E3AgentLoopWorkerImpl
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer._init_dump_executor()
    trainer.actor_rollout_wg = TinyActorGroup(model_dir, dp=dp)
    trainer.ref_in_actor = False
    if trainer.use_reference_policy:
        assert ref_model_dir is not None, "the config enables a reference policy: pass ref_model_dir"
        trainer.ref_policy_wg = TinyActorGroup(ref_model_dir, dp=dp)
    trainer.checkpoint_manager = NoWeightSync(server)
    trainer.resource_pool_manager = OneDevice()
    agent_loop = InProcessAgentLoop()
    # workers get their own copy of the config, as Ray actors do (a driver-side change must not reach them)
    reward = LocalRewardHandle(RewardLoopWorker(copy.deepcopy(trainer.config)))

    class Rewards:
        reward_loop_worker_handles = [reward]

    trainer.reward_loop_manager = Rewards()
    trainer._load_checkpoint()
    if hasattr(trainer, "use_per_sample_temperature"):  # what E3ColocateAsyncTrainer._setup does after verl's
        trainer.use_per_sample_temperature()
    agent_loop.worker = E3AgentLoopWorkerImpl(copy.deepcopy(trainer.config), server, None, [reward])
    trainer.on_init_end()  # verl: sync the (restored) weights to the rollout replicas
    return agent_loop


@contextlib.contextmanager
def ray_and_transfer_queue(num_cpus: int = 2, runtime_env: dict | None = None):
    """A local Ray (started clean) and verl's TransferQueue with one storage unit: verl's default of 8 units hangs a
    2-CPU Ray cluster. Both are shut down on exit."""
    import ray
    import transfer_queue as tq
    import verl
    from omegaconf import OmegaConf

    if ray.is_initialized():  # left over from another module: start clean, with our resource limits
        ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             **({"runtime_env": runtime_env} if runtime_env else {}))
    conf = OmegaConf.load(os.path.join(os.path.dirname(verl.__file__), "trainer/config/transfer_queue",
                                       "transfer_queue.yaml"))
    conf.backend.SimpleStorage.num_data_storage_units = 1
    conf.backend.SimpleStorage.total_storage_size = 20000
    tq.init(conf)
    try:
        yield
    finally:
        tq.close()
        ray.shutdown()


def compose(workdir: Path, *extra: str, batch: int = 4, n: int = 4):
    """The shipped ``e3_trainer`` config composed with hydra on verl's own ``ppo_trainer``, sized for the tiny run:
    ``batch`` prompts x ``n`` rollouts, 6 steps over 2 epochs of ``train.parquet``, checkpoints every 3 steps.
    ``extra`` overrides come last."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from e3.engines.verl.configs import CONFIG_DIR

    overrides = [
        f"actor_rollout_ref.model.path={workdir / 'model'}",
        f"data.train_files={workdir / 'train.parquet'}", f"data.val_files={workdir / 'valid.parquet'}",
        f"data.train_batch_size={batch}", "data.dataloader_num_workers=0", "data.max_prompt_length=128",
        "data.max_response_length=32", "data.seed=7",
        f"actor_rollout_ref.rollout.n={n}", "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.calculate_log_probs=false", "actor_rollout_ref.rollout.agent.num_workers=1",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",
        "e3.allocation.n_low=2", "e3.allocation.n_high=6", "e3.allocation.n_update=2",
        "reward.num_workers=1", "trainer.n_gpus_per_node=1", "trainer.total_epochs=2",
        "trainer.total_training_steps=6", "trainer.save_freq=3", "trainer.test_freq=3",
        "trainer.logger=[console,file,tensorboard]", f"trainer.default_local_dir={workdir / 'ckpt'}",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name="e3_trainer", overrides=overrides)


def three_step_overrides(workdir: Path, model: Path, ckpt: str) -> list[str]:
    """``compose`` overrides of a 3-step run of ``model`` on the 6-prompt set, without validation, checkpoints or
    resume, checkpoint folder ``workdir/ckpt`` (the loop-variant and settings runs)."""
    return [f"actor_rollout_ref.model.path={model}", f"data.train_files={workdir / 'train6.parquet'}",
            "trainer.total_training_steps=3", "trainer.save_freq=-1", "trainer.test_freq=-1",
            "trainer.val_before_train=false", "trainer.resume_mode=disable", "trainer.logger=[console]",
            f"trainer.default_local_dir={workdir / ckpt}"]


def spy_trainer_cls(base=None):
    """``base`` (default E3Trainer) plus a record of what each step decided and wrote (no behaviour change).

    ``plans``: the prompts, budgets and temperature column of every ``_next_train_batch`` call (refills included),
    with the scheduler's exact tau beside the emitted one;
    ``entropy_rows``: the ``entropy`` field, response mask and padding tags after each old-log-prob pass;
    ``adv_rows``: the advantages (and the fields they derive from) after each ``_compute_advantage``;
    ``step_metrics``: verl's metrics of each step; ``counts``: the difficulty tracker's counts after each step.
    """
    import transfer_queue as tq

    from e3.engines.verl.trainer import E3Trainer

    class Spy(base or E3Trainer):
        def __init__(self, config, server):
            super().__init__(config)
            self.server, self.plans, self.adv_rows, self.entropy_rows = server, [], [], []
            self.step_metrics, self.counts = [], []

        def _next_train_batch(self, num_prompts=None):
            batch = super()._next_train_batch(num_prompts)
            self.plans.append({"step": self.global_steps, "first_request": len(self.server.requests),
                               "index": [int(i) for i in batch["index"]], "uid": [str(u) for u in batch["uid"]],
                               "n": batch["__rollout_n__"].tolist(), "tau": batch["__temperature__"].tolist(),
                               "config_tau": self.config.actor_rollout_ref.rollout.temperature,
                               "exact_tau": self.controller.scheduler.temperature})
            return batch

        def _compute_old_log_prob(self, batch, metrics):
            batch = super()._compute_old_log_prob(batch, metrics)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=["entropy", "response_mask"])
            self.entropy_rows.append({"step": self.global_steps,
                                      "entropy": [t.tolist() for t in data["entropy"].unbind()],
                                      "mask": [t.tolist() for t in data["response_mask"].unbind()],
                                      "padding": [bool(t.get("is_padding", False)) for t in batch.tags]})
            return batch

        def _compute_advantage(self, batch, metrics):
            batch = super()._compute_advantage(batch, metrics)
            fields = ["uid", "index", "rm_scores", "advantages", "response_mask"]
            if self.e3_config.weighting.enable:
                fields.append("entropy")
            if self.config.algorithm.use_kl_in_reward:
                fields.append("token_level_rewards")
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            rec = {"step": self.global_steps, "keys": list(batch.keys), "uid": list(data["uid"]),
                   "index": [int(i) for i in data["index"]],
                   "padding": [bool(t.get("is_padding", False)) for t in batch.tags],
                   "score": [float(t.sum()) for t in data["rm_scores"].unbind()],
                   "adv": [t.tolist() for t in data["advantages"].unbind()],
                   "mask": [t.tolist() for t in data["response_mask"].unbind()]}
            if "entropy" in fields:
                rec["entropy"] = [t.tolist() for t in data["entropy"].unbind()]
            if "token_level_rewards" in fields:
                rec["rewards"] = [t.tolist() for t in data["token_level_rewards"].unbind()]
            self.adv_rows.append(rec)
            return batch

        def step(self, metrics, timing_raw):
            batch = super().step(metrics, timing_raw)
            self.step_metrics.append(dict(metrics))
            tracker, every = self.controller.allocator.tracker, self.controller.dataset_indices
            self.counts.append({"step": self.global_steps, "index": every.tolist(),
                                "count": tracker.counts(every).tolist(), "accuracy": tracker.accuracy(every).tolist()})
            return batch

    return Spy
