"""The task runner: verl's v1 ``TaskRunnerV1`` with our trainer registered inside its Ray actor.

verl resolves ``trainer.v1.trainer_mode`` through its trainer registry in ``TaskRunnerV1.run``, which executes in a
Ray actor process; a registration done only on the driver would not exist there. ``E3TaskRunner.run`` imports
``e3.engines.verl.trainer`` and ``e3.engines.verl.trainer_async`` (whose ``@register_trainer`` fill the registry with
``e3`` and ``e3_colocate_async``) and then runs verl's own code.
"""

from __future__ import annotations

from verl.trainer.main_ppo import TaskRunnerV1


class E3TaskRunner(TaskRunnerV1.__ray_actor_class__):
    """``TaskRunnerV1`` + the E3 trainers' registration; wrap with ``ray.remote(num_cpus=1)`` for ``run_ppo``."""

    def run(self, config):
        import importlib

        # registers "e3_colocate_async" in this process, and "e3" with the module it builds on (e3.engines.verl.trainer)
        importlib.import_module("e3.engines.verl.trainer_async")

        return super().run(config)
