"""The task registry (``task.kind``), the warm start's two layouts, its learning-rate line and its cache."""

import math

import pytest
import torch

from e3.tasks import registry
from e3.tasks.arithmetic import ArithmeticTask
from e3.tasks.vocab import CharTokenizer
from e3.tasks.base import Task
from e3.tasks.chain import ChainTask
from e3.tasks.model import build_model
from e3.tasks.warm_start import left_padded, train, unpadded, warm_start, warm_start_lr

TOK = CharTokenizer()
ROWS = [{"prompt": "3+4=", "answer": "7", "level": 0}, {"prompt": "12+3=", "answer": "15", "level": 1}]
WS = {"steps": 3, "batch_size": 4, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1}


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def test_task_kind_selects_registered_names_and_module_paths(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert registry.task_class("arithmetic") is ArithmeticTask and registry.task_class("chain") is ChainTask
    assert registry.task_class("e3.tasks.chain:ChainTask") is ChainTask

    class Mine(ArithmeticTask):
        pass

    assert registry.register_task("mine", Mine) is Mine and registry.task_class("mine") is Mine
    assert "mine" in registry.registered_tasks()
    with pytest.raises(ValueError, match=r"task.kind must be a registered task \(arithmetic, chain, mine\)"):
        registry.task_class("poetry")
    with pytest.raises(ValueError, match=r"task.kind='no_such_module:Task': cannot load it \(ModuleNotFoundError"):
        registry.task_class("no_such_module:Task")
    with pytest.raises(ValueError, match="task.kind='math:pi': 3.14.* is not a subclass of e3.tasks.base.Task"):
        registry.task_class("math:pi")
    with pytest.raises(ValueError, match="without ':'"):
        registry.register_task("a:b", Mine)
    with pytest.raises(ValueError, match="not a subclass"):
        registry.register_task("fn", len)


def test_left_padded_layout_weights_the_prompt_and_averages_over_answer_and_eos():
    t = left_padded(TOK, [ROWS[:1]], width=6, max_new=3, prompt_loss=0.5)
    assert t.tokens[0, 0].tolist() == [0, 0, *ids("3+4=7"), TOK.eos_id, 0]
    assert t.weight[0, 0].tolist() == [0, 0.5, 0.5, 0.5, 0.5, 1, 1, 0]  # targets: pad 3 + 4 = 7 eos pad
    assert t.count.tolist() == [[2]]  # '7' and eos


def test_unpadded_layout_puts_weight_on_answer_and_eos_only():
    t = unpadded(TOK, [ROWS])
    assert t.tokens.shape == (1, 2, 8)
    assert t.tokens[0, 0].tolist() == [*ids("3+4=7"), TOK.eos_id, 0, 0]
    assert t.weight[0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0]  # the targets '7' and eos
    assert t.weight[0, 1].tolist() == [0, 0, 0, 0, 1, 1, 1]  # '1', '5', eos
    assert t.count.tolist() == [[2, 3]]


def test_learning_rate_warms_up_then_follows_a_cosine_over_the_whole_run():
    assert [warm_start_lr(s, 11, 1.0, 0.0, 2) for s in (0, 1)] == [0.5, 1.0]
    assert warm_start_lr(2, 11, 1.0, 0.0, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert warm_start_lr(10, 11, 1.0, 0.1, 2) == pytest.approx(0.1)


def test_noise_without_slipped_demonstrations_is_refused():
    model = build_model({"hidden_size": 8, "num_layers": 1, "num_heads": 1, "intermediate_size": 8}, 16, 16, 0)
    with pytest.raises(ValueError, match="warm_start.demo_error_rate=0.2 needs slipped demonstrations"):
        train(model, unpadded(TOK, [ROWS]), None, {**WS, "demo_error_rate": 0.2}, 0, torch.device("cpu"))


def test_zero_steps_leave_the_model_as_built():
    model = build_model({"hidden_size": 8, "num_layers": 1, "num_heads": 1, "intermediate_size": 8}, 16, 16, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train(model, unpadded(TOK, [ROWS]), None, {**WS, "steps": 0}, 0, torch.device("cpu"))
    assert stats["steps"] == 0 and math.isnan(stats["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_warm_start_trains_once_then_loads_from_its_cache(tmp_path):
    def model():
        return build_model({"hidden_size": 8, "num_layers": 1, "num_heads": 1, "intermediate_size": 8}, 16, 16, 0)

    def targets():
        return left_padded(TOK, [ROWS, ROWS[::-1]], 6, 4, 0.0)  # variant 1: each prompt with the other's answer

    ws = {**WS, "cache_dir": str(tmp_path), "demo_error_rate": 0.5}
    levels = [r["level"] for r in ROWS]
    a, b, c = model(), model(), model()
    first = warm_start(a, targets, levels, ws, 0, torch.device("cpu"), {"run": 1})
    again = warm_start(b, targets, levels, ws, 0, torch.device("cpu"), {"run": 1})
    other = warm_start(c, targets, levels, ws, 0, torch.device("cpu"), {"run": 2})
    assert (first["cached"], again["cached"], other["cached"]) == (False, True, False)
    assert first["key"] == again["key"] != other["key"] and first["loss"] == again["loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), model().state_dict().values()))


def test_base_task_needs_levels_and_pools_and_defaults_the_rest():
    task = Task(None)
    assert task.score("42", "42") == 1.0 and task.score("42 ", "42") == 0.0 and task.final_answer("x=1") == "x=1"
    assert task.demo_variants(ROWS, 3) == [] and task.tokenizer().itos == TOK.itos
    for method in (lambda: task.parse_level("x"), task.pools):
        with pytest.raises(NotImplementedError):
            method()


@pytest.mark.parametrize("config,key", [(None, "a7dfa13024fafaf1"), ("chain", "261bd10775bd32ea")])
def test_the_shipped_runs_keep_their_warm_start_cache_key(tmp_path, monkeypatch, config, key):
    """The key of the default and chain runs' warm starts (whose cached results the documented numbers come from)
    is what it was before tasks were classes: a change here retrains them and changes those numbers."""
    from e3.engines.local import engine
    from e3.engines.local.schema import load_config
    from e3.tasks.warm_start import CACHE_VERSION, cache_key

    seen = {}
    monkeypatch.setattr(engine, "warm_start", lambda *args: seen.setdefault("payload", args[6]))
    eng = engine.LocalEngine(load_config(config, ["device=cpu"]), str(tmp_path), quiet=True)
    eng.do_warm_start()
    assert cache_key({"v": CACHE_VERSION, **seen["payload"]}) == key
