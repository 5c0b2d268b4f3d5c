"""The local engine: a complete GRPO run in one process (CPU or one CUDA device), driven by the E3 / PREPO controllers.

A step (``LocalEngine.train_step``) has three parts:
  rollout  prompts (the next slice of a seeded per-epoch permutation; with PREPO's curriculum, a candidate batch
           scored by its perplexity under the current policy, of which ``E3Controller.select_window`` keeps the
           paced window) -> budgets n_i and temperature tau from ``E3Controller.plan`` (sum n_i = batch_size * n)
           -> sampling at tau with a KV cache (``sampling.sample``) -> scores from the task's verifier;
  update   token entropies and old log-probs of the responses, GRPO advantages over the unequal groups (x PREPO
           relative-entropy weights) from ``E3Controller.advantages``, clipped policy-gradient steps with AdamW,
           token-mean, logits / tau (``policy_loss.clipped_pg_loss``);
  observe  the token-mean entropy and the rewards go back through ``E3Controller.observe`` (``end_epoch`` after
           each pass over the data), which returns the step's metrics; the engine adds its own.
The engine takes no algorithm decision of its own. Validation on held-out problems runs at step 0 (after the
warm start), every ``trainer.val_every`` steps and at the last step: ``val/accuracy`` is the mean over
``val.n_samples`` samples at ``val.temperature`` (sampled pass@1), ``val/accuracy_greedy`` the greedy accuracy, each
with its standard error over problems and, after step 0, the paired change against step 0 (``*_delta``).
One JSON line per step goes to ``metrics.jsonl``; checkpoints (model, optimizer, RNG states, data position,
controller state) are atomic.

CLI: ``python -m e3.engines.local [--config FILE] [--run-dir DIR] [--resume] key=value ...``.
Python: ``run(config, run_dir=..., overrides=[...]) -> RunResult`` (used by bench/ and the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from e3.controller import E3Controller, StepPlan
from e3.engines.local import checkpoint as ckpt
from e3.engines.local.schema import ConfigError, apply_overrides, diff_keys, from_any, load_config, check_local_config
from e3.engines.local.evaluate import evaluate, summary
from e3.engines.local.tracking import ExperimentLogger, check_backends
from e3.engines.local.run_dir import prepare_run_dir, truncate_metrics
from e3.engines.local.policy_loss import clipped_pg_loss
from e3.engines.local.sampling import prompt_perplexity, response_logprobs, sample
from e3.io import DataError, atomic_write_text, read_jsonl
from e3.engines.local.report import format_report, startup_report
from e3.tasks.model import build_model
from e3.tasks.arithmetic import write_jsonl
from e3.tasks.base import Task
from e3.tasks.registry import make_task
from e3.tasks.warm_start import left_padded, warm_start

Hook = Callable[[str, dict], None]
RESUME_MAY_CHANGE = {"plots", "device", "threads", "run_root", "trainer.logger", "trainer.project_name",
                     "trainer.experiment_name"}


@dataclass
class RunResult:
    run_dir: str
    metrics: list = field(default_factory=list)
    checkpoint: Optional[str] = None
    figures: list = field(default_factory=list)


class DataStream:
    """Epochs over a dataset of ``size`` rows: a permutation seeded by (seed, epoch); ``take(k)`` the next k."""

    def __init__(self, size: int, take: int, seed: int):
        if take > size:
            raise ConfigError(f"a step needs {take} prompts but the training set has only {size}")
        self.size, self.per_step, self.seed = size, take, seed
        self.epoch, self.pos = 0, 0

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def take(self) -> tuple[np.ndarray, bool]:
        """(indices, epoch_ended): the incomplete tail of a permutation is skipped."""
        out = self._perm()[self.pos:self.pos + self.per_step]
        self.pos += self.per_step
        ended = self.pos + self.per_step > self.size
        if ended:
            self.epoch, self.pos = self.epoch + 1, 0
        return out, ended

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def load_task(cfg: DictConfig, task: Task) -> tuple[list, list, list]:
    """(demo rows, train rows, val rows): the task's generated sets, or its rows read (and checked) from data files."""
    t = cfg.task
    demo, train, val = task.rows(cfg.data.train_file, cfg.data.val_file)
    max_ans = t.max_new_tokens - 1 if task.answer_is_response else None
    _check_fit(t, [("generated demo pool", demo, t.max_new_tokens - 1), ("generated train set", train, max_ans),
                   ("generated val set", val, max_ans)])
    return demo, train, val


