"""A verl rollout backend on transformers ``generate``, registered as ``actor_rollout_ref.rollout.name=hf``.

verl 0.9.1 splits a rollout backend in two (its vLLM backend does the same):

- a *replica* (``RolloutReplica``, public ``RolloutReplicaRegistry``) that launches one server actor per replica.
  The server answers verl's token-in/token-out ``generate(request_id, prompt_ids, sampling_params)`` with a
  ``TokenOutput``. Here ``HFServer`` batches the requests that arrive together (verl fires all n_i sessions of
  all prompts at once) by identical sampling parameters and samples each batch with one ``model.generate`` call,
  so **every request is sampled with the parameters it carries** — in particular the per-prompt temperature that
  ``E3AgentLoopWorker`` puts into it (E3 Eq. 4). ``temperature=0`` is greedy (verl's validation).
  Log-probs, when asked for (``rollout.calculate_log_probs``), are log softmax(logits / tau) of the sampled tokens:
  the quantity verl's actor computes in its old-log-prob pass, so ``training/rollout_probs_diff_*`` measures the
  sampler/trainer mismatch directly.
- an *adapter* (``BaseRollout``) living in the hybrid actor worker, which receives the actor's full weights after
  every update (verl's ``update_weights``; FSDP gathers each tensor) and ships them to its replica's server. The
  server checks **every name and shape** against its model before loading: a missing, unexpected or mis-shaped
  tensor raises ``WeightSyncError`` naming them (tied aliases, e.g. ``lm_head.weight`` = ``embed_tokens.weight``,
  count as received when one of them is).

Partial rollouts (verl's ``colocate_async`` trainer, whose ``FullyAsyncLLMServerClient`` resumes aborted requests):
``abort_all_requests`` stops the running ``generate`` at its next token (a ``StoppingCriteria`` watching a
``threading.Event``), answers every unfinished request with its tokens so far and ``stop_reason="aborted"``, and closes
a submission gate: requests arriving while paused wait for ``resume_generation`` (or, with ``reject_request=True``,
come back at once aborted with no tokens). The client then resends prompt + tokens so far with the budget left and
its own sampling parameters, so a trajectory's segments share its temperature; each segment's
``extra_fields["global_steps"]`` is the version of the weights that sampled it (verl's min/max_global_steps), and the
request log has one line per segment.

Scope: one process per replica (tensor/data/pipeline parallel 1), text only, hybrid mode (the actor and the rollout
share the worker's slot), sync and colocate_async trainers. Anything else is refused with the config key to change.
Options live in ``actor_rollout_ref.rollout.engine_kwargs.hf`` (next to verl's ``vllm`` / ``sglang`` sections), typed
and checked by ``HFOptions``: ``max_batch``, ``batch_wait_ms``, ``threads``, ``request_log`` (an audit trail of what
was sampled).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import ray
import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from verl.utils.config import omega_conf_to_dataclass
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

from e3.schema import Range, build, checked


BACKEND_NAME = "hf"
OPTIONS_KEY = f"actor_rollout_ref.rollout.engine_kwargs.{BACKEND_NAME}"


class WeightSyncError(RuntimeError):
    """The weights sent to the rollout do not match its model one to one."""


@dataclass
class HFOptions:
    """The backend's options, ``actor_rollout_ref.rollout.engine_kwargs.hf`` (an OmegaConf structured config)."""

    max_batch: int = checked(256, Range(ge=1))
    """Requests per ``generate`` call."""
    batch_wait_ms: float = checked(5.0, Range(ge=0))
    """How long to gather concurrent requests before sampling them."""
    threads: int = checked(0, Range(ge=0))
    """Torch threads of the server (0: torch's default)."""
    request_log: Optional[str] = None
    """A JSONL file: one line per request (per segment of a resumed one) with its id, the weights version, prompt ids,
    the sampling parameters used, the tokens produced and the stop reason (``aborted`` for a cut-off segment)."""


