"""Contract: verl's real RLHFDataset + dataloader feed E3Trainer batches carrying E3's decisions (no Ray needed).

Covers the budget column (sum = train_batch_size x rollout.n, varying with difficulty), the temperature column, the
prompt-index checks on the training files, and the PREPO offline curriculum over scored data.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from e3.data import read_rows, write_rows

from .test_verl_config import compose
from .verl_harness import arithmetic_rows, build_tiny_model

B, N = 4, 4
REPO_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def make_trainer(model_dir, train_file, *extra):
    from e3.engines.verl.trainer import E3Trainer

    cfg = compose("e3_trainer", f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={train_file}",
                  f"data.val_files={train_file}", f"data.train_batch_size={B}", f"actor_rollout_ref.rollout.n={N}",
                  "data.dataloader_num_workers=0", "data.seed=3", "e3.allocation.n_low=2", "e3.allocation.n_high=6",
                  "trainer.total_epochs=2", *extra)
    trainer = E3Trainer(cfg)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer.global_steps = 1
    return trainer


def test_batch_budgets_sum_to_batch_times_n_and_follow_difficulty(model_dir, tmp_path):
    train = write_rows(arithmetic_rows(12, "train"), tmp_path / "train.parquet")
    trainer = make_trainer(model_dir, train)
    trainer.on_step_begin()
    batch = trainer._next_train_batch()
    n = batch["__rollout_n__"]
    assert n.dtype.is_floating_point is False and n.tolist() == [N] * B  # epoch 1: every prompt gets n
    assert batch["__temperature__"].tolist() == [1.0] * B
    assert trainer.config.actor_rollout_ref.rollout.temperature == 1.0

    # after an epoch in which prompt k was solved k/12 of the time, budgets follow the ranking
    ctrl = trainer.controller
    for k in range(12):
        ctrl.allocator.observe([k] * 12, [1.0] * k + [0.0] * (12 - k))
    ctrl.end_epoch()
    for _ in range(3):
        batch = trainer._next_train_batch()
        idx, n = [int(i) for i in batch["index"]], batch["__rollout_n__"].tolist()
        assert sum(n) == B * N and all(2 <= x <= 6 for x in n)
        order = np.argsort(idx)
        assert all(np.diff(np.asarray(n)[order]) <= 0)  # higher k = easier = never more rollouts
    assert trainer.steps_per_epoch == 12 // B and trainer.total_training_steps == 2 * 12 // B


def test_training_rows_need_unique_prompt_indices(model_dir, tmp_path):
    rows = arithmetic_rows(8, "train")
    write_rows(rows, tmp_path / "ok.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    dup = [dict(r) for r in rows]
    dup[5] = {**dup[5], "extra_info": {"split": "train", "index": 2}}
    pq.write_table(pa.Table.from_pylist(dup), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match=r"row 5 field extra_info\.index: 2 repeats row 2"):
        make_trainer(model_dir, tmp_path / "dup.parquet")
    bare = [{k: v for k, v in r.items() if k != "extra_info"} for r in rows]  # the E3 authors' file layout
    pq.write_table(pa.Table.from_pylist(bare), tmp_path / "bare.parquet")
    with pytest.raises(ValueError, match="extra_info.index"):
        make_trainer(model_dir, tmp_path / "bare.parquet")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"e3_data_{name}", REPO_DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_curriculum_paces_from_low_to_high_perplexity(model_dir, tmp_path):
    train = write_rows(arithmetic_rows(20, "train"), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match="extra_info.perplexity"):
        make_trainer(model_dir, train, "e3.curriculum.enable=true")
    scored = tmp_path / "train_ppl.parquet"
    _load_script("score_perplexity").main(["--model", str(model_dir), "--input", str(train), "--output", str(scored),
                                            "--device", "cpu", "--dtype", "float32"])
    ppl = {r["extra_info"]["index"]: r["extra_info"]["perplexity"] for r in read_rows(scored)}
    trainer = make_trainer(model_dir, scored, "e3.curriculum.enable=true", "e3.curriculum.window_ratio=0.2")
    ranked = sorted(ppl, key=ppl.get)
    first = [int(i) for i in trainer._next_train_batch()["index"]]
    assert sorted(first) == sorted(ranked[:B])  # step 0: the window of the B lowest-perplexity prompts
    trainer.controller.step = trainer.total_training_steps  # end of training: the hardest window
    last = [int(i) for i in trainer._next_train_batch()["index"]]
    assert sorted(last) == sorted(ranked[-B:])
    assert trainer._next_train_batch()["__rollout_n__"].sum().item() == B * N
    assert "curriculum/ppl_mean" in trainer.controller.offline_pacer.metrics()