def _check_fit(t, named_rows) -> None:
    """Every prompt fits ``task.prompt_width`` and every answer (where ``max_ans`` is given) the response."""
    for name, rows, max_ans in named_rows:
        for r in rows:
            if len(r["prompt"]) > t.prompt_width or (max_ans is not None and len(r["answer"]) > max_ans):
                raise ConfigError(f"{name}: problem {r['prompt']}{r['answer']} does not fit task.prompt_width="
                                  f"{t.prompt_width} / task.max_new_tokens={t.max_new_tokens}")


@dataclass
class Rollouts:
    """One step's samples: the plan they follow, the prompt of each rollout, tokens, mask, scores."""

    plan: StepPlan
    rollout_indices: np.ndarray  # prompt (training-set row) of each rollout, n_i copies each
    prompts: torch.Tensor  # [R, prompt_width]
    tokens: torch.Tensor  # [R, max_new_tokens]
    mask: torch.Tensor  # [R, max_new_tokens], 1 up to and including eos
    scores: np.ndarray
    epoch_ended: bool
    timings: dict


@dataclass
class Update:
    """What the update computed: advantages, response lengths, token-mean entropy, loss and gradient norm."""

    advantages: np.ndarray
    lengths: torch.Tensor
    entropy: float
    loss: float
    grad_norm: float
    stats: dict
    seconds: float
    controller_seconds: float