def backend_options(rollout_config) -> HFOptions:
    """``rollout.engine_kwargs.hf`` (a mapping in verl's rollout config) over the defaults; an unknown option, a
    wrong type or a bad value is a ``ValueError`` naming the key."""
    section = getattr(rollout_config, "engine_kwargs", None) or {}
    given = (section.get(BACKEND_NAME) if isinstance(section, Mapping) else None) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"config key {OPTIONS_KEY} must be a mapping, got {type(given).__name__}")
    return build(HFOptions, given, OPTIONS_KEY)


def check_weight_names(received: dict[str, tuple], expected: dict[str, tuple], tied: list[set[str]]) -> None:
    """Every expected tensor received with its shape, nothing else received; raise ``WeightSyncError`` otherwise.

    ``received`` / ``expected`` map names to shapes; ``tied`` lists groups of names that share one tensor in the
    rollout model (receiving one member covers the group).
    """
    covered = set(received)
    for group in tied:
        if group & covered:
            covered |= group
    missing = sorted(set(expected) - covered)
    unexpected = sorted(set(received) - set(expected))
    mismatched = sorted(f"{k}: sent {tuple(received[k])}, model {tuple(expected[k])}"
                        for k in set(received) & set(expected) if tuple(received[k]) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        raise WeightSyncError(
            f"weight sync to the {BACKEND_NAME} rollout does not match its model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)}), shape mismatches {mismatched[:8]}")


def tied_groups(model: torch.nn.Module) -> list[set[str]]:
    """Names in ``model.state_dict()`` that share storage (tied embeddings and the like)."""
    by_ptr: dict[int, set[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(tensor.data_ptr(), set()).add(name)
    return [names for names in by_ptr.values() if len(names) > 1]


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: tuple
    logprobs: bool
    future: Optional[asyncio.Future] = None


class StopOnEvent(StoppingCriteria):
    """Stops every row of a ``generate`` call at its next token once ``event`` is set (``abort_all_requests``); until
    then it stops nothing, so sampling is exactly that of a call without it."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class SamplingKey:
    """The sampling parameters a batch shares (requests with equal keys are sampled in one ``generate`` call)."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_tokens: int

    def astuple(self) -> tuple:
        return (self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.max_tokens)


class HFServer:
    """The server actor of one ``hf`` replica: a transformers causal LM sampling verl's requests (see module doc)."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoModelForCausalLM

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config)
        self.options = backend_options(self.config)
        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)
        self.replica_rank = replica_rank
        path = self.model_config.local_path
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = self.model_config.tokenizer
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.weights_version: Optional[int] = None
        self.weight_updates = 0
        self._pending: list[_Request] = []
        self._drainer: Optional[asyncio.Task] = None
        self._model_lock = threading.Lock()
        self._log_path = self.options.request_log
        self._log_lock = threading.Lock()
        # partial rollouts: abort_all_requests sets _abort (the running generate stops at its next token) and closes
        # the gate (_paused); resume_generation clears both. Requests arriving while paused wait on _gate.
        self._abort = threading.Event()
        self._paused = False
        self._rejecting = False
        self._gate = asyncio.Event()
        self._gate.set()
        self._aborted_ids: Optional[list[str]] = None
        self._sampling = 0  # requests in the running generate call
        torch.manual_seed(int(self.config.seed) + replica_rank)

    # ------------------------------------------------------------ verl's server interface
    async def generate(self, request_id, *, prompt_ids, sampling_params: dict, image_data=None, video_data=None,
                       **kwargs) -> TokenOutput:
        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise ValueError(f"the {BACKEND_NAME} rollout is text-only; this request carries multimodal data")
        key = self._sampling_key(len(prompt_ids), dict(sampling_params))
        req = _Request(str(request_id), [int(t) for t in prompt_ids], key.astuple(),
                       bool(sampling_params.get("logprobs", False)))
        while self._paused:  # the submission gate, closed from abort_all_requests to resume_generation
            if self._rejecting:
                return self._unsampled(req)
            await self._gate.wait()
        # no await between the gate check and the enqueue: an abort either sees this request or it waited
        req.future = asyncio.get_running_loop().create_future()
        self._pending.append(req)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await req.future

    async def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int]) -> dict:
        """Load the actor's weights after checking every name and shape (``WeightSyncError`` otherwise)."""
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        check_weight_names({k: tuple(v.shape) for k, v in named_tensors.items()}, expected, tied_groups(self.model))
        with self._model_lock:  # a sample reads the version under this lock too: its tokens carry the right one
            result = self.model.load_state_dict(named_tensors, strict=False)
            leftover = set(result.missing_keys) - {n for g in tied_groups(self.model) for n in g}
            if leftover or result.unexpected_keys:
                raise WeightSyncError(f"load_state_dict left {sorted(leftover)} missing, {result.unexpected_keys} "
                                      "unexpected after the name check passed")
            self.weights_version = None if global_steps is None else int(global_steps)
            self.weight_updates += 1
        return {"tensors": len(named_tensors), "version": self.weights_version, "updates": self.weight_updates}

    async def status(self) -> dict:
        """The weights version and update count, whether the gate is closed, how many requests are being sampled."""
        return {"weights_version": self.weights_version, "weight_updates": self.weight_updates,
                "paused": self._paused, "sampling": self._sampling}

    async def sleep(self):
        """Nothing to free on the CPU: no KV cache outlives a ``generate`` call, and the weights are host memory that
        the next ``update_weights`` overwrites in place (dropping them would only force a reload). Keeping sampling
        off the cores while the trainer trains is the job of ``abort_all_requests``'s gate, not of sleep."""
        return None

    async def wake_up(self):
        """Nothing to restore on the CPU (see ``sleep``); the weights stay loaded between steps."""
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        """Stop generating and pause until ``resume_generation`` (verl's colocate_async trainer, before it trains).

        The running ``generate`` stops at its next token: its unfinished requests are answered with their tokens so
        far (and their log-probs, when asked) and ``stop_reason="aborted"``, rows that already ended keep
        ``completed`` / ``length``; queued requests that never started come back aborted with no tokens. Returns once
        nothing runs, with the aborted requests as vLLM's server reports them: ``{"aborted_count", "request_ids"}``.
        Requests arriving while paused wait for ``resume_generation``; with ``reject_request=True`` they (and those
        already waiting) come back at once, aborted with no tokens. Every abort re-declares ``reject_request``.
        """
        self._paused, self._rejecting = True, bool(reject_request)
        parked, self._gate = self._gate, asyncio.Event()
        parked.set()  # requests waiting at the gate look again: with reject_request they now leave
        self._abort.set()
        aborted = self._aborted_ids = []
        queued, self._pending = self._pending, []
        for req in queued:
            self._resolve_unsampled(req)
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer])  # the running sample stops at its next token; the rest never start
        self._aborted_ids = None
        return {"aborted_count": len(aborted), "request_ids": aborted}

    async def resume_generation(self):
        """Open the gate closed by ``abort_all_requests``: waiting requests (the client's resends among them) run."""
        self._abort.clear()
        self._paused = self._rejecting = False
        self._gate.set()
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    # ------------------------------------------------------------ batching and sampling
    def _sampling_key(self, prompt_len: int, params: dict) -> SamplingKey:
        budget = int(self.config.prompt_length) + int(self.config.response_length) - prompt_len
        if "max_tokens" in params:
            max_tokens = int(params.pop("max_tokens"))
        elif "max_new_tokens" in params:
            max_tokens = int(params.pop("max_new_tokens"))
        else:
            max_tokens = min(int(self.config.response_length), budget)
        max_tokens = max(1, min(max_tokens, int(self.config.response_length)))
        temperature = float(params.get("temperature", 1.0))
        if not temperature >= 0.0 or temperature == float("inf"):
            raise ValueError(f"sampling temperature {temperature!r} must be finite and >= 0")
        top_k = int(params.get("top_k", -1) or -1)
        return SamplingKey(temperature=temperature, top_p=float(params.get("top_p", 1.0)),
                           top_k=top_k if top_k > 0 else 0,
                           repetition_penalty=float(params.get("repetition_penalty", 1.0) or 1.0),
                           max_tokens=max_tokens)

    async def _drain(self) -> None:
        wait, max_batch = self.options.batch_wait_ms / 1000.0, self.options.max_batch
        while self._pending:
            seen = -1
            while seen != len(self._pending) and len(self._pending) < max_batch:
                seen = len(self._pending)
                await asyncio.sleep(wait)  # gather the requests fired together
            batch, self._pending = self._pending, []
            groups: dict[tuple, list[_Request]] = {}
            for req in batch:
                groups.setdefault(req.params, []).append(req)
            for params, reqs in groups.items():
                for start in range(0, len(reqs), max_batch):
                    chunk = reqs[start:start + max_batch]
                    if self._abort.is_set():  # aborted before this chunk started
                        for req in chunk:
                            self._resolve_unsampled(req)
                        continue
                    self._sampling = len(chunk)
                    try:
                        outputs = await asyncio.to_thread(self._sample, params, chunk)
                    except Exception as err:  # every waiting request learns about the failure
                        for req in chunk:
                            if not req.future.done():
                                req.future.set_exception(err)
                        continue
                    finally:
                        self._sampling = 0
                    for req, out in zip(chunk, outputs):
                        self._resolve(req, out)

    def _resolve(self, req: _Request, out: TokenOutput) -> None:
        if out.stop_reason == "aborted" and self._aborted_ids is not None:
            self._aborted_ids.append(req.request_id)
        if not req.future.done():
            req.future.set_result(out)

    def _resolve_unsampled(self, req: _Request) -> None:
        self._resolve(req, self._unsampled(req))

    def _unsampled(self, req: _Request) -> TokenOutput:
        """The answer to a request aborted before any of its tokens was sampled (logged like any segment)."""
        version = self.weights_version
        if self._log_path:
            self._log(req, req.params, [], "aborted", version)
        return TokenOutput(token_ids=[], log_probs=[] if req.logprobs else None, stop_reason="aborted",
                           extra_fields={"global_steps": version})

    @torch.no_grad()
    def _sample(self, params: tuple, reqs: list[_Request]) -> list[TokenOutput]:
        from transformers import GenerationConfig

        temperature, top_p, top_k, repetition_penalty, max_tokens = params
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's last prompt token is at the same column
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        greedy = temperature == 0.0
        gen = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else temperature, top_p=None if greedy else top_p,
            top_k=None if greedy else top_k, repetition_penalty=repetition_penalty, max_new_tokens=max_tokens,
            min_new_tokens=1, eos_token_id=self.eos_id, pad_token_id=self.pad_id, bos_token_id=None,
            return_dict_in_generate=True, output_logits=any(r.logprobs for r in reqs))
        with self._model_lock:
            version = self.weights_version
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                      stopping_criteria=StoppingCriteriaList([StopOnEvent(self._abort)]))
        new = out.sequences[:, width:]
        logprobs = None
        if out.logits is not None:
            logits = torch.stack(out.logits, dim=1).float()  # [B, T, V], before any logits processor
            if not greedy:
                logits = logits / temperature
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new[:, :logits.size(1), None]).squeeze(-1)
        results = []
        for i, r in enumerate(reqs):
            tokens = new[i].tolist()
            stop = "length"
            if self.eos_id in tokens:  # pads follow a row's EOS when the batch ran on
                tokens = tokens[: tokens.index(self.eos_id) + 1]
                stop = "completed"
            elif len(tokens) < max_tokens:  # only an abort stops a row before its EOS or its budget
                stop = "aborted"
            lp = logprobs[i, : len(tokens)].tolist() if (logprobs is not None and r.logprobs) else None
            results.append(TokenOutput(token_ids=tokens, log_probs=lp, stop_reason=stop,
                                       extra_fields={"global_steps": version}))
            if self._log_path:
                self._log(r, params, tokens, stop, version)
        return results

    def _log(self, req: _Request, params: tuple, tokens: list[int], stop: str, version: Optional[int]) -> None:
        temperature, top_p, top_k, repetition_penalty, max_tokens = params
        record = {"time": time.time(), "replica": self.replica_rank, "request_id": req.request_id,
                  "weights_version": version, "prompt_ids": req.prompt_ids, "temperature": temperature,
                  "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty, "max_tokens": max_tokens,
                  "response_ids": tokens, "stop_reason": stop}
        with self._log_lock, open(self._log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------- the adapter, in the hybrid actor worker
_ADAPTERS: "weakref.WeakSet[HFServerAdapter]" = weakref.WeakSet()


def attach_server(actor: Any, server) -> int:
    """Run inside a hybrid worker (``__ray_call__``): hand the replica's server to this process's adapters."""
    for adapter in list(_ADAPTERS):
        adapter.server = server
    return len(_ADAPTERS)


class HFServerAdapter(BaseRollout):
    """The hybrid worker's half: forwards the actor's weights to the replica's ``HFServer`` after every update."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        self.server = None
        _ADAPTERS.add(self)

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"the {BACKEND_NAME} rollout receives full named tensors; "
                             f"actor_rollout_ref.rollout.checkpoint_engine gave wire_format={wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise ValueError(f"the {BACKEND_NAME} rollout does not load LoRA adapters; set "
                             "actor_rollout_ref.model.lora.merge=true or disable LoRA")
        state = {}
        for name, tensor in weights:  # every rank iterates: FSDP gathers each full tensor collectively
            state[name] = tensor.detach().to("cpu", copy=True)
        if torch.distributed.is_initialized() and torch.distributed.get_rank() % max(1, self._replica_size()) != 0:
            return None
        if self.server is None:
            raise RuntimeError(f"the {BACKEND_NAME} rollout adapter has no server: its replica did not launch")
        await self.server.update_weights.remote(state, kwargs.get("global_steps"))
        return None

    def _replica_size(self) -> int:
        cfg = self.config
        return int(cfg.tensor_model_parallel_size) * int(cfg.data_parallel_size) * \
            int(cfg.pipeline_model_parallel_size)


class HFReplica(RolloutReplica):
    """One ``HFServer`` actor per replica, beside its hybrid worker (same node)."""

    async def launch_servers(self):
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(f"actor_rollout_ref.rollout.name={BACKEND_NAME} runs in hybrid mode only "
                                      f"(verl's sync and colocate_async trainers); got {self.rollout_mode}")
        if self.world_size != 1:
            raise ValueError(f"actor_rollout_ref.rollout.name={BACKEND_NAME}: tensor_model_parallel_size, "
                             "data_parallel_size and pipeline_model_parallel_size must be 1 "
                             f"(replica world size {self.world_size})")
        worker = self.workers[0]
        node_id = await worker.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        server = ray.remote(HFServer).options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id,
                                                                                             soft=False),
            max_concurrency=self.max_concurrency, num_cpus=0,
        ).remote(self.config, self.model_config, self.replica_rank)
        attached = await worker.__ray_call__.remote(attach_server, server)
        if attached < 1:
            raise RuntimeError(f"replica {self.replica_rank}: its hybrid worker has no {BACKEND_NAME} rollout adapter "
                               f"(actor_rollout_ref.rollout.name must be {BACKEND_NAME} on the workers too)")
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{BACKEND_NAME}-replica-{self.replica_rank}"


def load_replica_class():
    return HFReplica
