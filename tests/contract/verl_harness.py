"""Harness for running verl 0.9.1's real trainer loop on CPU with only the GPU pieces replaced.

verl cannot run end to end without GPUs (its resource pool requires them; rollout needs vLLM/SGLang). These
contract tests therefore run verl's real classes — ``PPOTrainer.fit``/``step``, the replay buffer, TransferQueue
(Ray, one storage unit), ``RLHFDataset`` and its dataloader, the agent-loop worker with the single-turn agent loop,
the reward-loop worker with our reward, tracking (console/file/tensorboard) — and replace only:

- the LLM server (``ScriptedServer``): answers every request with a scripted response, records the sampling params;
- the FSDP actor worker group (``TinyActorGroup``): log-probs and entropies of the real tokens under a tiny
  randomly initialised Qwen2 built from a config (logits / the temperature verl passes), records every call;
- the weight-sync / resource-pool managers (no GPUs to sync or count).

Nothing is downloaded: the tokenizer (bytes + ChatML tokens) and the model are built locally.
"""

from __future__ import annotations

import asyncio
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


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer without merges (one token per byte, Qwen's ChatML specials) and a tiny Qwen2
    (hidden 32, 2 layers), saved to ``path``. transformers loads the tokenizer as ``Qwen2Tokenizer``."""
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
                      tie_word_embeddings=True)
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


class ScriptedServer:
    """The mocked LLM server: of every 4 consecutive requests for prompt q<k>, the first ``k % 4`` are answered
    correctly (so groups are all-wrong, mixed or all-correct depending on k and n_i).

    Records ``(prompt index, temperature)`` per request; responses are the tokens of ``so \\boxed{answer}`` (right
    or off by one), ended by eos.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.requests: list[tuple[int, float]] = []
        self._seen: dict[int, int] = {}
        self.weights_version = 0  # set by NoWeightSync.update_weights, as verl's weight sync tags replicas

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        text = self.tokenizer.decode(prompt_ids)
        k, a, b = (int(x) for x in re.search(r"q(\d+): what is (\d+) \+ (\d+)", text).groups())
        self.requests.append((k, float(sampling_params["temperature"])))
        nth = self._seen.get(k, 0)
        self._seen[k] = nth + 1
        answer = a + b if nth % 4 < k % 4 else a + b + 1
        ids = self.tokenizer.encode(f"so \\boxed{{{answer}}}", add_special_tokens=False)
        version = self.weights_version
        return TokenOutput(token_ids=ids + [self.tokenizer.eos_token_id], stop_reason="completed",
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
    """Stands in for verl's FSDP actor worker group: real log-probs / entropies of a tiny model at verl's tau."""

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self._dispatch_info = {"actor": [0]}
        self.calls: list[tuple[str, float]] = []
        self.saved: list[str] = []
        self.loaded: list[str] = []
        self.advantages: list = []

    def _query_dispatch_info(self, role):
        return [0]

    @torch.no_grad()
    def compute_log_prob(self, batch):
        import transfer_queue as tq

        tau = float(batch.extra_info["temperature"])
        self.calls.append(("compute_log_prob", tau))
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["input_ids"])
        logps, ents = [], []
        for ids in data["input_ids"].unbind():
            logits = self.model(input_ids=ids[None]).logits[0].float() / tau
            logp = torch.log_softmax(logits, dim=-1)
            nxt = logp[:-1].gather(-1, ids[1:, None]).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1)[:-1]
            logps.append(torch.cat([nxt, nxt.new_zeros(1)]))
            ents.append(torch.cat([ent, ent.new_zeros(1)]))
        out = TensorDict({"log_probs": torch.nested.as_nested_tensor(logps, layout=torch.jagged),
                          "entropy": torch.nested.as_nested_tensor(ents, layout=torch.jagged)},
                         batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)
        return batch

    def update_actor(self, batch):
        import transfer_queue as tq

        self.calls.append(("update_actor", float(batch.extra_info["temperature"])))
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
        self.advantages.append((list(batch.keys), [t.clone() for t in data["advantages"].unbind()]))
        return {"metrics": {"mfu": 0.0, "pg_loss": 0.0}}

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self.saved.append(local_path)

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.loaded.append(local_path)


class NoWeightSync:
    """Weight sync without GPUs: only the server's weights version moves, as after verl's update_weights."""

    def __init__(self, server: ScriptedServer):
        self.server = server

    def update_weights(self, global_steps=None):
        if global_steps is not None:
            self.server.weights_version = int(global_steps)

    def sleep_replicas(self):
        pass


class OneDevice:
    def get_n_gpus(self) -> int:
        return 1


def assemble(trainer, model_dir: Path, server: ScriptedServer):
    """Initialise a constructed ``E3Trainer`` like ``PPOTrainer._setup`` does, with the GPU pieces replaced.

    Runs the real ``_init_tokenizer``, ``_init_dataloader``, ``_load_checkpoint`` and ``on_init_end``; returns the
    agent loop to pass to ``fit``.
    """
    from e3.engines.verl.rollout import E3AgentLoopWorkerImpl
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer._init_dump_executor()
    trainer.actor_rollout_wg = TinyActorGroup(model_dir)
    trainer.checkpoint_manager = NoWeightSync(server)
    trainer.resource_pool_manager = OneDevice()
    agent_loop = InProcessAgentLoop()
    # workers get their own copy of the config, as Ray actors do (a driver-side change must not reach them)
    reward = LocalRewardHandle(RewardLoopWorker(copy.deepcopy(trainer.config)))

    class Rewards:
        reward_loop_worker_handles = [reward]

    trainer.reward_loop_manager = Rewards()
    trainer._load_checkpoint()
    agent_loop.worker = E3AgentLoopWorkerImpl(copy.deepcopy(trainer.config), server, None, [reward])
    trainer.on_init_end()  # verl: sync the (restored) weights to the rollout replicas
    return agent_loop
