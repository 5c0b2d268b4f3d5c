"""Peer run: TRL's ``GRPOTrainer`` (trl==1.16.0, in ``.venv/trl-peer``) beside our local engine, on the same work.

Same for both: the engine's tiny Llama after the seed's supervised warm start (saved as a transformers model
directory with the locally built character tokenizer, ``CharTokenizer.to_hf()``), the embedded arithmetic task, the
same 32 prompts at every step (TRL's dataset is the engine's ``DataStream`` order, ``shuffle_dataset=False``),
8 samples per prompt at T = 1, 4 new tokens at most, AdamW lr 3e-5 (constant, no weight decay), one on-policy
update per step, PPO ratio clip 0.2, no KL term (beta 0), token-mean loss over the batch (TRL ``loss_type="dapo"``
= our ``clipped_pg_loss``), group-normalised advantages (mean / std), grad-norm clip 1.0, one torch thread.
Reward = the task's verifier (``e3.tasks.arithmetic.score``) on the decoded completion. Prompts are padded to the engine's
fixed width with a character the tokenizer maps to the pad id, so both models see identical input ids.

Reports (i) rollouts per second of training (generation + scoring + update; validation and start-up excluded),
engine / TRL, measured in the same process one after the other; (ii) validation accuracy versus cumulative rollouts
for TRL GRPO, our GRPO and, optionally, our other configurations (``--configs``), validated by the engine's
``evaluate`` on the same held-out problems with the same seeds.

``python bench/trl_peer.py [--quick] [--steps 150] [--val-every 25] [--seeds 1] [--configs e3 informative] [--out DIR]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from common import (CONFIGS, config_path, curve, machine, run_overrides, run_phases, table,  # noqa: E402
                          write_json_atomic)


def trl_peer_requirement() -> str:
    """The TRL release this peer run measures (``[tool.e3] trl-peer`` in pyproject.toml, e.g. ``trl==1.16.0``)."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["e3"]["trl-peer"]


def use_trl_peer() -> str:
    """Put ``.venv/trl-peer`` (TRL's peer release, installed there by scripts/_venv.sh) ahead of the main
    environment's trl, which is verl's pin (0.27.0); child processes inherit it through PYTHONPATH.

    Returns the required version; ``main`` refuses to run with any other.
    """
    site = Path(sys.prefix) / "trl-peer"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return trl_peer_requirement().split("==", 1)[1]


TRL_VERSION = use_trl_peer()


def _cfg(seed: int, overrides: list[str]):
    from e3.engines.local.schema import load_config

    return load_config(config_path("grpo"), [f"seed={seed}", *overrides])


def run_ours(name: str, seed: int, overrides: list[str], run_dir: str) -> dict:
    from e3.engines.local.engine import run

    t0 = time.perf_counter()
    res = run(config_path(name), run_dir=run_dir, overrides=[f"seed={seed}", *overrides, *CONFIGS[name][1]],
              quiet=True)
    train = [m for m in res.metrics if m["step"] > 0]
    return {"name": name, "seed": seed, "metrics": res.metrics, "seconds": time.perf_counter() - t0,
            "train_seconds": sum(m["time/step"] for m in train),
            "rollouts": sum(m["rollout/n_total"] for m in train),
            "train_reward_mean": float(np.mean([m["reward/mean"] for m in train]))}


