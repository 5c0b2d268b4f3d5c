"""Sample n responses per benchmark problem: ``python -m e3.main_infer MODEL --benchmark math500 --n 16 --output OUT``.

The E3 evaluation protocol (Liao et al. 2025; the authors' ``scripts/infer.sh``): 16 samples per problem at
temperature 1 with up to 6,144 new tokens, on AIME24 / AMC23 / MATH500 / OlympiadBench, repeated for 3 runs
(seeds); accuracy and pass@k are computed by ``e3.main_eval`` / ``e3.main_metric``.

Backend: vLLM when it is installed and a CUDA device is visible (``--tensor-parallel-size``), else batched
``transformers`` ``generate`` with left padding (CPU or GPU; GGUF checkpoints via ``--gguf-file``).
Output: one JSON line per problem ``{"id", "source", "prompt", "answer", "responses", "model", "sampling"}``,
appended (flush + fsync) as soon as the problem is done. Resumable: ids already in the output are skipped after an
unterminated last line left by a kill is dropped (atomic rewrite); settings must match the existing lines.
All input problems are validated before the model is loaded; bad input writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e3.benchmarks import BENCHMARKS, BenchmarkUnavailable, load_problems  # noqa: E402
from e3.io import DataError, JsonlAppender, drop_truncated_tail, iter_jsonl, require  # noqa: E402

DEFAULT_BATCH = {"hf": 16, "vllm": 4096}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3.main_infer", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory (transformers / vLLM) or a .gguf file")
    p.add_argument("--benchmark", nargs="+", default=[], choices=BENCHMARKS, metavar="NAME",
                   help=f"benchmark name(s): {', '.join(BENCHMARKS)}")
    p.add_argument("--data", nargs="+", default=[], metavar="FILE",
                   help="JSON-lines problem file(s) with prompt, answer[, source, id] (e.g. the E3 authors' test.json)")
    p.add_argument("--sources", nargs="+", default=None, help="keep only these sources of --data files")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark/file (smoke tests)")
    p.add_argument("--output", required=True, help="output JSON-lines file (appended to; resumable)")
    p.add_argument("--n", type=int, default=16, help="samples per problem (paper: 16)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (paper: 1.0; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=6144, help="paper: 6144")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the tokenizer's chat template with the generation prompt "
                        "(default: when the tokenizer has one)")
    p.add_argument("--system-prompt", default=None, help="system message for the chat template")
    p.add_argument("--prompt-template", default="{prompt}",
                   help="text sent as the user message; '{prompt}' is replaced by the problem "
                        "(e.g. '{prompt} Put your final answer within \\boxed{}.')")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per generation call (default 16 for transformers, 4096 for vLLM)")
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside the model directory (transformers)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    for name, ok in (("--n", args.n >= 1), ("--max-new-tokens", args.max_new_tokens >= 1),
                     ("--temperature", args.temperature >= 0), ("--top-p", 0 < args.top_p <= 1),
                     ("--tensor-parallel-size", args.tensor_parallel_size >= 1),
                     ("--batch-size", args.batch_size is None or args.batch_size >= 1),
                     ("--limit", args.limit is None or args.limit >= 1),
                     ("--threads", args.threads is None or args.threads >= 1)):
        if not ok:
            raise SystemExit(f"error: invalid {name}")
    if "{prompt}" not in args.prompt_template:
        raise SystemExit("error: --prompt-template must contain '{prompt}'")
    if args.temperature == 0 and args.n > 1:
        print("[e3] warning: temperature 0 is greedy: the n samples will be identical", file=sys.stderr)
    model = Path(args.model)
    if model.suffix == ".gguf" and model.is_file():  # a GGUF file given directly
        args.model, args.gguf_file = str(model.parent), model.name
    if not Path(args.model).exists():
        raise SystemExit(f"error: model path not found: {args.model}")


def sampling_record(args) -> dict:
    return {"n": args.n, "temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed, "chat_template": args.chat_template,
            "system_prompt": args.system_prompt, "prompt_template": args.prompt_template}


def model_record(args) -> str:
    return str(Path(args.model).resolve()) + (f"::{args.gguf_file}" if args.gguf_file else "")


def existing_ids(path, model: str, sampling: dict) -> set:
    """Ids already completed in ``path`` (after dropping a kill-truncated tail); settings must match."""
    path = Path(path)
    done = set()
    if not path.is_file():
        return done
    for line, row in iter_jsonl(path, allow_truncated_tail=True):  # validate everything before touching it
        pid = require(row, "id", str, path, line)
        require(row, "responses", list, path, line, nonempty=True)
        for key, want in (("model", model), ("sampling", sampling)):
            if row.get(key) != want:
                raise DataError(path, line, key, f"was produced with {row.get(key)!r}, this run uses {want!r}; "
                                                 "resume with the same settings or choose another --output")
        if pid in done:
            raise DataError(path, line, "id", f"duplicate id '{pid}'")
        done.add(pid)
    dropped = drop_truncated_tail(path)
    if dropped:
        print(f"[e3] {path}: dropped an incomplete last line ({dropped} bytes) left by an interrupted run",
              file=sys.stderr)
    return done


def chunk_seed(seed: int, pid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:4], "little")


# -- backends --------------------------------------------------------------------------------------------------
class HFBackend:
    """Batched ``transformers`` sampling with left padding."""

    def __init__(self, args, tokenizer):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
        self.tokenizer = tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, **kw).to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Sample exactly with the flags: the checkpoint's generation_config may carry sampling defaults (top_k,
        # repetition_penalty, ...) that transformers would otherwise apply; keep only its special token ids.
        old = self.model.generation_config
        self.model.generation_config = GenerationConfig(bos_token_id=old.bos_token_id, eos_token_id=old.eos_token_id,
                                                        pad_token_id=old.pad_token_id)
        eos = old.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        if not eos:
            raise SystemExit("error: the model/tokenizer defines no end-of-sequence token")
        self.eos = sorted(eos)
        self.args, self.tokens = args, 0

    def generate(self, texts: list[str], seed: int) -> list[str]:
        torch, a = self.torch, self.args
        torch.manual_seed(seed)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = a.temperature > 0
        kw = {"do_sample": True, "temperature": a.temperature, "top_p": a.top_p, "top_k": 0} if sample else \
             {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=a.max_new_tokens, eos_token_id=self.eos,
                                      pad_token_id=self.tokenizer.pad_token_id, **kw)
        gen = out[:, enc["input_ids"].shape[1]:]
        self.tokens += int((~torch.isin(gen, torch.tensor(self.eos + [self.tokenizer.pad_token_id],
                                                            device=gen.device))).sum())
        return self.tokenizer.batch_decode(gen, skip_special_tokens=True)

    def sample(self, texts: list[str], pids: list[str]) -> list[list[str]]:
        """n responses for each prompt text, in sub-batches of ``batch_size`` sequences."""
        n, bs = self.args.n, self.args.batch_size
        flat = [t for t in texts for _ in range(n)]
        outs = []
        for i in range(0, len(flat), bs):
            outs += self.generate(flat[i:i + bs], chunk_seed(self.args.seed, f"{pids[0]}#{i}"))
        return [outs[j * n:(j + 1) * n] for j in range(len(texts))]


class VLLMBackend:
    """vLLM offline engine (GPU); one request per problem with ``n`` samples."""

    def __init__(self, args, tokenizer):
        from vllm import LLM, SamplingParams

        if args.gguf_file:
            raise SystemExit("error: --gguf-file is supported by the transformers backend only (--backend hf)")
        # generation_config="vllm": ignore the checkpoint's sampling defaults; sample exactly with the flags
        self.llm = LLM(model=args.model, tensor_parallel_size=args.tensor_parallel_size, seed=args.seed,
                       gpu_memory_utilization=args.gpu_memory_utilization, generation_config="vllm",
                       dtype="auto" if args.dtype == "auto" else args.dtype)
        self.tokenizer = tokenizer
        self.SamplingParams, self.args, self.tokens = SamplingParams, args, 0

    def sample(self, texts: list[str], pids: list[str]) -> list[list[str]]:
        a = self.args
        params = [self.SamplingParams(n=a.n, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_new_tokens,
                                      seed=chunk_seed(a.seed, pid)) for pid in pids]
        outs = self.llm.generate(texts, params, use_tqdm=False)
        self.tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
        return [[o.text for o in out.outputs] for out in outs]


def choose_backend(name: str) -> str:
    if name != "auto":
        return name
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    return "vllm" if cuda and importlib.util.find_spec("vllm") is not None else "hf"


def format_prompt(tokenizer, problem: dict, args) -> str:
    user = args.prompt_template.replace("{prompt}", problem["prompt"])
    if not args.chat_template:
        return user
    messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else []) + \
               [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run(args) -> dict:
    check_args(args)
    try:
        problems = load_problems(args.benchmark, args.data, args.sources, args.limit)
    except (DataError, BenchmarkUnavailable, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    backend_name = choose_backend(args.backend)
    args.batch_size = args.batch_size or DEFAULT_BATCH[backend_name]
    tokenizer = load_tokenizer(args)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if args.chat_template and not has_template:
        raise SystemExit("error: --chat-template requested but the tokenizer has no chat template")
    if args.chat_template is None:  # auto
        args.chat_template = has_template
    model, sampling = model_record(args), sampling_record(args)
    try:
        done = existing_ids(args.output, model, sampling)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    todo = [p for p in problems if p["id"] not in done]
    print(f"[e3] {len(problems)} problems, {len(problems) - len(todo)} already in {args.output}, "
          f"{len(todo)} to sample ({args.n} each, backend {backend_name})", file=sys.stderr)
    if not todo:
        return {"problems": len(problems), "sampled": 0, "output": args.output}
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    backend = (VLLMBackend if backend_name == "vllm" else HFBackend)(args, tokenizer)
    t_load, t0 = time.perf_counter() - t0, time.perf_counter()
    from tqdm import tqdm

    per_call = max(1, args.batch_size // args.n)
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", disable=args.quiet,
               file=sys.stderr)
    with JsonlAppender(args.output) as out:
        for i in range(0, len(todo), per_call):
            chunk = todo[i:i + per_call]
            texts = [format_prompt(backend.tokenizer, p, args) for p in chunk]
            for p, responses in zip(chunk, backend.sample(texts, [p["id"] for p in chunk])):
                out.append({"id": p["id"], "source": p["source"], "prompt": p["prompt"], "answer": p["answer"],
                            "responses": responses, "model": model, "sampling": sampling})
                bar.update(1)
    bar.close()
    t_gen = time.perf_counter() - t0
    print(f"[e3] model load {t_load:.1f} s; generated {backend.tokens} tokens in {t_gen:.1f} s "
          f"({backend.tokens / max(t_gen, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return {"problems": len(problems), "sampled": len(todo), "output": args.output}


def load_tokenizer(args):
    from transformers import AutoTokenizer

    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(args.model, **kw)
    except Exception as e:  # noqa: BLE001 - reported to the user as is
        raise SystemExit(f"error: cannot load the tokenizer of {args.model}: {type(e).__name__}: {e}") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    print(f"[e3] wrote {res['sampled']} problems to {res['output']} ({res['problems']} in total)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
