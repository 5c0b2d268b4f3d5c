"""main_infer on a CUDA device with a tiny model whose tokenizer adds a BOS and whose chat template writes one (as
DeepSeek-R1-Distill's do): the vLLM backend when vLLM is installed, and transformers. Checks what the model saw
(exactly one BOS, the same ids on both backends), greedy decoding with n > 1, and that a same-seed rerun in a new
process gives the same samples (vLLM with ``VLLM_BATCH_INVARIANT=1``, as the README prescribes)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from e3 import main_infer
from tiny_lm import BOS, save_tiny_lm

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
BACKENDS = ["hf", "vllm"]


def _need(backend):
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("model") / "tiny-bos", hidden=128, bos=True)  # head size 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=?", "answer": str(2 * i)}) + "\n" for i in range(5)))
    return path


def argv(model, data, out, backend, *extra):
    mem = ["--gpu-memory-utilization", "0.2"] if backend == "vllm" else []  # several engines in one process
    return [str(model), "--data", str(data), "--output", str(out), "--backend", backend, "--max-new-tokens", "16",
            "--quiet", *mem, *extra]


def rows(out):
    return [json.loads(x) for x in out.read_text().splitlines()]


@pytest.fixture
def seen_prompt_ids(monkeypatch):
    """The prompt ids each backend ran: transformers' generate inputs, vLLM's ``RequestOutput.prompt_token_ids``."""
    seen = {"hf": [], "vllm": []}
    from transformers import LlamaForCausalLM

    real_hf = LlamaForCausalLM.generate

    def hf_spy(self, input_ids=None, attention_mask=None, **kw):
        seen["hf"].extend(ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask))
        return real_hf(self, input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(LlamaForCausalLM, "generate", hf_spy)
    if importlib.util.find_spec("vllm") is not None:
        import vllm

        real_vllm = vllm.LLM.generate

        def vllm_spy(self, *a, **kw):
            outs = real_vllm(self, *a, **kw)
            seen["vllm"].extend(list(o.prompt_token_ids) for o in outs)
            return outs

        monkeypatch.setattr(vllm.LLM, "generate", vllm_spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_backends_one_bos_rows_and_greedy(tmp_path, model, data, backend, seen_prompt_ids):
    _need(backend)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    bos = tok.convert_tokens_to_ids(BOS)
    out = tmp_path / "out.jsonl"
    assert main_infer.main(argv(model, data, out, backend, "--n", "4")) == 0
    got = rows(out)
    assert len(got) == 5 and all(len(r["responses"]) == 4 and len(r["finish_reasons"]) == 4 for r in got)
    assert all(r["backend"] == backend and set(r["finish_reasons"]) <= {"stop", "length"} for r in got)
    ids = seen_prompt_ids[backend]
    assert len(ids) == 5 and all(x[0] == bos and x.count(bos) == 1 for x in ids)
    expected = [main_infer.prompt_ids(tok, {"prompt": f"{i}+{i}=?"}, main_infer.build_parser().parse_args(
        [str(model), "--output", "x", "--chat-template"])) for i in range(5)]
    assert ids == expected  # the same ids the other backend gets

    # greedy with n > 1: one decode per problem, repeated; identical to a greedy n = 1 run
    assert main_infer.main(argv(model, data, tmp_path / "g4.jsonl", backend, "--temperature", "0", "--n", "4")) == 0
    assert main_infer.main(argv(model, data, tmp_path / "g1.jsonl", backend, "--temperature", "0", "--n", "1")) == 0
    for r4, r1 in zip(rows(tmp_path / "g4.jsonl"), rows(tmp_path / "g1.jsonl")):
        assert r4["responses"] == r1["responses"] * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_rerun_in_a_new_process_gives_the_same_samples(tmp_path, model, data, backend, repo_root):
    _need(backend)
    env = {**os.environ, "VLLM_BATCH_INVARIANT": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "e3.main_infer", *argv(model, data, out, backend, "--n", "4",
                                                                            "--seed", "3")],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append([(r["id"], r["responses"], r["finish_reasons"]) for r in rows(out)])
    assert outs[0] == outs[1]
    assert len({x for _, responses, _ in outs[0] for x in responses}) > 1  # sampled, not one repeated string
