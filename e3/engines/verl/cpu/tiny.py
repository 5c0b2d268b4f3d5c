"""The ``verl_cpu_tiny`` run's assets: a tiny model, its tokenizer and the arithmetic task as verl parquet, cached.

Everything is built locally (no hub): the local engine's graded arithmetic (``e3.tasks.arithmetic``: problems such
as ``"47-8="`` with an exact integer answer, split by a stable hash into demonstration / RL / validation pools), its
16-symbol character vocabulary as a transformers tokenizer (chat template = the problem text, so verl's
``RLHFDataset`` gives the model exactly the problem), and a Llama built from a config (``e3.tasks.model``).
A random model never answers right, and with all-zero rewards GRPO has no gradient, so the model is warm-started
with a short supervised pass over the *demonstration* pool (``e3.tasks.warm_start`` in verl's layout: prompt,
answer, eos; loss on answer and eos); RL then runs on the disjoint RL pool, where the warm-started model is right on
some samples and wrong on others. The task's rows come from ``e3.tasks.arithmetic.ArithmeticTask``.

The options are the ``cpu_tiny`` section (``CpuTinyOptions``: same keys as the local engine's ``task`` split and
sizes, ``model`` and a short ``warm_start``); an unknown key or a wrong type is an error naming ``cpu_tiny.<key>``.
``prepare(options)`` builds all of it once under ``cache_dir`` (default ``~/.cache/e3/verl_cpu_tiny``; each folder
written under a temporary name, then renamed): ``model-<hash>/`` (transformers format with the tokenizer, keyed by
what determines the warm start) and ``data-<hash>/{train,val}.parquet`` (verl rows with ``extra_info.index``,
keyed by all options). ``prepare_run`` fills a composed config's ``cpu_tiny`` folders; ``summary`` reads a run's
``metrics.jsonl`` (validation described by what it logged: greedy or the temperature and samples per problem, and
the unbiased ``val/pass@K`` when sampled). ``compute_score`` is the task's verifier with verl's reward signature.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from e3.engines.local.schema import ModelConfig
from e3.io import read_jsonl
from e3.schema import Each, NonEmpty, Range, build, checked
from e3.tasks.arithmetic import ArithmeticTask, score
from e3.tasks.vocab import CharTokenizer
from e3.tasks.warm_start import cache_key, train, unpadded

DATA_SOURCE = "e3_tiny_arith"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
FORMAT = 2  # of the model and data folders; 2: the warm start of e3.tasks.warm_start


@dataclass
class TinyWarmStart:
    """The model's supervised warm start (``e3.tasks.warm_start`` in verl's layout, no weight decay, an exact
    demonstrator)."""

    steps: int = checked(300, Range(ge=0))
    batch_size: int = checked(128, Range(ge=1))
    lr: float = checked(3.0e-3, Range(gt=0))
    """Peak learning rate, cosine down to ``min_lr`` after ``warmup_steps`` of linear warm-up."""
    min_lr: float = checked(3.0e-4, Range(ge=0))
    warmup_steps: int = checked(20, Range(ge=0))


@dataclass
class CpuTinyOptions:
    """The ``cpu_tiny`` section of ``verl_cpu_tiny`` (less the ``model_dir`` / ``data_dir`` / ``run_dir`` it is
    given): the arithmetic task's split and sizes (the local engine's ``task`` keys), the model, its warm start."""

    seed: int = 0
    """Seed of the task's split and draws, of the model's initialisation and of the warm start."""
    levels: list[str] = checked(default_factory=lambda: ["2d+-1d"], check=Each(NonEmpty()))
    val_fraction: float = checked(0.2, Range(gt=0, lt=1))
    demo_fraction: float = checked(0.3, Range(gt=0, lt=1))
    train_size: int = checked(512, Range(ge=1))
    val_size: int = checked(64, Range(ge=1))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                                   intermediate_size=256))
    warm_start: TinyWarmStart = field(default_factory=TinyWarmStart)
    threads: int = checked(1, Range(ge=1))
    """Torch threads of the warm start (2 threads on 2 shared cores ran ~15x slower per step here)."""
    cache_dir: Optional[str] = None
    """Where the model and data folders are built (null: ~/.cache/e3/verl_cpu_tiny)."""

    def cross_checks(self):
        if not self.levels:
            yield "levels", "must name at least one level of the arithmetic task, e.g. ['2d+-1d']"


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl reward: 1.0 when the decoded response is exactly the answer (``e3.tasks.arithmetic.score``)."""
    value = score(str(solution_str).strip(), str(ground_truth).strip())
    return {"score": value, "acc": int(value)}


