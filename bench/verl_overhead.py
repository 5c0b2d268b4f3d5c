"""verl overhead: the E3 trainer's step time against stock verl GRPO, on the CPU end-to-end config, in one run.

Both trainers run verl 0.9.1's real synchronous loop on the ``e3_cpu`` platform (``verl_cpu_tiny``: the same
warm-started tiny Llama, the same arithmetic prompts in the same order, 8 prompts x n = 8, so sum n_i = 64 rollouts
per step; validation and checkpoints off):

- ``stock``: ``trainer.v1.trainer_mode=sync`` with verl's own task runner, agent-loop manager and GRPO advantages;
- ``e3``: the ``e3`` trainer (``E3Trainer``: per-prompt budgets, the temperature scheduler, GRPO over unequal groups,
  controller metrics) with ``E3AgentLoopManager``.

Step time is verl's ``timing_s/step`` (the loop body: rollout, reward, old-log-prob, advantages, update, weight
sync); the first ``--skip`` steps of each run are dropped as warm-up; the ratio is median(e3) / median(stock) over
all measured steps. Also printed, because other processes share the cores: the ratio of the fastest steps
(min / min, the least disturbed), and the ratio without the rollout phase: verl's sync replay buffer polls for
finished rollouts every 2 s (``ReplayBuffer.poll_interval``, not configurable), so on this tiny model ``gen`` is
~2.0 s in both trainers whatever the sampler does, and the remaining phases (old-log-prob, advantages, update,
weight sync) are where the two trainers differ. Runs alternate stock, e3, stock, e3, ... (``--repeats``), each on
a fresh Ray cluster in this process, so drift in the machine's load falls on both. Target: ratio <= 1.05.

With ``--async`` the cycle also runs verl's ``colocate_async`` trainer (``verl_cpu_tiny_async``: one batch in flight
ahead of the one trained), stock (``stock_async``) and with E3 (``e3_async``, trainer ``e3_colocate_async``), and a
second table gives each trainer's median step, rollouts per second (64 per step) and verl's mean trajectory
staleness (weight versions between sampling and training).

``python bench/verl_overhead.py [--quick] [--async] [--steps 16] [--skip 2] [--repeats 2] [--out FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from common import machine, table, write_json_atomic  # noqa: E402
from e3.io import read_jsonl  # noqa: E402

PHASES = ("gen", "old_log_prob", "adv", "update_actor", "update_weights")
TARGET = 1.05
STOCK = ["trainer.v1.trainer_mode=sync", "actor_rollout_ref.rollout.agent.agent_loop_manager_class=null"]
# name -> (config, overrides, E3): the sync pair, and with --async verl's colocate_async trainer with and without E3
RUNS = {"stock": ("verl_cpu_tiny", STOCK, False), "e3": ("verl_cpu_tiny", [], True),
        "stock_async": ("verl_cpu_tiny_async", ["trainer.v1.trainer_mode=colocate_async",
                                                "actor_rollout_ref.rollout.agent.agent_loop_manager_class=null"], False),
        "e3_async": ("verl_cpu_tiny_async", [], True)}
ROLLOUTS_PER_STEP = 64  # 8 prompts x n = 8 (sum n_i under E3)


def overrides(run_dir: Path, steps: int) -> list[str]:
    return [f"cpu_tiny.run_dir={run_dir}", f"trainer.total_training_steps={steps}", "trainer.save_freq=-1",
            "trainer.test_freq=-1", "trainer.val_before_train=false"]


def run_one(name: str, run_dir: Path, steps: int) -> Path:
    """One training run of ``steps`` steps; returns its run folder (metrics.jsonl inside)."""
    import ray

    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import prepare_cpu, run

    config_name, extra, with_e3 = RUNS[name]
    if with_e3:
        run(compose(config_name, overrides(run_dir, steps)))
    else:
        from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config

        config = compose(config_name, overrides(run_dir, steps) + extra)
        prepare_cpu(config)
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
        run_ppo(config, task_runner_class=TaskRunnerV1)
    ray.shutdown()  # verl's placement groups live as long as the Ray job: a fresh cluster for the next run
    return run_dir


def step_records(run_dir: Path) -> list[dict]:
    """Per training step (in order): verl's timings and the tokens it trained on."""
    steps: dict[int, dict] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        steps.setdefault(int(rec["step"]), {}).update(rec["data"])
    return [steps[s] for s in sorted(steps) if "timing_s/step" in steps[s]]


