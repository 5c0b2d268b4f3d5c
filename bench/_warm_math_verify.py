"""Imported by the forkserver of ``bench/reward_pool.py``: math-verify loaded and warmed up once, before any fork."""

from e3.reward.score import warm_up

warm_up()