def hf_tokenizer():
    """The task's character vocabulary as a transformers fast tokenizer that decodes without spaces."""
    from tokenizers import decoders

    tok = CharTokenizer().to_hf()
    tok.backend_tokenizer.decoder = decoders.Fuse()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_options(options: dict | None) -> dict:
    """The ``cpu_tiny`` options over their defaults (``CpuTinyOptions``), as plain data; an unknown key or a value of
    the wrong type or a value out of range raises ``ValueError`` naming ``cpu_tiny.<key>``."""
    return OmegaConf.to_container(OmegaConf.structured(build(CpuTinyOptions, options or {}, "cpu_tiny")))


def _key(opts: dict) -> str:
    return cache_key({"format": FORMAT, **{k: v for k, v in opts.items() if k not in ("cache_dir", "threads")}})


def _rows(rows: list[dict], split: str, start: int) -> list[dict]:
    from e3.data import make_row

    return [make_row(r["prompt"], r["answer"], data_source=DATA_SOURCE, split=split, index=start + i,
                     instruction=None, ability="arithmetic", extra={"level": int(r["level"])})
            for i, r in enumerate(rows)]


@torch.no_grad()
def greedy_accuracy(model, tok: CharTokenizer, rows: list[dict], max_new: int = 5) -> float:
    """Share of ``rows`` the model answers exactly, greedy, one prompt at a time (as verl's validation sees it)."""
    right = 0
    for r in rows:
        ids = torch.tensor([tok.encode(r["prompt"])])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        right += score(tok.decode(out[0, ids.size(1):].tolist()), r["answer"]) == 1.0
    return right / max(1, len(rows))


def prepare(options: dict | None = None, log=print) -> tuple[str, str]:
    """Build (or find cached) the warm-started model with its tokenizer, and the parquet files.

    Returns ``(model_dir, data_dir)``. The model is keyed by what determines it (task split, model, warm start), the
    data by everything, so drawing a different number of prompts reuses the warm start.
    """
    from e3.data import write_rows
    from e3.tasks.model import build_model

    opts = load_options(options)
    cache = os.path.expanduser(opts["cache_dir"] or os.path.join("~", ".cache", "e3", "verl_cpu_tiny"))
    seed = int(opts["seed"])
    task = ArithmeticTask(OmegaConf.create(opts))
    demo, train_rows, val = task.rows()

    model_key = {k: opts[k] for k in ("seed", "levels", "val_fraction", "demo_fraction", "model", "warm_start")}
    model_dir = os.path.join(cache, f"model-{_key(model_key)}")
    if not os.path.isfile(os.path.join(model_dir, "warm_start.json")):
        char_tok = task.tokenizer()
        longest = max(len(r["prompt"]) + len(r["answer"]) for r in demo + train_rows + val) + 2
        model = build_model(opts["model"], char_tok.vocab_size, max_len=max(32, longest), seed=seed)
        log(f"[verl_cpu_tiny] warm start: {opts['warm_start']['steps']} supervised steps on "
            f"{len(demo)} demonstrations ({sum(p.numel() for p in model.parameters()):,} parameters)")
        threads = torch.get_num_threads()
        torch.set_num_threads(int(opts["threads"]))
        try:
            stats = train(model, unpadded(char_tok, [demo]), None, opts["warm_start"], seed, torch.device("cpu"))
            model.eval()
            stats["greedy_accuracy_val"] = round(greedy_accuracy(model, char_tok, val), 4)
        finally:
            torch.set_num_threads(threads)
        log(f"[verl_cpu_tiny] warm start done in {stats['seconds']} s, loss {stats['loss']}, greedy accuracy on "
            f"held-out problems {stats['greedy_accuracy_val']}")
        model.config.use_cache = True
        tmp = f"{model_dir}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        hf_tokenizer().save_pretrained(tmp)
        with open(os.path.join(tmp, "warm_start.json"), "w", encoding="utf-8") as fh:
            json.dump({"options": model_key, **stats}, fh, indent=1)
        _publish(tmp, model_dir)

    data_dir = os.path.join(cache, f"data-{_key(opts)}")
    if not os.path.isfile(os.path.join(data_dir, "val.parquet")):
        tmp = f"{data_dir}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_rows(_rows(train_rows, "train", 0), os.path.join(tmp, "train.parquet"))
        write_rows(_rows(val, "val", len(train_rows)), os.path.join(tmp, "val.parquet"))
        _publish(tmp, data_dir)
    return model_dir, data_dir


