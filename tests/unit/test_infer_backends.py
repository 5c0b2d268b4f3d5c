"""main_infer's two backends score the same input and refuse what vLLM 0.24 would refuse or change.

The transformers backend runs for real (a tiny random Llama whose tokenizer adds a BOS ``<s>`` and whose chat
template writes one, as DeepSeek-R1-Distill's do). vLLM cannot run here (no GPU), so its path runs against
``FakeVLLM``: a stand-in with the signatures of vLLM 0.24.0's ``LLM.__init__``, ``LLM.generate``, ``SamplingParams``
(and the argument checks this CLI can trip: temperature in [0, 2], n = 1 when greedy, top_p, max_tokens),
``RequestOutput`` and ``CompletionOutput``, read from the 0.24.0 wheel. Like vLLM's renderer it tokenizes a text
prompt with ``add_special_tokens=True`` (unless ``tokenization_kwargs`` says otherwise) and takes
``{"prompt_token_ids": ...}`` as given. The tests check the exact arguments our code passes to it. What they cannot
see: vLLM's own tokenization and chat rendering beyond that rule, the model it would run, its sampling and seeds
(``tests/e2e/test_infer_gpu.py`` covers those on a GPU).
"""

import importlib.util
import json
import math
import sys
import types

import pytest

from e3 import main_infer
from tiny_lm import BOS, save_tiny_lm


class SamplingParams:
    """vllm.SamplingParams (0.24.0): the fields and checks main_infer can reach."""

    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, **kwargs):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if not math.isfinite(temperature) or temperature < 0.0 or temperature > 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if 0 < temperature < 1e-2:
            temperature = 1e-2  # vLLM raises it, with a warning
        if temperature < 1e-5 and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
        self.kwargs = kwargs


class CompletionOutput:
    def __init__(self, index, text, token_ids, finish_reason):
        self.index, self.text, self.token_ids, self.finish_reason = index, text, token_ids, finish_reason


class RequestOutput:
    def __init__(self, request_id, prompt, prompt_token_ids, outputs):
        self.request_id, self.prompt, self.prompt_token_ids, self.outputs = request_id, prompt, prompt_token_ids, \
            outputs


class FakeVLLM:
    """``vllm.LLM`` (0.24.0 signatures); records every call. Sample i of a request is the text ``"s<seed+i>"``."""

    calls: list = []

    def __init__(self, model, *, tokenizer=None, tensor_parallel_size=1, dtype="auto", seed=0,
                 gpu_memory_utilization=0.92, **kwargs):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        FakeVLLM.calls.append(("init", model, {"tensor_parallel_size": tensor_parallel_size, "dtype": dtype,
                                               "seed": seed, **kwargs}))

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None):
        FakeVLLM.calls.append(("generate", prompts, sampling_params, tokenization_kwargs))
        special = (tokenization_kwargs or {}).get("add_special_tokens", True)
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        outs = []
        for r, (prompt, sp) in enumerate(zip(prompts, params)):
            if isinstance(prompt, str):
                prompt = {"prompt": prompt}
            ids = prompt.get("prompt_token_ids")
            if ids is None:
                ids = self.tokenizer(prompt["prompt"], add_special_tokens=special)["input_ids"]
            samples = [CompletionOutput(i, f"s{sp.seed + i}", [7] * (i + 1), "length" if i % 2 else "stop")
                       for i in range(sp.n)]
            outs.append(RequestOutput(str(r), prompt.get("prompt"), list(ids), samples))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeVLLM.calls = []
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeVLLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return FakeVLLM


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("model") / "tiny-bos", bos=True)


@pytest.fixture
def model_inputs(monkeypatch):
    """The prompt ids (left padding removed) every transformers ``generate`` call receives."""
    from transformers import LlamaForCausalLM

    seen, real = [], LlamaForCausalLM.generate

    def spy(self, input_ids=None, attention_mask=None, **kw):
        seen.extend([ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)])
        return real(self, input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    return seen


def problems(tmp_path, count=2):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(count)))
    return path


def infer(model, data, out, *extra):
    return main_infer.main([str(model), "--data", str(data), "--output", str(out), "--max-new-tokens", "4",
                            "--quiet", *extra])


def rows(out):
    return [json.loads(x) for x in out.read_text().splitlines()]


def vllm_prompt_ids(call, tokenizer):
    """The ids vLLM would run for each prompt of a recorded ``generate`` call (text prompts tokenized as vLLM does)."""
    _, prompts, _, kw = call
    special = (kw or {}).get("add_special_tokens", True)
    return [p["prompt_token_ids"] if isinstance(p, dict) and "prompt_token_ids" in p else
            tokenizer(p if isinstance(p, str) else p["prompt"], add_special_tokens=special)["input_ids"]
            for p in prompts]


