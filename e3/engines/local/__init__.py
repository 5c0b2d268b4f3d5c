"""The local engine: one process, torch + transformers, CPU or one CUDA device (docs/architecture.md, section 3).

``engine`` (the run: rollout, update, observe), ``schema`` (the typed ``LocalConfig``), ``sampling`` (KV-cache
sampling at τ), ``policy_loss``, ``tracking`` (metrics.jsonl and the logger backends), ``checkpoint``, ``run_dir``,
``evaluate``, ``report`` (the start-up difficulty report). ``python -m e3.engines.local`` runs it. Nothing is
imported here, so importing a submodule stays cheap.
"""