def _publish(tmp: str, final: str) -> None:
    """Rename a finished folder into place; if another process got there first, keep its copy."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_run(config) -> str:
    """Fill ``cpu_tiny.model_dir`` / ``data_dir`` (built or cached) and ``run_dir`` of a composed config."""
    from omegaconf import OmegaConf, open_dict

    section = config.cpu_tiny
    options = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
               for k, v in section.items() if k not in ("model_dir", "data_dir", "run_dir")}
    model_dir, data_dir = prepare(options)
    run_dir = section.get("run_dir") or os.path.join("outputs", "verl_cpu_tiny", time.strftime("%Y%m%d-%H%M%S"))
    run_dir = os.path.abspath(os.path.expanduser(str(run_dir)))
    os.makedirs(run_dir, exist_ok=True)
    with open_dict(config):
        section.model_dir, section.data_dir, section.run_dir = model_dir, data_dir, run_dir
    return run_dir


def read_metrics(path: str) -> dict[int, dict]:
    """verl's file logger output (one ``{"step", "data"}`` line per log call) merged per step."""
    steps: dict[int, dict] = {}
    for rec in read_jsonl(path) if os.path.isfile(path) else []:
        steps.setdefault(int(rec["step"]), {}).update(rec["data"])
    return steps


def training_steps(run_dir) -> dict[int, dict]:
    """A run's metrics per training step (the steps that logged the controller's metrics), from ``metrics.jsonl``."""
    return {s: m for s, m in read_metrics(os.path.join(run_dir, "metrics.jsonl")).items() if "rollout/n_total" in m}


def summary(run_dir: str) -> str:
    """A few lines on the run: steps, reward, tau, entropy, budgets, validation accuracy, where things are."""
    steps = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    train = {s: m for s, m in steps.items() if "rollout/n_total" in m}
    lines = [f"verl_cpu_tiny run: {run_dir}"]
    if not train:
        return "\n".join(lines + ["  no training step was logged (see the console output above)"])
    first, last = train[min(train)], train[max(train)]
    taus = [m["rollout/temperature"] for m in train.values()]
    n_min = min(m["rollout/n_min"] for m in train.values())
    n_max = max(m["rollout/n_max"] for m in train.values())
    val = {s: m for s, m in sorted(steps.items()) if "val/accuracy" in m}
    lines += [
        f"  steps {min(train)}-{max(train)}; reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}",
        f"  tau {min(taus):.3f}-{max(taus):.3f} (last {taus[-1]:.3f}); entropy {first['rollout/entropy']:.3f} -> "
        f"{last['rollout/entropy']:.3f} (target {last['rollout/target_entropy']:.3f})",
        f"  n_i in [{n_min}, {n_max}], sum {int(last['rollout/n_total'])} per step; all-wrong groups "
        f"{first['groups/all_wrong']:.2f} -> {last['groups/all_wrong']:.2f}",
    ]
    if val:
        lines.append(f"  val accuracy ({_val_setting(val[max(val)])}): "
                     + ", ".join(f"step {s}: {m['val/accuracy']:.3f}" for s, m in val.items()))
        ks = sorted({int(k.split("@")[1]) for m in val.values() for k in m if _is_pass_k(k)})
        if any(k > 1 for k in ks):
            lines.append("  val pass@k (unbiased): " + "; ".join(
                f"step {s}: " + ", ".join(f"pass@{k} {m[f'val/pass@{k}']:.3f}" for k in ks if f"val/pass@{k}" in m)
                for s, m in val.items()))
    timing = [m.get("timing_s/step") for m in train.values() if m.get("timing_s/step") is not None]
    if timing:
        lines.append(f"  step time {np.median(timing):.2f} s (median of {len(timing)})")
    lines.append(f"  metrics.jsonl, requests.jsonl and checkpoints/ in {run_dir}")
    return "\n".join(lines)


def _is_pass_k(key: str) -> bool:
    """``val/pass@K`` overall (not its ``_stderr`` nor a ``/<data_source>`` entry)."""
    return key.startswith("val/pass@") and key[len("val/pass@"):].isdigit()


def _val_setting(m: dict) -> str:
    """How a validation step sampled, from what ``e3.engines.verl.validation`` logged with it."""
    if "val/temperature" not in m or not m.get("val/problems"):
        return "setting not logged"
    n = m["val/samples"] / m["val/problems"]
    per = f"{n:g} sample{'s' if n != 1 else ''} per problem"
    if m["val/temperature"] <= 0:
        return f"greedy, {per}, {m['val/problems']} problems"
    return f"mean of {per} at T={m['val/temperature']:g}, {m['val/problems']} problems"