def run_trl(seed: int, overrides: list[str], run_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from e3.engines.local.engine import DataStream, LocalEngine, evaluate
    from e3.tasks.arithmetic import score

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = _cfg(seed, overrides)
    torch.set_num_threads(int(cfg.threads))
    os.makedirs(run_dir, exist_ok=True)
    eng = LocalEngine(cfg, run_dir, quiet=True)
    eng.do_warm_start()
    init_dir = os.path.join(run_dir, "init_model")
    eng.model.config.use_cache = True  # TRL generates with transformers' generate: KV cache on, as in our sampler
    eng.model.save_pretrained(init_dir)
    hf_tok = eng.tok.to_hf()
    hf_tok.padding_side = "left"
    hf_tok.save_pretrained(init_dir)
    model = LlamaForCausalLM.from_pretrained(init_dir)

    steps, batch, n = int(cfg.trainer.total_steps), int(cfg.rollout.batch_size), int(cfg.rollout.n)
    width = int(cfg.task.prompt_width)
    stream = DataStream(len(eng.train_rows), batch, cfg.seed)  # the engine's prompt order, step by step
    order = np.concatenate([stream.take()[0] for _ in range(steps)])
    rows = [eng.train_rows[i] for i in order]
    # " " is not in the vocabulary: the tokenizer maps it to the pad id (its unk), so " 12+3=" -> [pad, 1, 2, ...]
    ds = Dataset.from_dict({"prompt": [r["prompt"].rjust(width) for r in rows],
                            "answer": [r["answer"] for r in rows]})

    def reward(prompts, completions, answer, **_):
        return [score(c.replace(" ", ""), a) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=os.path.join(run_dir, "trl"), per_device_train_batch_size=batch * n, gradient_accumulation_steps=1,
        num_generations=n, max_completion_length=int(cfg.task.max_new_tokens), temperature=1.0, top_p=1.0,
        learning_rate=float(cfg.trainer.lr), lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=float(cfg.trainer.weight_decay), adam_beta1=0.9, adam_beta2=0.999,
        max_grad_norm=float(cfg.trainer.grad_clip), beta=0.0, epsilon=float(cfg.trainer.clip_ratio),
        num_iterations=1, loss_type="dapo", scale_rewards="group", shuffle_dataset=False, max_steps=steps,
        use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, seed=seed, data_seed=seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)

    val_every = int(cfg.trainer.val_every)
    points: list = []
    base: dict = {}
    times = {"train": 0.0}

    def validate(mdl, step):
        m, per = evaluate(mdl, eng.tok, eng.val_rows, cfg, mdl.device, cfg.seed * 1_000_003 + step, base or None)
        if step == 0:
            base.update(per)
        done = points[-1]["step"] if points else 0
        points.append({"step": step, "rollout/n_total": batch * n * (step - done), **m})

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, model=None, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **kw):
            times["train"] += time.perf_counter() - self.t0
            s = state.global_step
            if s % val_every == 0 or s == steps:
                was = model.training
                validate(model, s)
                model.train(was)

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=hf_tok,
                          callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    validate(trainer.model, 0)
    t0 = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"name": "trl_grpo", "seed": seed, "metrics": points, "seconds": time.perf_counter() - t0,
            "train_seconds": times["train"], "rollouts": steps * batch * n,
            "train_reward_mean": float(np.mean([h["reward"] for h in logs])) if logs else math.nan}


