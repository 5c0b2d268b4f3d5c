"""pass@k from scored runs: ``python e3/main_metric.py --input RUN1.scored.jsonl [RUN2 ...] --k 1 2 4 8 16``.

For each problem with n samples of which c are correct, the unbiased estimator of Chen et al. 2021 (Eq. 1,
``e3.metrics.pass_at_k``): pass@k = 1 - C(n-c, k) / C(n, k). Per run it is averaged over the problems of each
source and over all problems ("all"), in percent; the reported value is the mean over run files (the E3 paper
averages 3 runs) with the sample standard deviation (ddof=1; 0 for one run). A k larger than a problem's sample
count is an error naming the problem; so is a problem whose sample count or source differs between runs, or a
problem missing from one run.
JSON: ``{source: {"pass@k": mean, "pass@k_std": std, ..., "problems": P, "runs": R}, "all": {...}}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from e3.io import DataError, atomic_path, atomic_write_json, iter_jsonl, require  # noqa: E402
from e3.metrics import pass_at_k  # noqa: E402


def read_scored(path) -> dict[str, dict]:
    """``{id: {"source", "n", "c", "line"}}`` from a scored file (``e3.main_eval`` output); scores must be 0/1."""
    path = Path(path)
    out, counters = {}, {}
    for line, row in iter_jsonl(path):
        scores = require(row, "scores", list, path, line, nonempty=True)
        for j, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s not in (0, 1):
                raise DataError(path, line, f"scores[{j}]", f"expected 0 or 1, got {s!r}")
        source = require(row, "source", str, path, line, nonempty=True) if "source" in row else path.stem
        pid = str(require(row, "id", (str, int), path, line)) if "id" in row else f"{source}-{counters.get(source, 0)}"
        counters[source] = counters.get(source, 0) + 1
        if pid in out:
            raise DataError(path, line, "id", f"duplicate id '{pid}' (first on line {out[pid]['line']})")
        out[pid] = {"source": source, "n": len(scores), "c": int(sum(scores)), "line": line}
    if not out:
        raise DataError(path, None, None, "no lines")
    return out


def check_runs(paths, runs: list[dict]) -> None:
    """Same problems, sources and sample counts in every run."""
    ref_path, ref = paths[0], runs[0]
    for path, run in zip(paths[1:], runs[1:]):
        for pid in ref.keys() - run.keys():
            raise ValueError(f"problem '{pid}' is in {ref_path} but missing from {path}")
        for pid in run.keys() - ref.keys():
            raise ValueError(f"problem '{pid}' is in {path} (line {run[pid]['line']}) but missing from {ref_path}")
        for pid, r in run.items():
            a = ref[pid]
            if r["n"] != a["n"]:
                raise ValueError(f"problem '{pid}' has {a['n']} samples in {ref_path} (line {a['line']}) but "
                                 f"{r['n']} in {path} (line {r['line']}): runs must use the same sample count")
            if r["source"] != a["source"]:
                raise ValueError(f"problem '{pid}' has source '{a['source']}' in {ref_path} but '{r['source']}' "
                                 f"in {path}")


def run_pass_at_k(path, run: dict, ks) -> dict[str, dict[int, float]]:
    """``{source or "all": {k: mean pass@k in percent over its problems}}`` for one run."""
    ids = sorted(run)
    n = np.array([run[i]["n"] for i in ids])
    c = np.array([run[i]["c"] for i in ids])
    src = np.array([run[i]["source"] for i in ids])
    for k in ks:
        short = np.flatnonzero(n < k)
        if short.size:
            pid = ids[short[0]]
            raise ValueError(f"k={k} is larger than the {run[pid]['n']} samples of problem '{pid}' "
                             f"({path}, line {run[pid]['line']}); use k <= {int(n.min())} or sample more")
    values = {k: np.asarray(pass_at_k(n, c, k), dtype=np.float64) * 100.0 for k in ks}
    out = {s: {k: float(values[k][src == s].mean()) for k in ks} for s in sorted(set(src.tolist()))}
    out["all"] = {k: float(values[k].mean()) for k in ks}
    return out


def compute(paths, ks) -> dict:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("--k needs positive integers")
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the same file is given twice in --input: each run file counts once")
    runs = [read_scored(p) for p in paths]
    check_runs(paths, runs)
    per_run = [run_pass_at_k(p, r, ks) for p, r in zip(paths, runs)]
    counts: dict[str, int] = {}
    for r in runs[0].values():
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    if "all" in counts:
        raise ValueError("a source is named 'all', which is reserved for the over-all row; rename it")
    counts["all"] = len(runs[0])
    result = {}
    for group in per_run[0]:
        entry = {}
        for k in ks:
            vals = np.array([pr[group][k] for pr in per_run])
            entry[f"pass@{k}"] = float(vals.mean())
            entry[f"pass@{k}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        entry.update({"problems": counts[group], "runs": len(paths)})
        result[group] = entry
    return result


def format_table(result: dict, ks) -> str:
    ks = sorted({int(k) for k in ks})
    head = f"{'source':<20}" + "".join(f"{'pass@' + str(k):>16}" for k in ks) + f"{'problems':>10}"
    lines = [head, "-" * len(head)]
    for name, e in result.items():
        cells = "".join(f"{e[f'pass@{k}']:>9.2f} ±{e[f'pass@{k}_std']:>5.2f}" for k in ks)
        lines.append(f"{name:<20}{cells}{e['problems']:>10d}")
    lines.append(f"(percent; mean ± sample std over {next(iter(result.values()))['runs']} run file(s))")
    return "\n".join(lines)


def plot(result: dict, ks, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({int(k) for k in ks})
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, e in result.items():
        y = [e[f"pass@{k}"] for k in ks]
        err = [e[f"pass@{k}_std"] for k in ks]
        ax.errorbar(ks, y, yerr=err, marker="o", capsize=3, label=name, lw=2.5 if name == "all" else 1.5)
    top = max(e[f"pass@{k}"] + e[f"pass@{k}_std"] for e in result.values() for k in ks)
    ax.set_ylim(0, min(100.0, max(1.0, 1.1 * top)))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="e3.main_metric", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="scored JSON-lines files, one per run")
    p.add_argument("--k", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--output", default=None, help="metric JSON")
    p.add_argument("--plot", default=None, help="pass@k curve (PNG)")
    args = p.parse_args(argv)
    try:
        result = compute(args.input, args.k)
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_table(result, args.k))
    if args.output:
        atomic_write_json(args.output, result)
        print(f"[e3] metrics: {args.output}", file=sys.stderr)
    if args.plot:
        plot(result, args.k, args.plot)
        print(f"[e3] plot:    {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
