"""Sample n responses per benchmark problem: ``python -m e3.main_infer MODEL --benchmark math500 --n 16 --output OUT``.

The E3 evaluation protocol (Liao et al. 2025; the authors' ``scripts/infer.sh``): 16 samples per problem at
temperature 1 with up to 6,144 new tokens, on AIME24 / AMC23 / MATH500 / OlympiadBench, repeated for 3 runs
(seeds); accuracy and pass@k are computed by ``e3.main_eval`` / ``e3.main_metric``.

Backend: vLLM 0.24 (the version verl 0.9.1 pins) when it is installed and a CUDA device is visible
(``--tensor-parallel-size``), else batched ``transformers`` ``generate`` with left padding (CPU or GPU; GGUF
checkpoints via ``--gguf-file`` or a ``.gguf`` path, always on transformers). Both backends score the same input:
the prompt is tokenized here, once — the chat template's text with ``add_special_tokens=False`` (the template writes
its own BOS, as DeepSeek-R1-Distill's does), a plain prompt with ``add_special_tokens=True`` — and vLLM gets the
token ids (a text prompt would be re-tokenized by vLLM with special tokens added: two BOS). Settings vLLM would
refuse or change are refused here for both backends: ``--temperature`` must be 0 (greedy) or in [0.01, 2]. Greedy
decoding with ``--n`` > 1 samples once and repeats the response n times (vLLM refuses n > 1 at temperature 0).

Output: one JSON line per problem ``{"id", "source", "prompt", "answer", "responses", "finish_reasons", "backend",
"model", "sampling"}`` (``finish_reasons[i]``: ``"stop"`` = end of sequence, ``"length"`` = cut at
``--max-new-tokens``), appended (flush + fsync) as soon as the problem is done. Resumable: ids already in the output
are skipped after an unterminated last line left by a kill is dropped (atomic rewrite); model, backend and sampling
settings must match the existing lines. All input problems are validated before the model is loaded; bad input
writes nothing.
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
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0  # vLLM 0.24 SamplingParams: > 2 refused, (0, 0.01) raised to 0.01


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
    p.add_argument("--temperature", type=float, default=1.0,
                   help=f"sampling temperature: 0 = greedy, else {MIN_TEMPERATURE}-{MAX_TEMPERATURE} (paper: 1.0)")
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
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto",
                   help="auto: vLLM with a CUDA device and vLLM installed, else transformers (always for GGUF)")
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
                     ("--top-p", 0 < args.top_p <= 1),
                     ("--tensor-parallel-size", args.tensor_parallel_size >= 1),
                     ("--batch-size", args.batch_size is None or args.batch_size >= 1),
                     ("--limit", args.limit is None or args.limit >= 1),
                     ("--threads", args.threads is None or args.threads >= 1)):
        if not ok:
            raise SystemExit(f"error: invalid {name}")
    t = args.temperature
    if not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise SystemExit(f"error: invalid --temperature {t}: use 0 (greedy) or a value in [{MIN_TEMPERATURE}, "
                         f"{MAX_TEMPERATURE}] (vLLM refuses temperatures above 2 and raises lower ones to 0.01)")
    if "{prompt}" not in args.prompt_template:
        raise SystemExit("error: --prompt-template must contain '{prompt}'")
    if args.temperature == 0 and args.n > 1:
        print(f"[e3] temperature 0 is greedy: one response per problem, repeated {args.n} times", file=sys.stderr)
    model = Path(args.model)
    if model.suffix == ".gguf" and model.is_file():  # a GGUF file given directly
        args.model, args.gguf_file = str(model.parent), model.name
    if not Path(args.model).exists():
        raise SystemExit(f"error: model path not found: {args.model}")
    if args.gguf_file and args.backend == "vllm":
        raise SystemExit("error: GGUF checkpoints run on the transformers backend (--backend hf or auto)")


def sampling_record(args) -> dict:
    return {"n": args.n, "temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed, "chat_template": args.chat_template,
            "system_prompt": args.system_prompt, "prompt_template": args.prompt_template}


def model_record(args) -> str:
    return str(Path(args.model).resolve()) + (f"::{args.gguf_file}" if args.gguf_file else "")


def existing_ids(path, model: str, sampling: dict, backend: str) -> set:
    """Ids already completed in ``path`` (after dropping a kill-truncated tail); settings must match."""
    path = Path(path)
    done = set()
    if not path.is_file():
        return done
    for line, row in iter_jsonl(path, allow_truncated_tail=True):  # validate everything before touching it
        pid = require(row, "id", str, path, line)
        require(row, "responses", list, path, line, nonempty=True)
        for key, want in (("model", model), ("backend", backend), ("sampling", sampling)):
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


# -- backends ----------------------------------------------------------------------------------------------------
def prompt_ids(tokenizer, problem: dict, args) -> list[int]:
    """The token ids both backends generate from: the chat template's text (``--chat-template``) without added
    special tokens (the template writes its own, BOS included), or the plain prompt with them (as the tokenizer
    would for any text)."""
    user = args.prompt_template.replace("{prompt}", problem["prompt"])
    if not args.chat_template:
        return list(tokenizer(user, add_special_tokens=True)["input_ids"])
    messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else []) + \
               [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def draws(args) -> int:
    """Sequences generated per problem: greedy decoding gives one response, repeated ``n`` times."""
    return 1 if args.temperature == 0 else args.n


class HFBackend:
    """Batched ``transformers`` sampling with left padding."""

    name = "hf"

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

    def generate(self, ids: list[list[int]], seed: int) -> tuple[list[str], list[str]]:
        """Texts and finish reasons (``stop`` / ``length``) of one left-padded batch of prompt ids."""
        torch, a = self.torch, self.args
        torch.manual_seed(seed)
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        sample = a.temperature > 0
        kw = {"do_sample": True, "temperature": a.temperature, "top_p": a.top_p, "top_k": 0} if sample else \
             {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      max_new_tokens=a.max_new_tokens, eos_token_id=self.eos,
                                      pad_token_id=self.tokenizer.pad_token_id, **kw)
        gen = out[:, enc["input_ids"].shape[1]:]
        ended = torch.isin(gen, torch.tensor(self.eos, device=gen.device))
        self.tokens += int((~torch.isin(gen, torch.tensor(self.eos + [self.tokenizer.pad_token_id],
                                                            device=gen.device))).sum())
        reasons = ["stop" if bool(row.any()) else "length" for row in ended]
        return self.tokenizer.batch_decode(gen, skip_special_tokens=True), reasons

    def sample(self, ids: list[list[int]], pids: list[str]) -> list[tuple[list[str], list[str]]]:
        """``(responses, finish_reasons)`` for each prompt, in sub-batches of ``batch_size`` sequences."""
        k, n, bs = draws(self.args), self.args.n, self.args.batch_size
        flat = [x for x in ids for _ in range(k)]
        texts, reasons = [], []
        for i in range(0, len(flat), bs):
            t, r = self.generate(flat[i:i + bs], chunk_seed(self.args.seed, f"{pids[0]}#{i}"))
            texts, reasons = texts + t, reasons + r
        return [(texts[j * k:(j + 1) * k] * (n // k), reasons[j * k:(j + 1) * k] * (n // k))
                for j in range(len(ids))]


class VLLMBackend:
    """vLLM 0.24 offline engine (GPU); one request per problem, its prompt given as token ids."""

    name = "vllm"

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

    def sample(self, ids: list[list[int]], pids: list[str]) -> list[tuple[list[str], list[str]]]:
        a = self.args
        k = draws(a)  # vLLM refuses n > 1 at temperature 0; with a seed, sample i of n uses seed + i
        params = [self.SamplingParams(n=k, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_new_tokens,
                                      seed=chunk_seed(a.seed, pid)) for pid in pids]
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        for x, out in zip(ids, outs):
            if list(out.prompt_token_ids) != list(x):
                raise RuntimeError(f"vLLM changed the prompt ids of request {out.request_id}: sent {len(x)} ids, "
                                   f"it ran {len(out.prompt_token_ids)}")
        self.tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
        return [([o.text for o in out.outputs] * (a.n // k), [o.finish_reason for o in out.outputs] * (a.n // k))
                for out in outs]


def choose_backend(name: str, gguf: bool = False) -> str:
    if name != "auto":
        return name
    if gguf:
        return "hf"
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    return "vllm" if cuda and importlib.util.find_spec("vllm") is not None else "hf"


def run(args) -> dict:
    check_args(args)
    try:
        problems = load_problems(args.benchmark, args.data, args.sources, args.limit)
    except (DataError, BenchmarkUnavailable, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    backend_name = choose_backend(args.backend, bool(args.gguf_file))
    args.batch_size = args.batch_size or DEFAULT_BATCH[backend_name]
    tokenizer = load_tokenizer(args)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if args.chat_template and not has_template:
        raise SystemExit("error: --chat-template requested but the tokenizer has no chat template")
    if args.chat_template is None:  # auto
        args.chat_template = has_template
    model, sampling = model_record(args), sampling_record(args)
    try:
        done = existing_ids(args.output, model, sampling, backend_name)
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

    per_call = max(1, args.batch_size // draws(args))
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", disable=args.quiet,
               file=sys.stderr)
    with JsonlAppender(args.output) as out:
        for i in range(0, len(todo), per_call):
            chunk = todo[i:i + per_call]
            ids = [prompt_ids(backend.tokenizer, p, args) for p in chunk]
            for p, (responses, reasons) in zip(chunk, backend.sample(ids, [p["id"] for p in chunk])):
                out.append({"id": p["id"], "source": p["source"], "prompt": p["prompt"], "answer": p["answer"],
                            "responses": responses, "finish_reasons": reasons, "backend": backend.name,
                            "model": model, "sampling": sampling})
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
