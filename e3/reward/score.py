"""Math answer scoring on math-verify 0.9.0, pure: gold text, the last ``\\boxed{}``, the math-verify call.

The verdict of the reward (``e3.reward.compute_score``): ``math_verify.verify(gold, pred)`` holds, where

- ``pred`` is math-verify's parse of the response (its last ``MAX_RESPONSE_CHARS`` characters: final answers come
  last): its last ``\\boxed{}`` first (``boxed_priority=0``), else its other LaTeX / expression / "final answer is"
  patterns, rightmost first. Like math-verify, several ``\\boxed{}`` in one formula or paragraph are read together
  as a set of answers (``\\boxed{1}, \\boxed{2}`` = {1, 2}), so a response that boxes 3 and then 4 in one paragraph
  scores 0 against 4; the option ``last_boxed_only`` parses only :func:`last_boxed` instead (then multi-answer
  responses score 0);
- ``gold`` is the ground truth parsed the same way; a bare ground truth (no ``\\boxed``, unescaped ``$``, ``\\(``
  or ``\\[``) is wrapped in ``\\boxed{}`` first (:func:`gold_text`). Several ground truths: any one verifying wins;
- ``verify(gold, pred)`` is called gold first: it is asymmetric (assignments, set vs relation); the authors' code
  has them reversed.

Nothing here bounds time: math-verify's own ``signal.alarm`` timeout refuses to run off the main thread, so it is
called with ``parsing_timeout=None, timeout_seconds=None`` and the caller bounds the call (``e3.reward.pool``).
"""

from __future__ import annotations

import re

MAX_RESPONSE_CHARS = 20_000
EXTRACTIONS = ("latex", "expr")