def run_unit(kind: str, name: str, seed: int, ov: list[str], out: str) -> dict:
    """One run of the peer comparison (a process-pool task): TRL's GRPO or one of our configurations."""
    if kind == "trl":
        return run_trl(seed, ov, os.path.join(out, f"trl-seed{seed}"))
    return run_ours(name, seed, ov, os.path.join(out, f"{name}-seed{seed}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps, small validation (CI-sized)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--configs", nargs="*", default=[], choices=list(CONFIGS),
                    help="our configurations to add beside GRPO (e.g. e3 prepo informative)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs in parallel, one torch thread each (use at most the number of idle cores)")
    ap.add_argument("--out", default="outputs/bench/trl_peer")
    args = ap.parse_args(argv)
    try:
        import trl
    except ImportError as err:
        trl = err
    if getattr(trl, "__version__", None) != TRL_VERSION:
        found = getattr(trl, "__version__", trl)
        print(f"the peer run needs trl=={TRL_VERSION} in {Path(sys.prefix) / 'trl-peer'} (found: {found}); "
              f"run bash scripts/test.sh once, or: pip install --no-deps --target {Path(sys.prefix) / 'trl-peer'} "
              f"trl=={TRL_VERSION}", file=sys.stderr)
        return 2
    quick = ["trainer.total_steps=3", "trainer.val_every=3", "task.val_size=60", "val.n_samples=1",
             "val.greedy=false", "rollout.batch_size=8", "warm_start.steps=20", "task.train_size=128"]
    ov = run_overrides(quick if args.quick else None, args.steps, args.val_every)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    # units of work: (kind, config, seed); our GRPO first for every seed, which trains and caches that seed's warm start
    first = [("ours", "grpo", s) for s in range(args.seeds)]
    rest = [("trl", "trl_grpo", s) for s in range(args.seeds)]  # the longest runs first
    rest += [("ours", c, s) for s in range(args.seeds) for c in args.configs if c != "grpo"]
    runs = run_phases(run_unit, [[(*u, ov, str(out)) for u in phase] for phase in (first, rest)], args.jobs,
                      lambda r: print(f"  done {r['name']} seed {r['seed']} in {r['seconds']:.0f} s", flush=True))
    order = {n: i for i, n in enumerate(["grpo", "trl_grpo", *args.configs])}
    runs.sort(key=lambda r: (r["seed"], order[r["name"]]))
    res = {"command": " ".join(["python", "bench/trl_peer.py", *(argv if argv is not None else sys.argv[1:])]),
           "overrides": ov, "jobs": args.jobs, "machine": machine(), "runs": [], "elapsed_s": None}
    for r in runs:
        steps, x, y = curve(r["metrics"])
        res["runs"].append({"name": r["name"], "seed": r["seed"], "rollouts": r["rollouts"],
                            "train_seconds": r["train_seconds"], "rollouts_per_s": r["rollouts"] / r["train_seconds"],
                            "val_steps": steps.tolist(), "val_rollouts": x.tolist(), "val_accuracy": y.tolist(),
                            "gain": float(y[-1] - y[0]), "train_reward_mean": r["train_reward_mean"],
                            "gain_stderr": float([m for m in r["metrics"] if "val/accuracy" in m][-1]
                                                 .get("val/accuracy_delta_stderr", math.nan))})
    res["elapsed_s"] = time.perf_counter() - t0
    speed = {}
    for r in res["runs"]:
        speed.setdefault(r["name"], []).append(r["rollouts_per_s"])
    res["speed_ratio_ours_over_trl"] = float(np.mean(speed["grpo"]) / np.mean(speed["trl_grpo"]))
    write_json_atomic(out / "trl_peer.json", res)
    print(table(["run", "seed", "rollouts", "train s", "rollouts/s", "mean train reward", "val acc (start -> end)",
                 "gain ± s.e."],
                [[r["name"], r["seed"], r["rollouts"], f"{r['train_seconds']:.1f}", f"{r['rollouts_per_s']:.0f}",
                  f"{r['train_reward_mean']:.4f}",
                  f"{r['val_accuracy'][0]:.4f} -> {r['val_accuracy'][-1]:.4f}",
                  f"{r['gain']:+.4f} ± {r['gain_stderr']:.4f}"] for r in res["runs"]]))
    print("\naccuracy vs cumulative rollouts (mean over seeds):")
    names = list(dict.fromkeys(r["name"] for r in res["runs"]))
    xs = res["runs"][0]["val_rollouts"]
    rows = []
    for i, x in enumerate(xs):
        rows.append([int(x)] + [f"{np.mean([r['val_accuracy'][i] for r in res['runs'] if r['name'] == n]):.4f}"
                                for n in names])
    print(table(["rollouts", *names], rows))
    print("\ngain over the warm start (mean ± std over seeds), and versus our GRPO / TRL's GRPO per seed:")
    summ = []
    for n in names:
        g = np.array([r["gain"] for r in res["runs"] if r["name"] == n])
        d = [r["gain"] - o["gain"] for r in res["runs"] if r["name"] == n
             for o in res["runs"] if o["name"] == "grpo" and o["seed"] == r["seed"]]
        t = [r["gain"] - o["gain"] for r in res["runs"] if r["name"] == n
             for o in res["runs"] if o["name"] == "trl_grpo" and o["seed"] == r["seed"]]
        summ.append([n, len(g), f"{g.mean():+.4f} ± {g.std():.4f}", f"{np.mean(d):+.4f} ± {np.std(d):.4f}",
                     f"{np.mean(t):+.4f} ± {np.std(t):.4f}"])
    res["gain_summary"] = {row[0]: row[2] for row in summ}
    write_json_atomic(out / "trl_peer.json", res)
    print(table(["run", "seeds", "gain", "gain - our GRPO", "gain - TRL GRPO"], summ))
    ratios = [o["rollouts_per_s"] / t["rollouts_per_s"] for o in res["runs"] if o["name"] == "grpo"
              for t in res["runs"] if t["name"] == "trl_grpo" and t["seed"] == o["seed"]]
    how = "one after the other" if args.jobs == 1 else f"{args.jobs} runs at a time, one thread each"
    print(f"\nrollouts/s ours (local engine) / TRL GRPOTrainer: {res['speed_ratio_ours_over_trl']:.2f}x "
          f"(per seed {', '.join(f'{x:.2f}' for x in ratios)}; same steps, one torch thread per run, {how}); "
          f"elapsed {res['elapsed_s']:.0f} s; JSON {out / 'trl_peer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
