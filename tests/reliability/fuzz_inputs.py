"""Seeded generator of hostile reward inputs, shared by the fast test and ``bench/reliability.py``.

``fuzz_inputs(n, seed)`` returns ``n`` dicts ``{"data_source", "solution_str", "ground_truth", "extra_info", "kind"}``
cycling through ``KINDS``: deeply nested braces, ~100 kB responses, unbalanced ``\\left(``, huge exponents
(``10^{10^{10}}``), many ``\\boxed{}``, unicode and binary noise, empty strings, ground truths in odd formats
(numbers, lists, bytes, None, LaTeX with delimiters, very long) and mutated real-looking solutions. The same
``(n, seed)`` always gives the same inputs. Import it by path: ``sys.path.insert(0, "tests/reliability")``.
"""

from __future__ import annotations

import random

_ANSWERS = ["3", "-7", "\\frac{1}{2}", "0.25", "\\sqrt{2}", "2\\pi", "(1, 2)", "[0, 1)", "x^2 + 1", "\\{1, 2, 3\\}",
            "10\\%", "\\text{(B)}", "y = 2x + 1", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "1,000", "\\infty"]
_WORDS = ["so", "the", "answer", "is", "therefore", "we", "get", "=", "+", "\\cdot", "$", "\\(", "\\)", "\\[", "\\]",
          "{", "}", "\\frac", "^", "_", "\\left(", "\\right)", "\\boxed{", "final", "answer:", "\n"]
_TOKENS = ["{", "}", "\\left(", "\\right)", "\\boxed{", "$", "$$", "\\frac{", "^{", "_{", "\\sqrt{", "\\\\", "&",
           "\\begin{pmatrix}", "\\end{pmatrix}", "\\text{", "%", "\\", "1", "x", " "]


def _nested_braces(r: random.Random) -> str:
    depth = r.choice([100, 1000, 10_000, 50_000])
    inner = r.choice(["1", "x", "", "\\frac{1}{2}"])
    return r.choice(["", "\\boxed", "\\frac", "$"]) + "{" * depth + inner + "}" * r.choice([depth, depth // 2, 0])


def _long_response(r: random.Random) -> str:
    words = [r.choice(_WORDS) for _ in range(r.randint(15_000, 25_000))]
    return " ".join(words) + r.choice(["", f" \\boxed{{{r.choice(_ANSWERS)}}}", " the final answer is $5$"])


def _unbalanced_left(r: random.Random) -> str:
    n = r.choice([1, 10, 1000, 5000])
    return r.choice(["$", "\\boxed{", "\\[", ""]) + "\\left( 3 + " * n + r.choice(["x", "$", "}", "\\right)"])


def _huge_exponent(r: random.Random) -> str:
    tower = r.choice(["10^{10^{10}}", "9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{100000000}", "(10^{10^{10}})!",
                      "e^{10^{10}}", "\\sqrt{2}^{10^{100}}", "100000!", "10^{-10^{10}}", "1.5^{10^{9}}"])
    return r.choice(["\\boxed{%s}", "The answer is $%s$.", "%s", "$x = %s$"]) % tower


def _many_boxed(r: random.Random) -> str:
    n = r.choice([10, 1000, 10_000])
    return " ".join(f"\\boxed{{{r.choice(_ANSWERS)}}}" for _ in range(n))


def _unicode_noise(r: random.Random) -> str:
    pools = [(0x20, 0x7E), (0x370, 0x3FF), (0x2200, 0x22FF), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F), (0xD800, 0xDFFF)]
    out = []
    for _ in range(r.randint(0, 5000)):
        lo, hi = r.choice(pools)
        out.append(chr(r.randint(lo, hi)))
    return "".join(out) + r.choice(["", "\\boxed{3}", "\\boxed{\u221e}"])


def _binary_noise(r: random.Random) -> str | bytes:
    raw = bytes(r.getrandbits(8) for _ in range(r.randint(0, 20_000)))
    return raw if r.random() < 0.5 else raw.decode("latin-1")


def _empty(r: random.Random) -> str | None:
    return r.choice(["", " ", "\n\n", "$$", "\\boxed{}", "\\boxed{", None, "}", "$", "\\"])


def _token_soup(r: random.Random) -> str:
    return "".join(r.choice(_TOKENS) for _ in range(r.randint(1, 3000)))


def _mutated_solution(r: random.Random) -> str:
    a = r.choice(_ANSWERS)
    s = list(f"We compute step by step. Therefore the final answer is $\\boxed{{{a}}}$.")
    for _ in range(r.randint(0, 8)):
        op, i = r.random(), r.randrange(len(s) + 1)
        if op < 0.4:
            s.insert(i, r.choice(_TOKENS))
        elif op < 0.8 and s:
            del s[min(i, len(s) - 1)]
        else:
            s = s[:i]
    return "".join(s)


_RESPONSES = {"nested_braces": _nested_braces, "long_response": _long_response, "unbalanced_left": _unbalanced_left,
              "huge_exponent": _huge_exponent, "many_boxed": _many_boxed, "unicode_noise": _unicode_noise,
              "binary_noise": _binary_noise, "empty": _empty, "token_soup": _token_soup,
              "mutated_solution": _mutated_solution}
KINDS = tuple(_RESPONSES) + ("odd_ground_truth",)


def _odd_ground_truth(r: random.Random):
    return r.choice([
        5, 0.5, -3, 10 ** 30, float("nan"), float("inf"), None, b"\\frac{1}{2}", b"\xff\xfe", "", "   ",
        ["3", "4"], ("\\frac12",), [], ["", None], "$\\frac{1}{2}$", "\\boxed{3}", "\\(3\\)", "x=3", "3 \\text{ cm}",
        "\\$18.90", "1,000,000", "{", "}" * 100, "\\left(", "10^{10^{10}}", "A", "\\text{(C)}", "\u221e",
        "3" * 5000, "\\frac{" * 200, r.choice(_ANSWERS),
    ])


def fuzz_inputs(n: int, seed: int = 0) -> list[dict]:
    """``n`` reward inputs cycling through ``KINDS`` (seeded; the same arguments give the same list)."""
    r = random.Random(seed)
    items = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "odd_ground_truth":
            response, truth = _mutated_solution(r), _odd_ground_truth(r)
        else:
            response = _RESPONSES[kind](r)
            truth = r.choice(_ANSWERS) if r.random() < 0.8 else _odd_ground_truth(r)
        items.append({"data_source": "fuzz", "solution_str": response, "ground_truth": truth,
                      "extra_info": {"index": i, "kind": kind}, "kind": kind})
    return items
