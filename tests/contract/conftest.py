"""Fixtures of the verl training-loop contract tests: a local Ray + TransferQueue and the tiny model and data.

Ray + TransferQueue start once per module (one storage unit: verl's default 8 hang a 2-CPU Ray cluster); the tiny
model, tokenizer and parquet files are built once per session and only read afterwards.
"""

from __future__ import annotations


import pytest

from .verl_harness import arithmetic_rows, build_tiny_model, ray_and_transfer_queue


@pytest.fixture(scope="module")
def cluster():
    with ray_and_transfer_queue():
        yield


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """``model/`` (tiny Qwen2 + tokenizer, seed 0), ``sharp_model/`` and ``ref_model/`` (seeds 0 and 1, larger
    weights: entropies that differ between responses), ``train.parquet`` (16 prompts), ``train6.parquet`` (the first
    6 of them), ``valid.parquet`` (4 prompts)."""
    from e3.data import write_rows

    root = tmp_path_factory.mktemp("verl_e3")
    build_tiny_model(root / "model")
    build_tiny_model(root / "sharp_model", seed=0, init_range=0.5)
    build_tiny_model(root / "ref_model", seed=1, init_range=0.5)
    write_rows(arithmetic_rows(16, "train"), root / "train.parquet")
    write_rows(arithmetic_rows(6, "train"), root / "train6.parquet")
    write_rows(arithmetic_rows(4, "valid", start=100), root / "valid.parquet")
    return root
