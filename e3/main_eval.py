"""Score sampled responses and report accuracy: ``python e3/main_eval.py --input OUT.jsonl [--output SCORED.jsonl]``.

Accuracy as in the E3 paper (Liao et al. 2025): the mean correctness over *all* samples of a source
(16 per problem there), i.e. an estimate of pass@1. Every response is scored with ``e3.reward.score_batch``
(math-verify, all cores, a time bound per call: a hung or crashing call scores 0). Adds ``scores`` (0/1 per
response) and ``lengths`` (tokens with ``--tokenizer``, else whitespace-separated words; the summary says which)
to each line, prints a per-source table and writes a summary JSON. Reads ``responses`` (``e3.main_infer``) or the
E3 authors' ``test_outputs``. Outputs are written atomically (temporary file + rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e3.io import DataError, atomic_write_json, atomic_write_jsonl, iter_jsonl, require  # noqa: E402

RESPONSE_FIELDS = ("responses", "test_outputs")


def read_outputs(path) -> list[dict]:
    """Validated inference lines: ``answer`` and a non-empty list of string responses (``responses`` or
    ``test_outputs``) required; ``source`` (default: file stem) and ``id`` (default ``<source>-<k>``) optional."""
    path = Path(path)
    rows, seen, counters = [], {}, {}
    for line, row in iter_jsonl(path):
        field = next((f for f in RESPONSE_FIELDS if f in row), None)
        if field is None:
            raise DataError(path, line, "responses", f"missing (expected one of {', '.join(RESPONSE_FIELDS)})")
        responses = require(row, field, list, path, line, nonempty=True)
        for j, r in enumerate(responses):
            if not isinstance(r, str):
                raise DataError(path, line, f"{field}[{j}]", f"expected a string, got {type(r).__name__}")
        answer = require(row, "answer", (str, int, float), path, line)
        if not str(answer).strip():
            raise DataError(path, line, "answer", "empty")
        source = require(row, "source", str, path, line, nonempty=True) if "source" in row else path.stem
        pid = str(require(row, "id", (str, int), path, line)) if "id" in row else f"{source}-{counters.get(source, 0)}"
        counters[source] = counters.get(source, 0) + 1
        if pid in seen:
            raise DataError(path, line, "id", f"duplicate id '{pid}' (first on line {seen[pid]})")
        seen[pid] = line
        out = {k: v for k, v in row.items() if k != "test_outputs"}  # the authors' name becomes "responses"
        out.update({"id": pid, "source": source, "answer": str(answer), "responses": responses})
        rows.append(out)
    if not rows:
        raise DataError(path, None, None, "no lines")
    return rows


def length_counter(tokenizer_path):
    """``(count(text) -> int, unit description)``: tokenizer tokens when a path is given, else words."""
    if not tokenizer_path:
        return (lambda text: len(text.split())), "whitespace-separated words (no --tokenizer given)"
    from transformers import AutoTokenizer

    p = Path(tokenizer_path)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    tok = AutoTokenizer.from_pretrained(str(p.parent) if kw else str(p), **kw)
    return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), f"tokens ({tokenizer_path})"


def score_rows(rows: list[dict], timeout: float, workers: int | None, chunk: int, quiet: bool) -> dict:
    """Set ``row["scores"]`` (0/1 from the reward's ``acc``); returns counts of scorer failures if reported."""
    from tqdm import tqdm

    from e3.reward import score_batch

    items = [{"data_source": r["source"], "solution_str": resp, "ground_truth": r["answer"]}
             for r in rows for resp in r["responses"]]
    results = []
    with tqdm(total=len(items), unit="response", disable=quiet, file=sys.stderr, desc="scoring") as bar:
        for i in range(0, len(items), chunk):
            part = score_batch(items[i:i + chunk], timeout=timeout, workers=workers)
            if len(part) != len(items[i:i + chunk]):
                raise RuntimeError(f"score_batch returned {len(part)} results for {len(items[i:i + chunk])} items")
            results += part
            bar.update(len(part))
    failures = {}
    pos = 0
    for r in rows:
        res = results[pos:pos + len(r["responses"])]
        pos += len(r["responses"])
        r["scores"] = [1 if int(x.get("acc", x.get("score", 0) > 0)) else 0 for x in res]
        for x in res:
            for key in ("timeout", "error"):
                if x.get(key):
                    failures[key] = failures.get(key, 0) + 1
    return failures


def summarize(rows: list[dict], unit: str) -> dict:
    """Per source and over all samples: accuracy (mean over samples), mean length, problems, samples."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["source"], []).append(r)

    def stats(rs):
        scores = [s for r in rs for s in r["scores"]]
        lengths = [n for r in rs for n in r["lengths"]]
        return {"accuracy": sum(scores) / len(scores), "mean_length": sum(lengths) / len(lengths),
                "problems": len(rs), "samples": len(scores)}

    return {"length_unit": unit, "sources": {s: stats(rs) for s, rs in sorted(groups.items())}, "all": stats(rows)}


def format_table(summary: dict) -> str:
    head = f"{'source':<20} {'accuracy':>9} {'mean_len':>9} {'problems':>9} {'samples':>9}"
    lines = [head, "-" * len(head)]
    for name, s in list(summary["sources"].items()) + [("all", summary["all"])]:
        lines.append(f"{name:<20} {100 * s['accuracy']:>8.2f}% {s['mean_length']:>9.1f} {s['problems']:>9d} "
                     f"{s['samples']:>9d}")
    lines.append(f"(accuracy = mean over all samples; length unit: {summary['length_unit']})")
    return "\n".join(lines)


def default_path(inp: Path, suffix: str) -> Path:
    stem = inp.name[:-len(".jsonl")] if inp.name.endswith(".jsonl") else inp.stem
    return inp.with_name(stem + suffix)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="e3.main_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="inference output (JSON lines with responses or test_outputs)")
    p.add_argument("--output", default=None, help="scored JSON lines (default: INPUT.scored.jsonl)")
    p.add_argument("--summary", default=None, help="summary JSON (default: INPUT.summary.json)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or .gguf file for token lengths")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per scored response (default: e3.reward.DEFAULT_TIMEOUT)")
    p.add_argument("--workers", type=int, default=None, help="scoring processes (default: all cores)")
    p.add_argument("--chunk", type=int, default=4096, help="responses per score_batch call")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    inp = Path(args.input)
    out = Path(args.output) if args.output else default_path(inp, ".scored.jsonl")
    summary_path = Path(args.summary) if args.summary else default_path(inp, ".summary.json")
    if out.resolve() == inp.resolve():
        raise SystemExit("error: --output must differ from --input")
    try:
        rows = read_outputs(inp)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    from e3.reward import DEFAULT_TIMEOUT

    count, unit = length_counter(args.tokenizer)
    failures = score_rows(rows, args.timeout or DEFAULT_TIMEOUT, args.workers, max(1, args.chunk), args.quiet)
    for r in rows:
        r["lengths"] = [count(t) for t in r["responses"]]
    summary = summarize(rows, unit)
    summary.update({"input": str(inp), "scored": str(out), "scorer_failures": failures})
    atomic_write_jsonl(out, rows)
    atomic_write_json(summary_path, summary)
    print(format_table(summary))
    print(f"[e3] scored lines: {out}\n[e3] summary:      {summary_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