def summarise(name: str, repeat: int, records: list[dict], skip: int) -> dict:
    kept = records[skip:]
    if not kept:
        raise SystemExit(f"{name}: {len(records)} steps logged, none left after --skip {skip}")
    step = np.array([r["timing_s/step"] for r in kept])
    gen = np.array([r.get("timing_s/gen", np.nan) for r in kept])
    return {"name": name, "repeat": repeat, "steps_logged": len(records), "steps_measured": len(kept),
            "step_s": step.tolist(), "median_s": float(np.median(step)), "mean_s": float(step.mean()),
            "min_s": float(step.min()), "step_minus_gen_s": (step - gen).tolist(),
            "phases_median_s": {p: float(np.median([r.get(f"timing_s/{p}", np.nan) for r in kept])) for p in PHASES},
            "tokens_mean": float(np.mean([r.get("perf/total_num_tokens", np.nan) for r in kept])),
            "reward_mean": float(np.mean([r.get("critic/score/mean", np.nan) for r in kept])),
            "rollouts_per_s": ROLLOUTS_PER_STEP / float(np.median(step)),
            "staleness_mean": float(np.mean([r.get("training/off_policy/trajectory_staleness/mean", np.nan)
                                             for r in kept])),
            "controller_metrics": all("rollout/n_total" in r for r in records)}  # True only under the e3 trainer


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 3 steps per run, 1 skipped, 1 repeat")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps dropped from each run")
    ap.add_argument("--repeats", type=int, default=2, help="stock/e3 pairs, alternating")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "verl_overhead.json")
    ap.add_argument("--async", dest="asynchronous", action="store_true",
                    help="also verl's colocate_async trainer, stock and with E3 (e3_colocate_async), beside sync E3")
    args = ap.parse_args(argv)
    names = ("stock", "e3", "stock_async", "e3_async") if args.asynchronous else ("stock", "e3")
    if args.quick:
        args.steps, args.skip, args.repeats = 3, 1, 1
    if args.skip >= args.steps:
        ap.error(f"--skip {args.skip} leaves no step of --steps {args.steps}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.time()
    runs = []
    with tempfile.TemporaryDirectory(prefix="verl_overhead_") as tmp:
        for repeat in range(args.repeats):
            for name in names:
                run_dir = run_one(name, Path(tmp) / f"{name}_{repeat}", args.steps)
                runs.append(summarise(name, repeat, step_records(run_dir), args.skip))
                print(f"[verl_overhead] {name} #{repeat}: median step {runs[-1]['median_s']:.3f} s over "
                      f"{runs[-1]['steps_measured']} steps", flush=True)
    summary = {}
    for name in ("stock", "e3"):
        step = np.concatenate([r["step_s"] for r in runs if r["name"] == name])
        rest = np.concatenate([r["step_minus_gen_s"] for r in runs if r["name"] == name])
        summary[name] = {"median_s": float(np.median(step)), "mean_s": float(step.mean()), "min_s": float(step.min()),
                         "median_minus_gen_s": float(np.median(rest)), "steps": int(step.size)}
    e3, stock = summary["e3"], summary["stock"]
    summary["ratio_median"] = e3["median_s"] / stock["median_s"]
    summary["ratio_mean"] = e3["mean_s"] / stock["mean_s"]
    summary["ratio_min"] = e3["min_s"] / stock["min_s"]
    summary["ratio_without_gen"] = e3["median_minus_gen_s"] / stock["median_minus_gen_s"]
    summary["extra_s_per_step"] = e3["median_s"] - stock["median_s"]
    summary["target"] = TARGET
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": machine(), "runs": runs, "summary": summary, "wall_s": round(time.time() - t0, 1)}
    write_json_atomic(args.out, result)

    rows = [[f"{r['name']} #{r['repeat']}", r["steps_measured"], f"{r['median_s']:.3f}", f"{r['mean_s']:.3f}",
             f"{r['min_s']:.3f}", *[f"{r['phases_median_s'][p]:.3f}" for p in PHASES], f"{r['tokens_mean']:.0f}"]
            for r in runs]
    print(table(["run", "steps", "step median s", "step mean s", "step min s", *[f"{p} s" for p in PHASES],
                 "tokens/step"], rows))
    print(f"wrote {args.out} ({result['wall_s']} s in all)")
    print(f"ratios e3 / stock: mean {summary['ratio_mean']:.3f}, fastest steps {summary['ratio_min']:.3f}, without "
          f"the rollout phase {summary['ratio_without_gen']:.3f}; e3 spends {summary['extra_s_per_step']:+.3f} s "
          "per step (medians)")
    print(f"summary: e3 / stock verl GRPO step time ratio {summary['ratio_median']:.3f} (median; target <= {TARGET})")
    if args.asynchronous:
        modes = [[name, f"{np.median([r['median_s'] for r in runs if r['name'] == name]):.3f}",
                  f"{np.median([r['rollouts_per_s'] for r in runs if r['name'] == name]):.1f}",
                  f"{np.nanmean([r['staleness_mean'] for r in runs if r['name'] == name]):.2f}"] for name in names]
        print(table(["trainer", "step median s", "rollouts/s", "staleness (mean, versions)"], modes))
    return result


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
