"""Driver of ``test_verl_cpu.py``: two real E3 runs on verl's CPU platform in one process (one Ray cluster).

    python tests/e2e/verl_cpu_runs.py ROOT

Run ``ROOT/a``: 4 steps of ``verl_cpu_tiny`` (16 prompts, so an E3 epoch ends after step 2 and the budgets of steps
3-4 differ per prompt), checkpoints at steps 3 and 4 with the actor also saved in transformers format, verl's dump
of every trained batch in ``ROOT/a/rollouts``, tau_0 = 0.8 (so a trainer at the config's 1.0 would show), and one
validation after step 4 with 4 samples per problem at temperature 1.0 (``validation``; verl's dump of it in
``ROOT/a/validation``). Run ``ROOT/b``: resumed from ``ROOT/a``'s step-3 checkpoint, runs step 4 again (a fresh
Ray cluster, as a restarted job would have). Exits non-zero if either run fails; the test reads what the runs wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [f"cpu_tiny.run_dir={run_dir}", "cpu_tiny.train_size=16", "trainer.total_training_steps=4",
            "trainer.save_freq=3", "trainer.test_freq=-1", "trainer.val_before_train=false",
            f"trainer.rollout_data_dir={run_dir / 'rollouts'}", "actor_rollout_ref.rollout.temperature=0.8",
            "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]", *extra]


def validation(run_dir: Path) -> list[str]:
    """Validate at the last step only (step 4, after the update), sampled: val/pass@1, 2, 4 (e3.validation.pass_k)."""
    return ["trainer.test_freq=4", "actor_rollout_ref.rollout.val_kwargs.n=4",
            "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
            "actor_rollout_ref.rollout.val_kwargs.temperature=1.0", f"trainer.validation_data_dir={run_dir / 'validation'}"]


def main(root: Path) -> None:
    import ray

    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import run

    config = compose("verl_cpu_tiny", overrides(root / "a", *validation(root / "a")))
    run(config)
    (root / "assets.json").write_text(json.dumps({"model_dir": config.cpu_tiny.model_dir,
                                                  "data_dir": config.cpu_tiny.data_dir}))
    ray.shutdown()  # a fresh cluster: verl's placement groups live as long as the Ray job that created them
    resume = root / "a" / "checkpoints" / "global_step_3"
    run(compose("verl_cpu_tiny", overrides(root / "b", "trainer.resume_mode=resume_path",
                                           f"trainer.resume_from_path={resume}")))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