class LocalEngine:
    """Holds model, optimizer, data stream and controllers; ``train()`` runs to ``trainer.total_steps``."""

    def __init__(self, cfg: DictConfig, run_dir: str, hooks: Iterable[Hook] = (), quiet: bool = False):
        self.cfg, self.run_dir, self.hooks, self.quiet = cfg, run_dir, list(hooks), quiet
        self.e3cfg = check_local_config(cfg)
        torch.set_num_threads(int(cfg.threads))
        self.device = _device(cfg.device)
        self.task = make_task(cfg.task)
        self.tok = self.task.tokenizer()
        self.score = self.task.score
        self.demo, self.train_rows, self.val_rows = load_task(cfg, self.task)
        width, max_new = cfg.task.prompt_width, cfg.task.max_new_tokens
        self.prompts = torch.from_numpy(self.tok.left_pad([r["prompt"] for r in self.train_rows], width))
        self.levels = np.array([r.get("level", 0) for r in self.train_rows])
        self.model = build_model(OmegaConf.to_container(cfg.model), self.tok.vocab_size, width + max_new,
                                 cfg.seed).to(self.device)
        t = cfg.trainer
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.999))
        batch, n = cfg.rollout.batch_size, cfg.rollout.n
        self.ctrl = E3Controller(self.e3cfg, n, self.tok.vocab_size, max_steps=t.total_steps,
                                 dataset_indices=np.arange(len(self.train_rows)), batch_size=batch)
        per_step = self.ctrl.num_candidates or batch
        self.stream = DataStream(len(self.train_rows), per_step, cfg.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self.warm_start_info: dict = {}
        self.experiment_logger: Optional[ExperimentLogger] = None  # run() attaches trainer.logger's backends

    # -- setup -------------------------------------------------------------------------------------------------
    def emit(self, event: str, info: dict) -> None:
        for h in self.hooks:
            h(event, info)

    def do_warm_start(self) -> dict:
        cfg = self.cfg
        if cfg.warm_start.steps == 0:
            return {"steps": 0, "cached": False, "seconds": 0.0}
        ws = OmegaConf.to_container(cfg.warm_start)
        payload = {"model": OmegaConf.to_container(cfg.model), "seed": cfg.seed, "task": self.task.cache_payload(),
                   "warm_start": {k: v for k, v in ws.items() if k != "cache_dir"}, "vocab": self.tok.itos}
        bar = None
        if not self.quiet:
            from tqdm import tqdm
            bar = tqdm(total=ws["steps"], desc="warm start", leave=False, dynamic_ncols=True)

        def progress(i, total, loss):
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
        info = self.run_warm_start(ws, cfg.seed, payload, progress)
        if bar is not None:
            bar.close()
        return info

    def run_warm_start(self, ws: dict, seed: int, payload: dict, progress=None) -> dict:
        """The supervised warm start (``e3.tasks.warm_start``) of the model on the task's demonstrations in the
        left-padded layout, with the task's slipped variants when ``ws["demo_error_rate"]`` > 0; cached by
        ``payload``."""
        width, max_new = self.cfg.task.prompt_width, self.cfg.task.max_new_tokens

        def targets():
            variants = self.task.demo_variants(self.demo, max_new - 1) if ws.get("demo_error_rate", 0) > 0 else []
            return left_padded(self.tok, [self.demo, *variants], width, max_new, float(ws["prompt_loss"]))
        return warm_start(self.model, targets, [r.get("level", 0) for r in self.demo], ws, seed, self.device, payload,
                          progress)

    def score_training_set(self) -> None:
        """PREPO offline: perplexities of the whole training set under the starting policy, handed to the controller."""
        self.model.eval()
        ppl = np.concatenate([prompt_perplexity(self.model, self.prompts[s:s + 4096].to(self.device), self.tok.pad_id)
                              for s in range(0, len(self.prompts), 4096)])
        self.ctrl.pace_offline(np.arange(len(ppl)), ppl, self.cfg.seed)

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "controller": self.ctrl.state_dict(), "stream": self.stream.state_dict(),
                "rng": {"sampler": self.gen.get_state(), "torch": torch.get_rng_state(),
                        "numpy": np.random.get_state(), "python": random.getstate()},
                "warm_start": self.warm_start_info}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.ctrl.load_state_dict(state["controller"])
        self.stream.load_state_dict(state["stream"])
        self.gen.set_state(state["rng"]["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.warm_start_info = state.get("warm_start", {})

    def save(self) -> str:
        path = ckpt.save(self.run_dir, self.step, self.state_dict(), self.cfg.trainer.keep_checkpoints,
                         hook=self.emit)
        self.emit("checkpoint_written", {"step": self.step, "path": path})
        return path

    # -- one step: rollout -> update -> observe ---------------------------------------------------------------
    def train_step(self) -> dict:
        """One GRPO step: sample and score under the controllers' plan, update the policy, report back."""
        tick, cpu_tick = time.perf_counter(), time.process_time()
        batch = self.rollout()
        update = self.update(batch)
        metrics = self.observe(batch, update)
        metrics.update({"time/step": time.perf_counter() - tick, "time/step_cpu": time.process_time() - cpu_tick})
        return metrics

    def next_prompts(self) -> tuple[np.ndarray, bool]:
        """The step's prompts (through the PREPO window when on) and whether they end a pass over the data."""
        if self.ctrl.paces_offline:
            idx = self.ctrl.paced_prompts(self.cfg.rollout.batch_size)
            _, ended = self.stream.take()  # keeps epoch accounting: one step consumes one batch
        else:
            idx, ended = self.stream.take()
            if self.ctrl.num_candidates:
                self.model.eval()
                ppl = prompt_perplexity(self.model, self.prompts[idx].to(self.device), self.tok.pad_id)
                idx = idx[self.ctrl.select_window(ppl)]
        return idx, ended

    def rollout(self) -> Rollouts:
        """Prompts -> budgets n_i and temperature from the controller -> samples at tau -> scores."""
        cfg, timings = self.cfg, {}
        t0 = time.perf_counter()
        idx, epoch_ended = self.next_prompts()
        timings["time/select"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = self.ctrl.plan(idx, total=cfg.rollout.batch_size * cfg.rollout.n)
        rollout_indices = plan.rollout_indices()
        timings["time/controller"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.model.eval()
        prompts = self.prompts[rollout_indices].to(self.device)
        tokens, mask = sample(self.model, prompts, cfg.task.max_new_tokens, float(plan.temperature), self.tok.eos_id,
                              self.tok.pad_id, generator=self.gen)
        timings["time/generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        responses = [self.tok.decode(r) for r in tokens.cpu().numpy()]
        scores = np.array([self.score(r, self.train_rows[i]["answer"]) for r, i in zip(responses, rollout_indices)])
        timings["time/score"] = time.perf_counter() - t0
        self.emit("after_rollout", {"step": self.step + 1, "n": plan.n_per_prompt, "temperature": plan.temperature})
        return Rollouts(plan, rollout_indices, prompts, tokens, mask, scores, epoch_ended, timings)

    def update(self, r: Rollouts) -> Update:
        """GRPO advantages over the unequal groups (x PREPO weights), then the clipped policy-gradient steps.

        One forward pass over all rollouts gives the token entropies (the controllers' feedback) and the old
        log-probs; on-policy (ppo_epochs = mini_batches = 1) it is also the pass the single update differentiates,
        otherwise each mini-batch of each epoch is recomputed under the current parameters.
        """
        t, tau = self.cfg.trainer, float(r.plan.temperature)
        t0 = time.perf_counter()
        self.model.train()
        on_policy = t.ppo_epochs == 1 and t.mini_batches == 1
        with torch.set_grad_enabled(on_policy):
            logp, ent = response_logprobs(self.model, r.prompts, r.tokens, tau)
        old_logp = logp.detach()
        lengths = r.mask.sum(1)
        entropy = float((ent * r.mask).sum() / r.mask.sum())
        per_rollout_entropy = ((ent * r.mask).sum(1) / lengths.clamp(min=1)).cpu().numpy()
        t_forward = time.perf_counter() - t0

        t0 = time.perf_counter()
        adv = self.ctrl.advantages(r.scores, r.rollout_indices, entropies=per_rollout_entropy, lengths=lengths.cpu().numpy())
        t_controller = time.perf_counter() - t0
        adv_t = torch.as_tensor(adv, dtype=torch.float32, device=self.device)

        t0 = time.perf_counter()
        stats, losses, norms = {}, [], []
        size = len(r.rollout_indices) // t.mini_batches
        order_rng = np.random.default_rng([self.cfg.seed, self.step, 17])
        for _ in range(t.ppo_epochs):
            order = np.arange(len(r.rollout_indices)) if on_policy else order_rng.permutation(len(r.rollout_indices))
            for mb in range(t.mini_batches):
                sel = torch.as_tensor(order[mb * size:(mb + 1) * size], device=self.device)
                lp = logp if on_policy else response_logprobs(self.model, r.prompts[sel], r.tokens[sel], tau)[0]
                loss, stats = clipped_pg_loss(lp, old_logp[sel], adv_t[sel], r.mask[sel], t.clip_ratio)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)))
                self.opt.step()
                losses.append(float(loss.detach()))
        return Update(adv, lengths, entropy, float(np.mean(losses)), float(np.mean(norms)), stats,
                      time.perf_counter() - t0 + t_forward, t_controller)

    def observe(self, r: Rollouts, u: Update) -> dict:
        """Rewards and entropy back to the controllers (epoch end included); the step's metrics."""
        t0 = time.perf_counter()
        metrics = self.ctrl.observe(r.rollout_indices, r.scores, u.entropy)
        if r.epoch_ended:
            self.ctrl.end_epoch()
        t_controller = r.timings["time/controller"] + u.controller_seconds + time.perf_counter() - t0
        self.step += 1
        assert metrics["step"] == self.step, (metrics["step"], self.step)
        lv = self.levels[r.rollout_indices]
        metrics.update({f"reward/level_{int(v)}": float(r.scores[lv == v].mean()) for v in np.unique(lv)})
        metrics.update(u.stats)
        metrics.update({
            "epoch": self.stream.epoch, "actor/loss": u.loss, "actor/grad_norm": u.grad_norm,
            "actor/lr": float(self.cfg.trainer.lr), "response/length_mean": float(u.lengths.mean()),
            "rollout/tokens": int(u.lengths.sum()), "advantage/abs_mean": float(np.abs(u.advantages).mean()),
            "rollout/cumulative_rollouts": self.step * self.cfg.rollout.batch_size * self.cfg.rollout.n,
            "time/select": r.timings["time/select"], "time/controller": t_controller,
            "time/generate": r.timings["time/generate"], "time/score": r.timings["time/score"],
            "time/update": u.seconds,
        })
        return metrics

    # -- the run -----------------------------------------------------------------------------------------------
    def log(self, metrics: dict) -> None:
        """metrics.jsonl (always), then the backends of ``trainer.logger``."""
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")
        if self.experiment_logger is not None:
            self.experiment_logger.log(metrics, int(metrics["step"]))

    def validate(self) -> dict:
        t0 = time.perf_counter()
        base_path = os.path.join(self.run_dir, "val", "step_000000.json")
        baseline = None
        if self.step > 0 and os.path.isfile(base_path):
            with open(base_path, encoding="utf-8") as fh:
                baseline = json.load(fh)
        res, per = evaluate(self.model, self.tok, self.val_rows, self.cfg, self.device,
                            self.cfg.seed * 1_000_003 + self.step, baseline, score_fn=self.score)
        os.makedirs(os.path.join(self.run_dir, "val"), exist_ok=True)
        atomic_write_text(os.path.join(self.run_dir, "val", f"step_{self.step:06d}.json"), json.dumps(per))
        res["time/val"] = time.perf_counter() - t0
        return res

    def train(self) -> list:
        t = self.cfg.trainer
        history = []
        bar = None
        if not self.quiet:
            from tqdm import tqdm
            bar = tqdm(total=t.total_steps, initial=self.step, desc="GRPO", dynamic_ncols=True)
        while self.step < t.total_steps:
            self.emit("step_begin", {"step": self.step + 1})
            m = self.train_step()
            if self.step % t.val_every == 0 or self.step == t.total_steps:
                m.update(self.validate())
            self.log(m)
            history.append(m)
            self.emit("step_end", {"step": self.step, "metrics": m})
            if self.step % t.save_every == 0 or self.step == t.total_steps:
                self.save()
            if bar is not None:
                bar.update(1)
                post = {"reward": f"{m['reward/mean']:.3f}", "tau": f"{m['rollout/temperature']:.3f}",
                        "H": f"{m['rollout/entropy']:.3f}", "H*": f"{m['rollout/target_entropy']:.3f}",
                        "sum_n": m["rollout/n_total"], "n": f"{min(m['rollout/n_hist'])}-{max(m['rollout/n_hist'])}"}
                if "val/accuracy" in m:
                    post["val"] = f"{m['val/accuracy']:.3f}"
                bar.set_postfix(post)
        if bar is not None:
            bar.close()
        return history


def run(config=None, run_dir: Optional[str] = None, resume: bool = False, overrides: Iterable[str] = (),
        hooks: Iterable[Hook] = (), quiet: bool = False) -> RunResult:
    """Train with the local engine. ``config``: a shipped config's name, a YAML path, a dict (over the defaults) or
    a DictConfig.

    Fresh run: the run directory must not exist or be empty. ``resume=True``: continue the run directory from its
    newest complete checkpoint with its saved config (a differing config is refused, naming the keys).
    ``hooks``: callables ``hook(event, info)`` for events ``step_begin``, ``after_rollout`` (info: step, n,
    temperature), ``step_end`` (info: step, metrics), ``checkpoint_partial`` (files written, not yet renamed into
    place) and ``checkpoint_written`` — used by benchmarks and by the kill tests.
    """
    overrides = list(overrides)
    if isinstance(config, str) or config is None:
        cfg = load_config(config, overrides)
    else:
        cfg = from_any(config)
        if overrides:
            cfg = from_any(apply_overrides(cfg, overrides))
    run_dir, latest = prepare_run_dir(cfg, run_dir, resume)
    if resume:
        saved = load_config(os.path.join(run_dir, "config.yaml"))
        if config is not None or overrides:
            changed = [k for k in diff_keys(saved, cfg) if k not in RESUME_MAY_CHANGE]
            if changed:
                raise ConfigError(f"--resume: the config differs from the run's saved config at {', '.join(changed)}"
                                  f" (resume with the same config, or start a new run directory)")
        for key in RESUME_MAY_CHANGE:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        cfg = saved
    engine = LocalEngine(cfg, run_dir, hooks, quiet)  # loads and checks data before anything is written
    check_backends(cfg.trainer.logger)
    os.makedirs(run_dir, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    engine.experiment_logger = ExperimentLogger(cfg.trainer.logger, run_dir, cfg.trainer.project_name,
                                                cfg.trainer.experiment_name, OmegaConf.to_container(cfg, resolve=True))
    try:
        return _run(engine, cfg, run_dir, latest, resume, say)
    finally:
        engine.experiment_logger.close()


def _run(engine: LocalEngine, cfg: DictConfig, run_dir: str, latest: Optional[str], resume: bool, say) -> RunResult:
    if latest is None:
        if resume:
            say(f"[e3] {run_dir} has no complete checkpoint yet: starting it again from step 0")
            truncate_metrics(run_dir, -1)
        atomic_write_text(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(cfg))
        write_jsonl(engine.train_rows, os.path.join(run_dir, "train.jsonl"))
        write_jsonl(engine.val_rows, os.path.join(run_dir, "val.jsonl"))
        say(f"[e3] run dir {run_dir}")
        engine.warm_start_info = engine.do_warm_start()
        say(f"[e3] warm start: {'loaded from cache' if engine.warm_start_info.get('cached') else 'trained'} "
            f"({engine.warm_start_info.get('seconds', 0):.0f} s of training) {engine.warm_start_info.get('path', '')}")
        if engine.ctrl.paces_offline:
            engine.score_training_set()
        report = startup_report(engine) if cfg.task.report_samples else {}
        if report:
            say(format_report(report, [str(s) for s in cfg.task.levels]))
        m0 = {"step": 0, **{f"warm_start/{k}": v for k, v in engine.warm_start_info.items()
                            if isinstance(v, (int, float, bool))}, **report, **engine.validate()}
        say(f"[e3] step 0 val accuracy {m0['val/accuracy']:.4f} +- {m0['val/accuracy_stderr']:.4f}"
            + (f" (greedy {m0['val/accuracy_greedy']:.4f})" if "val/accuracy_greedy" in m0 else ""))
        engine.log(m0)
        engine.save()
    else:
        removed = ckpt.clean_partial(run_dir)
        engine.load_state_dict(ckpt.load(latest))
        truncate_metrics(run_dir, engine.step)
        say(f"[e3] resuming {run_dir} from {latest} (step {engine.step})"
            + (f"; removed partial {removed}" if removed else ""))
    engine.train()
    result = RunResult(run_dir, read_jsonl(os.path.join(run_dir, "metrics.jsonl")), ckpt.latest_checkpoint(run_dir))
    if cfg.plots:
        result.figures = _figures(run_dir, say)
    _export(engine, run_dir)
    say(summary(result.metrics, cfg))
    say(f"[e3] run dir:     {run_dir}\n[e3] metrics:     {os.path.join(run_dir, 'metrics.jsonl')}\n"
        f"[e3] checkpoint:  {result.checkpoint}\n[e3] final model: {os.path.join(run_dir, 'final_model')}"
        + "".join(f"\n[e3] figure:      {f}" for f in result.figures))
    return result


def _figures(run_dir: str, say) -> list:
    try:
        from e3.plots import make_figures
    except ImportError as err:
        say(f"[e3] figures skipped: e3.plots is not available ({err})")
        return []
    out = make_figures([run_dir], os.path.join(run_dir, "figures"))
    return [str(p) for p in (out or [])]


def _export(engine: LocalEngine, run_dir: str) -> None:
    """The final policy as a transformers model directory with its tokenizer (loadable with from_pretrained)."""
    from transformers.utils import logging as hf_logging

    path = os.path.join(run_dir, "final_model")
    hf_logging.disable_progress_bar()
    engine.model.save_pretrained(path)
    engine.tok.to_hf().save_pretrained(path)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e3.engines.local", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None,
                   help="a shipped config's name (default, grpo, e3, ...: e3/config/local/) or a YAML file's path")
    p.add_argument("--run-dir", default=None, help="run directory (default: <run_root>/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue --run-dir from its newest complete checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.total_steps=50")
    args = p.parse_args(argv)
    try:
        if args.print_config:
            print(OmegaConf.to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        run(args.config, args.run_dir, args.resume, args.overrides, quiet=args.quiet)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
