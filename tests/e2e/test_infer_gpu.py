"""main_infer on a CUDA device with the tiny model: the vLLM backend when vLLM is installed, else transformers."""

import importlib.util
import json

import pytest

from e3 import main_infer
from tiny_lm import save_tiny_lm

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_gpu_backends(tmp_path, backend):
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    model = save_tiny_lm(tmp_path / "tiny")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}=?", "answer": str(2 * i)}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    assert main_infer.main([str(model), "--data", str(data), "--output", str(out), "--n", "4", "--backend", backend,
                            "--max-new-tokens", "16", "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and all(len(r["responses"]) == 4 for r in rows)
