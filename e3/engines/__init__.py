"""Engines that carry the E3 / PREPO controllers' decisions (docs/architecture.md, sections 3 and 4).

- ``e3.engines.local``: one process, torch + transformers, CPU or one CUDA device (laptops, tests, benchmarks).
- ``e3.engines.verl``: the verl 0.9.1 adapter for GPU clusters (trainer subclass registered as ``e3``, a rollout
  worker with a per-request temperature, a task runner); entry point ``python -m e3.main_train``.

Nothing is imported here, so ``import e3.engines.local`` never pulls in verl or Ray.
"""
