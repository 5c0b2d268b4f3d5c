"""Regenerate ``mathverify_0.9.0_cases.json``: the (gold, pred, expected) cases of math-verify 0.9.0's own tests.

    pip download --no-binary :all: --no-deps math-verify==0.9.0 -d /tmp/mv && tar xzf /tmp/mv/*.tar.gz -C /tmp/mv
    python tests/data/make_mathverify_cases.py /tmp/mv/math_verify-0.9.0

Imports the sdist's test modules, reads their ``pytest.mark.parametrize`` values and, from each test's source, the
options it passes to ``compare_strings`` (``match_types``, ``precision``, ``strict``, ``allow_set_relation_comp``)
or whether it calls ``verify(parse(gold), parse(pred))`` with math-verify's defaults. Of the sdist's 291 tests,
276 are such cases; the other 15 check internals, not a (gold, pred) verdict, and are skipped: test_configs.py (2),
test_gamma_func.py (2), test_string_extraction.py (7), test_timeout.py (3, mocked), test_raise_on_error.py (1), as
are the four ``sympy_expr_eq`` asserts inside test_all.py::test_precision (its compare_strings assert is a case).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
import types
from pathlib import Path

OUT = Path(__file__).with_name("mathverify_0.9.0_cases.json")
DEFAULTS = {"extraction": ["latex", "expr"], "boxed_priority": 0, "float_rounding": 6, "strict": True,
            "allow_set_relation_comp": False}


def _value(node, params):
    if isinstance(node, ast.Name) and node.id in params:
        return params[node.id]
    return ast.literal_eval(node)


def _cases_of(func, file_name, params_list):
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    out = []
    for cmp in ast.walk(tree):
        if not (isinstance(cmp, ast.Compare) and isinstance(cmp.ops[0], ast.Eq)):
            continue
        call, rhs = cmp.left, cmp.comparators[0]
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "int":
            call = call.args[0]  # int(verify(parse(gold), parse(pred))) == result
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            continue
        for i, params in enumerate(params_list):
            if call.func.id == "compare_strings":
                kw = {k.arg: _value(k.value, params) for k in call.keywords}
                case = {"gold": _value(call.args[0], params), "pred": _value(call.args[1], params),
                        "extraction": list(kw.get("match_types", ["latex", "expr"])), "boxed_priority": 0,
                        "float_rounding": int(kw.get("precision", 6)), "strict": bool(kw.get("strict", True)),
                        "allow_set_relation_comp": bool(kw.get("allow_set_relation_comp", False))}
            elif call.func.id == "verify" and all(isinstance(a, ast.Call) and a.func.id == "parse" for a in call.args):
                # math-verify's defaults: LatexExtractionConfig() (boxed priority 50) + ExprExtractionConfig()
                case = {"gold": _value(call.args[0].args[0], params), "pred": _value(call.args[1].args[0], params),
                        **DEFAULTS, "boxed_priority": 50}
            else:
                continue
            suffix = f"[{i}]" if len(params_list) > 1 or params else ""
            out.append({"id": f"{file_name}::{func.__name__}{suffix}", **case,
                        "expected": int(_value(rhs, params))})
    return out


def main(sdist: str) -> None:
    root = Path(sdist).resolve()
    pkg = types.ModuleType("tests")  # the sdist's tests import each other as `tests.*`; shadow any other `tests`
    pkg.__path__ = [str(root / "tests")]
    sys.modules["tests"] = pkg
    cases = []
    for path in sorted((root / "tests").glob("test_*.py")):
        mod = importlib.import_module(f"tests.{path.stem}")
        for name, func in inspect.getmembers(mod, inspect.isfunction):
            if not name.startswith("test_") or func.__module__ != mod.__name__:
                continue
            marks = [m for m in getattr(func, "pytestmark", []) if m.name == "parametrize"]
            if marks:
                argnames, values = marks[0].args[0], marks[0].args[1]
                names = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
                params_list = [dict(zip(names, v)) for v in values]
            else:
                params_list = [{}]
            cases += _cases_of(func, path.name, params_list)
    doc = {
        "provenance": "Cases of the tests in the math-verify 0.9.0 sdist (Hugging Face, https://github.com/"
                      "huggingface/Math-Verify), extracted by tests/data/make_mathverify_cases.py; each 'id' names "
                      "the original test file and function. math-verify is licensed under the Apache License 2.0 "
                      "(LICENCE file of the sdist; tests/test_all.py also carries an MIT header, Copyright (c) 2024 "
                      "The HuggingFace Team); this file keeps only the case data, with attribution.",
        "fields": "gold/pred: the strings math-verify's test parses; extraction: its match_types; boxed_priority: "
                  "LatexExtractionConfig.boxed_match_priority; float_rounding/strict/allow_set_relation_comp: its "
                  "verify options; expected: the verdict its test asserts (1/0).",
        "cases": cases,
    }
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from e3.io import atomic_write_json

    atomic_write_json(OUT, doc, indent=1)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
