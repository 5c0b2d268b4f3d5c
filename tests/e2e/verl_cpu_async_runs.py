"""Driver of ``test_verl_cpu_async.py``: E3 in verl's colocate_async trainer on the CPU, two runs in one process.

    python tests/e2e/verl_cpu_async_runs.py ROOT

Run ``ROOT/a``: 6 steps of ``verl_cpu_tiny_async`` (E3's trainer ``e3_colocate_async``: one batch in flight ahead
of the one being trained), checkpoints at steps 3 and 6, no validation. Run ``ROOT/b``: resumed from ``ROOT/a``'s
step-3 checkpoint on a fresh Ray cluster, runs steps 4-6 again. Exits non-zero if either run fails.
"""

from __future__ import annotations

import sys
from pathlib import Path


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [f"cpu_tiny.run_dir={run_dir}", "trainer.total_training_steps=6", "trainer.save_freq=3",
            "trainer.test_freq=-1", "trainer.val_before_train=false", *extra]


def main(root: Path) -> None:
    import ray

    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import run

    run(compose("verl_cpu_tiny_async", overrides(root / "a")))
    ray.shutdown()
    resume = root / "a" / "checkpoints" / "global_step_3"
    run(compose("verl_cpu_tiny_async", overrides(root / "b", "trainer.resume_mode=resume_path",
                                                 f"trainer.resume_from_path={resume}")))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
