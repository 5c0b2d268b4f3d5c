"""The verl 0.9.1 adapter: E3 / PREPO as a recipe on the released verl, nothing vendored.

- ``trainer``:  ``E3Trainer``, verl's v1 sync trainer carrying the E3 controller (``E3TrainerMixin``), registered as
  ``e3``.
- ``trainer_async``: ``E3ColocateAsyncTrainer``, the same on verl's colocate_async trainer, ``e3_colocate_async``;
  ``inflight`` holds its pure pieces (the record of prompts in generation).
- ``rollout``:  ``E3AgentLoopManager`` / ``E3AgentLoopWorker``, verl's agent loop plus a per-prompt temperature.
- ``rollouts``: pure helpers that turn TransferQueue rows into per-rollout arrays and back.
- ``validation``: E3's validation metrics on verl's (``val/accuracy``, the unbiased ``val/pass@K``).
- ``internals``: the runtime guard of every verl 0.9.1 internal the adapter relies on (run by ``E3Trainer``).
- ``runner``:   ``E3TaskRunner``, verl's v1 task runner that registers our trainer inside its Ray actor.
- ``configs``:  the shipped configs (``e3/config/``) and a user's overlay file composed on verl's ``ppo_trainer``;
  ``engine_of``; ``--run-dir``/``--resume`` as verl's keys.
- ``launch``:   from a composed config to verl's ``run_ppo``: the driver's preflight, then the task runner.
- ``cpu``:      verl without a GPU: the ``e3_cpu`` platform and the ``hf`` rollout backend (a verl plugin loaded with
  ``VERL_USE_EXTERNAL_MODULES``), and the assets of the ``verl_cpu_tiny`` run.

Entry point: ``python -m e3.main_train`` (hydra, config ``e3/config/e3_trainer.yaml`` and the paper runs; the command
line over ``configs`` and ``launch``).
Submodules are imported on demand: importing this package does not start Ray or import verl.
"""
