"""The task runner: verl's v1 ``TaskRunnerV1`` with our trainer registered inside its Ray actor.

verl resolves ``trainer.v1.trainer_mode`` through its trainer registry in ``TaskRunnerV1.run``, which executes in a
Ray actor process; a registration done only on the driver would not exist there. ``E3TaskRunner.run`` imports
``e3.engines.verl.trainer`` (whose ``@register_trainer("e3")`` fills the registry) and then runs verl's own code.
"""

from __future__ import annotations

from verl.trainer.main_ppo import TaskRunnerV1


class E3TaskRunner(TaskRunnerV1.__ray_actor_class__):
    """``TaskRunnerV1`` + the ``e3`` trainer registration; wrap with ``ray.remote(num_cpus=1)`` for ``run_ppo``."""

    def run(self, config):
        import e3.engines.verl.trainer  # noqa: F401  (registers the "e3" trainer in this process)

        return super().run(config)