_DELIMITED = re.compile(r"\\boxed|(?<!\\)\$|\\\(|\\\[")
# an opening \boxed{ / \fbox{ (spaces allowed before the brace), MATH's brace-less "\boxed 2", an escaped character
# (so \{ and \} are not braces), or a brace
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\(?:boxed|fbox)[ \t]+([^\s$]+)|\\.|[{}]", re.S)


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` of ``text``, stripped.

    One parser for gold answers of MATH solutions and for ``last_boxed_only`` responses. Rules: braces are matched,
    escaped braces ``\\{ \\}`` are not braces; "last" is the box that closes last, so of nested boxes the outermost
    (``\\boxed{\\boxed{5}}`` gives ``\\boxed{5}``); a box never closed (a response cut at the length limit) is
    skipped in favour of the last complete one before it; ``\\boxed 2`` (MATH's brace-less form) is the token up to
    white space or ``$``; ``\\fbox`` counts as ``\\boxed``. None when there is no complete box.
    """
    stack: list[int] = []  # content start of each open box, -1 for a plain brace
    best: tuple[int, int] | None = None
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group()
        if m.group(1) is not None:  # \boxed 2: complete where it stands (scanning order = closing order)
            best = (m.start(1), m.end(1))
        elif tok == "{":
            stack.append(-1)
        elif tok == "}":
            if stack and (start := stack.pop()) >= 0:
                best = (start, m.start())
        elif len(tok) > 2:  # \boxed{ or \fbox{ (an escaped character is two long)
            stack.append(m.end())
    if best is None:
        return None
    return text[best[0]:best[1]].strip()


def gold_text(ground_truth: str, extraction=EXTRACTIONS) -> str:
    """The text math-verify parses as gold: a bare LaTeX answer is wrapped in ``\\boxed{}``."""
    s = ground_truth.strip()
    if s and "latex" in extraction and not _DELIMITED.search(s):
        s = "\\boxed{" + s + "}"
    return s


def as_text(x) -> str:
    """A response or ground truth as text: None is empty, bytes are UTF-8 (bad bytes replaced), scalars str()."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x).decode("utf-8", errors="replace")
    try:
        return str(x.item() if getattr(x, "ndim", None) == 0 else x)
    except Exception:
        return ""


def as_golds(ground_truth) -> list[str]:
    """One ground truth or several (list, tuple, array) as a list of texts."""
    if isinstance(ground_truth, (list, tuple)) or getattr(ground_truth, "ndim", 0):
        return [as_text(g) for g in list(ground_truth)]
    return [as_text(ground_truth)]


def options(extraction=EXTRACTIONS, boxed_priority=0, float_rounding=6, strict=True, allow_set_relation_comp=False,
            last_boxed_only=False) -> dict:
    """math-verify's options, checked (``ValueError`` on a bad ``extraction``), as :func:`verify_texts` takes them."""
    extraction = (extraction,) if isinstance(extraction, str) else tuple(extraction)
    if not extraction or any(e not in EXTRACTIONS for e in extraction):
        raise ValueError(f"e3.reward: extraction must be a non-empty subset of {EXTRACTIONS}, got {extraction!r}")
    return {"extraction": extraction, "boxed_priority": int(boxed_priority), "float_rounding": int(float_rounding),
            "strict": bool(strict), "allow_set_relation_comp": bool(allow_set_relation_comp),
            "last_boxed_only": bool(last_boxed_only)}


def verify_texts(golds, pred: str, *, extraction=EXTRACTIONS, boxed_priority=0, float_rounding=6, strict=True,
                 allow_set_relation_comp=False, last_boxed_only=False) -> tuple[bool, bool]:
    """``(correct, gold_parsed)`` for raw gold texts and a response, in this process and with no time bound."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    pred = pred[-MAX_RESPONSE_CHARS:]
    if last_boxed_only and (box := last_boxed(pred)) is not None:
        pred = "\\boxed{" + box + "}"

    make = {"latex": lambda: LatexExtractionConfig(boxed_match_priority=boxed_priority), "expr": ExprExtractionConfig}
    cfg = [make[e]() for e in extraction]
    pred_parsed, gold_parsed = None, False
    for g in golds:
        gp = parse(gold_text(g, extraction), cfg, parsing_timeout=None)
        if not gp:
            continue
        gold_parsed = True
        if pred_parsed is None:
            pred_parsed = parse(pred, cfg, parsing_timeout=None)
        if verify(gp, pred_parsed, float_rounding=float_rounding, strict=strict,
                  allow_set_relation_comp=allow_set_relation_comp, timeout_seconds=None):
            return True, True
    return False, gold_parsed


def score_task(task: tuple) -> tuple[bool, bool]:
    """What a pool worker runs: ``task = (golds, pred, options)`` -> ``(correct, gold_parsed)``."""
    golds, pred, opts = task
    ok, gold_ok = verify_texts(golds, pred, **opts)
    return bool(ok), bool(gold_ok)


# (gold, response, verdict): run once before any worker starts, so that math-verify's and sympy's lazily imported
# parts are loaded once (workers start warm) and a broken installation fails loudly.
SELF_CHECK = [("\\frac{1}{2}", "so $x = 0.5$", True), ("[0, 1)", "\\boxed{[0,1)}", True),
              ("\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1 \\\\ 3\\end{pmatrix}}", False),
              ("x^2 - 1", "\\boxed{(x-1)(x+1)}", True), ("\\{1, 2\\}", "The final answer is $\\{2, 1\\}$", True),
              ("10\\%", "\\boxed{10\\%}", True), ("\\sqrt{2}", "\\boxed{1.41421356}", True),
              ("3", "\\boxed{4}", False), ("y = 2x + 1", "\\boxed{y=1+2x}", True)]


def warm_up() -> None:
    """Load math-verify fully and check it on ``SELF_CHECK``; ``SystemExit`` naming the failures if it disagrees."""
    import logging

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    bad = [case for case in SELF_CHECK if verify_texts([case[0]], case[1])[0] != case[2]]
    if bad:
        raise SystemExit(f"e3.reward: math-verify failed its self-check on {bad}")