@pytest.mark.parametrize("template", ["--chat-template", "--no-chat-template"])
def test_exactly_one_bos_and_the_same_ids_on_both_backends(tmp_path, bos_model, fake_vllm, model_inputs, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bos_model)
    data = problems(tmp_path)
    assert infer(bos_model, data, tmp_path / "hf.jsonl", "--backend", "hf", "--n", "1", template) == 0
    assert infer(bos_model, data, tmp_path / "vllm.jsonl", "--backend", "vllm", "--n", "1", template) == 0
    hf_ids = model_inputs
    (call,) = [c for c in fake_vllm.calls if c[0] == "generate"]
    vllm_ids = vllm_prompt_ids(call, tok)
    bos = tok.convert_tokens_to_ids(BOS)
    for ids in hf_ids + vllm_ids:
        assert ids[0] == bos and ids.count(bos) == 1, tok.convert_ids_to_tokens(ids[:4])
    assert vllm_ids == hf_ids  # the same input on both backends
    assert all(isinstance(p, dict) and set(p) == {"prompt_token_ids"} for p in call[1])  # ids, not text
    if template == "--chat-template":
        assert tok.decode(hf_ids[0]) == "<s><|user|>What is 0 + 0?<eos><|assistant|>"


def test_greedy_with_several_samples_generates_once_and_repeats(tmp_path, bos_model, fake_vllm, model_inputs):
    data = problems(tmp_path, 3)
    assert infer(bos_model, data, tmp_path / "g4.jsonl", "--backend", "hf", "--temperature", "0", "--n", "4") == 0
    assert len(model_inputs) == 3  # one sequence per problem, not four
    assert infer(bos_model, data, tmp_path / "g1.jsonl", "--backend", "hf", "--temperature", "0", "--n", "1") == 0
    for r4, r1 in zip(rows(tmp_path / "g4.jsonl"), rows(tmp_path / "g1.jsonl")):
        assert r4["responses"] == r1["responses"] * 4 and r4["finish_reasons"] == r1["finish_reasons"] * 4

    assert infer(bos_model, data, tmp_path / "v4.jsonl", "--backend", "vllm", "--temperature", "0", "--n", "4") == 0
    (call,) = [c for c in fake_vllm.calls if c[0] == "generate"]
    assert [(sp.n, sp.temperature) for sp in call[2]] == [(1, 0.0)] * 3  # vLLM refuses n > 1 when greedy
    for r in rows(tmp_path / "v4.jsonl"):
        assert len(r["responses"]) == 4 and len(set(r["responses"])) == 1 and r["sampling"]["n"] == 4


@pytest.mark.parametrize("temperature", ["2.5", "0.005", "-1", "nan"])
def test_temperatures_vllm_would_refuse_or_change_are_refused_up_front(tmp_path, bos_model, temperature):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match=r"invalid --temperature"):
        infer(bos_model, problems(tmp_path), out, "--backend", "hf", "--temperature", temperature)
    assert not out.exists()


def test_temperature_bounds_are_accepted(tmp_path, bos_model, fake_vllm):
    for t in ("0.01", "2"):
        assert infer(bos_model, problems(tmp_path, 1), tmp_path / f"v{t}.jsonl", "--backend", "vllm",
                     "--temperature", t, "--n", "2") == 0
    assert [c[2][0].temperature for c in fake_vllm.calls if c[0] == "generate"] == [0.01, 2.0]


def test_rows_record_finish_reasons_and_backend(tmp_path, bos_model, fake_vllm):
    data = problems(tmp_path)
    assert infer(bos_model, data, tmp_path / "v.jsonl", "--backend", "vllm", "--n", "3", "--seed", "5") == 0
    (call,) = [c for c in fake_vllm.calls if c[0] == "generate"]
    for r, sp in zip(rows(tmp_path / "v.jsonl"), call[2]):
        assert r["backend"] == "vllm" and r["finish_reasons"] == ["stop", "length", "stop"]
        assert r["responses"] == [f"s{sp.seed + i}" for i in range(3)]
        assert sp.seed == main_infer.chunk_seed(5, r["id"])
    assert infer(bos_model, data, tmp_path / "h.jsonl", "--backend", "hf", "--n", "3") == 0
    for r in rows(tmp_path / "h.jsonl"):  # 4 new tokens from a random model: mostly cut at the limit
        assert r["backend"] == "hf" and len(r["finish_reasons"]) == 3
        assert set(r["finish_reasons"]) <= {"stop", "length"}
    with pytest.raises(SystemExit, match=r"v\.jsonl, line 1: field 'backend'.*another --output"):
        infer(bos_model, data, tmp_path / "v.jsonl", "--backend", "hf", "--n", "3", "--seed", "5")


def test_gguf_with_auto_backend_runs_on_transformers(tmp_path, monkeypatch, fake_vllm):
    """A .gguf checkpoint with a GPU and vLLM present: auto must pick transformers (vLLM does not load GGUF here)."""
    import torch

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else
                        real_find_spec(name, *a))
    chosen = []

    class Stop(Exception):
        pass

    def backend(name):
        def build(args, tokenizer):
            chosen.append((name, args.model, args.gguf_file))
            raise Stop
        return build

    monkeypatch.setattr(main_infer, "HFBackend", backend("hf"))
    monkeypatch.setattr(main_infer, "VLLMBackend", backend("vllm"))
    monkeypatch.setattr(main_infer, "load_tokenizer", lambda args: types.SimpleNamespace(chat_template=None))
    with pytest.raises(Stop):
        infer(gguf, problems(tmp_path), tmp_path / "out.jsonl")
    assert chosen == [("hf", str(tmp_path), "model.gguf")]
    with pytest.raises(SystemExit, match="GGUF checkpoints run on the transformers backend"):
        infer(gguf, problems(tmp_path), tmp_path / "out.jsonl", "--backend", "vllm")
