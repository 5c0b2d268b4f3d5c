"""verl's replay buffers with a configurable poll interval, for runs whose steps take about a second.

verl 0.9.1's ``ReplayBuffer`` (``trainer.v1`` sync mode) and ``ReplayBufferAsync`` (the async modes) wait for
finished rollouts by polling TransferQueue every ``poll_interval`` seconds, fixed at 2 s by the trainer. On a GPU
cluster a step's rollout takes far longer, so this costs nothing; on the CPU run the whole rollout takes well under
2 s, so every step would wait for the next poll (``timing_s/gen`` ~2.0 s whatever the sampler does).
``PollingReplayBuffer`` / ``PollingReplayBufferAsync`` are verl's classes with the interval taken from
``trainer.v1.sampler.sampler_kwargs.poll_interval``, plugged in through verl's public
``trainer.v1.sampler.custom_sampler`` setting (see ``e3/config/verl_cpu_tiny.yaml``); nothing else changes.

A custom sampler replaces verl's class in every trainer mode, and verl builds it with the trainer's mode
(``trainer_mode=`` the mode verl runs, e.g. ``colocate_async`` for E3's async trainer). So one name serves all modes:
``PollingReplayBuffer(trainer_mode=...)`` builds a ``PollingReplayBufferAsync`` for any mode but ``sync``, by verl's
own rule for its default buffer; the config names ``PollingReplayBuffer`` whatever the mode.

verl builds a custom sampler without its DAPO group filter and failed-group refill arguments, so ``check_config``
refuses ``algorithm.filter_groups.enable`` and ``trainer.v1.sampler.sync_refill_failed_groups`` with this sampler
(called before any worker starts).
"""

from __future__ import annotations

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

NAME = "PollingReplayBuffer"


class PollingReplayBuffer(ReplayBuffer):
    """verl's sync replay buffer, polling every ``sampler_kwargs.poll_interval`` seconds (verl's default: 2); built
    for an async trainer mode it is a ``PollingReplayBufferAsync`` (see the module doc)."""

    def __new__(cls, trainer_mode: str = "sync", *args, **kwargs):  # ReplayBuffer's first parameter
        if cls is PollingReplayBuffer and trainer_mode != "sync":  # verl's choice of its default buffer
            cls = PollingReplayBufferAsync
        return super().__new__(cls)

    def __init__(self, *args, sampler_kwargs=None, **kwargs):
        interval = float((sampler_kwargs or {}).get("poll_interval", 2.0))
        if not 0.0 < interval <= 60.0:
            raise ValueError(f"trainer.v1.sampler.sampler_kwargs.poll_interval={interval}: expected 0 < seconds <= 60")
        super().__init__(*args, sampler_kwargs=sampler_kwargs, poll_interval=interval, **kwargs)


class PollingReplayBufferAsync(PollingReplayBuffer, ReplayBufferAsync):
    """verl's async replay buffer (``ReplayBufferAsync``: oldest finished groups first, stale ones evicted and
    refilled), polling every ``sampler_kwargs.poll_interval`` seconds."""


def check_config(config) -> None:
    """Refuse the settings verl does not pass to a custom sampler, when this sampler is selected."""
    sampler = config.trainer.v1.sampler
    custom = sampler.get("custom_sampler") or {}
    if custom.get("name") not in (NAME, PollingReplayBufferAsync.__name__):
        return
    filter_groups = config.algorithm.get("filter_groups", None)
    if filter_groups is not None and filter_groups.get("enable", False):
        raise ValueError(f"algorithm.filter_groups.enable=true needs verl's own replay buffer: unset "
                         f"trainer.v1.sampler.custom_sampler ({NAME} is built without DAPO's group filter)")
    if sampler.get("sync_refill_failed_groups", False):
        raise ValueError(f"trainer.v1.sampler.sync_refill_failed_groups=true needs verl's own replay buffer: unset "
                         f"trainer.v1.sampler.custom_sampler ({NAME} is built without the refill)")
