"""Per-request sampling temperature for verl's agent-loop rollout (E3 Eq. 4: one tau per step, all ranks).

verl 0.9.1 builds sampling params once per batch from each worker's own copy of ``actor_rollout_ref.rollout``, so
changing the driver's config never reaches the rollout. The trainer therefore ships the step's temperature as data:
a ``__temperature__`` column next to verl's native ``__rollout_n__`` (E3 Alg. 1 budgets). ``E3AgentLoopWorker``
overrides only ``_run_prompt`` to pop it and put it into that prompt's sampling params; everything else (n_i
sessions, TransferQueue writes, greedy / validation handling) is verl's own code. ``E3AgentLoopManager`` selects the
worker; it is named by ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` in ``e3/config/e3_trainer.yaml``.
"""

from __future__ import annotations

import ray

from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ

TEMPERATURE_KEY = "__temperature__"
ROLLOUT_N_KEY = "__rollout_n__"


def apply_prompt_temperature(prompt: dict, sampling_params: dict, validate: bool) -> dict:
    """Pop ``__temperature__`` from ``prompt``; return the sampling params this prompt is sampled with.

    Validation keeps verl's ``val_kwargs`` temperature. A non-positive or non-finite value is refused loudly:
    a silent fallback is how the authors' code ran at tau = 1 without anyone noticing.
    """
    value = prompt.pop(TEMPERATURE_KEY, None)
    if ROLLOUT_N_KEY in prompt:  # a 0-d tensor after verl's per-prompt split; range() wants an int
        prompt[ROLLOUT_N_KEY] = int(prompt[ROLLOUT_N_KEY])
    if value is None or validate:
        return sampling_params
    tau = float(value)
    if not 0.0 < tau < float("inf"):
        raise ValueError(f"{TEMPERATURE_KEY}={tau!r} for prompt uid={prompt.get('uid')}: must be finite and > 0")
    return {**sampling_params, "temperature": tau}


# Declared with ``@ray.remote`` on the class statement, exactly as verl declares ``AgentLoopWorkerTQ``, and not as
# ``ray.remote(SomeImportableSubclass)``. Why it matters: Ray pickles the actor class to the worker process with
# cloudpickle. A class whose module attribute *is* the class travels by reference (re-imported there), but every
# method inherited from verl's ``AgentLoopWorkerTQ`` travels by value: its module attribute is the ``ActorClass``
# wrapper, not the class, so cloudpickle rebuilds a private copy of the class for those functions, and the
# zero-argument ``super()`` in ``AgentLoopWorkerTQ.__init__`` then names that copy, which the instance (built from
# the re-imported class) is not a subclass of: ``TypeError: super(type, obj)``. Bound to its ActorClass like verl's,
# our class travels by value too, in the same pickle as its base, so every ``super()`` cell names the classes the
# instance is built from. ``tests/contract/test_verl_ray_actors.py`` builds it through Ray as verl does.
@ray.remote
class E3AgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """verl's TransferQueue agent-loop worker, plus the per-prompt temperature."""

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        params = apply_prompt_temperature(prompt, sampling_params, bool(trajectory["validate"]))
        await super()._run_prompt(prompt, params, trajectory=trajectory, trace=trace)


# The plain class, for constructing a worker in-process (tests that drive it without Ray).
E3AgentLoopWorkerImpl = E3AgentLoopWorker.__ray_actor_class__


class E3AgentLoopManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager with ``E3AgentLoopWorker`` as its worker class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # sets verl's worker class; workers are spawned later, in create()
        self.agent_loop_workers_class = E3AgentLoopWorker
