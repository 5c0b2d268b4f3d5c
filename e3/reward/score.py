"""Math answer scoring on math-verify 0.9.0, pure: gold text, the last ``\\boxed{}``, the math-verify call.

The verdict of the reward (``e3.reward.compute_score``): ``math_verify.verify(gold, pred)`` holds, where

- ``pred`` is math-verify's parse of the response (its last ``MAX_RESPONSE_CHARS`` characters: final answers come
  last): its last ``\\boxed{}`` first (``boxed_priority=0``), else its other LaTeX / expression / "final answer is"
  patterns, rightmost first. Like math-verify, several ``\\boxed{}`` in one formula or paragraph are read together
  as a set of answers (``\\boxed{1}, \\boxed{2}`` = {1, 2}), so a response that boxes 3 and then 4 in one paragraph
  scores 0 against 4; the option ``last_boxed`` parses only :func:`last_boxed` instead (then multi-answer
  responses score 0);
- ``gold`` is the ground truth parsed the same way; a bare ground truth (no ``\\boxed``, unescaped ``$``, ``\\(``
  or ``\\[``) is wrapped in ``\\boxed{}`` first (:func:`gold_text`). Several ground truths: any one verifying wins;
- ``verify(gold, pred)`` is called gold first: it is asymmetric (assignments, set vs relation); the authors' code
  has them reversed.

Nothing here bounds time: math-verify's own ``signal.alarm`` timeout refuses to run off the main thread, so it is
called with ``parsing_timeout=None, timeout_seconds=None`` and the caller bounds the call (``e3.reward.pool``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

MAX_RESPONSE_CHARS = 20_000
EXTRACTIONS = ("latex", "expr")

_DELIMITED = re.compile(r"\\boxed|(?<!\\)\$|\\\(|\\\[")
# an opening \boxed{ / \fbox{ (spaces allowed before the brace), MATH's brace-less "\boxed 2", an escaped character
# (so \{ and \} are not braces), or a brace
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\(?:boxed|fbox)[ \t]+([^\s$]+)|\\.|[{}]", re.S)


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` of ``text``, stripped.

    One parser for gold answers of MATH solutions and for the responses of the option ``last_boxed``. Rules: braces
    are matched, escaped braces ``\\{ \\}`` are not braces; "last" is the box that closes last, so of nested boxes
    the outermost (``\\boxed{\\boxed{5}}`` gives ``\\boxed{5}``); a box never closed (a response cut at the length
    limit) is skipped in favour of the last complete one before it; ``\\boxed 2`` (MATH's brace-less form) is the
    token up to white space or ``$``; ``\\fbox`` counts as ``\\boxed``. None when there is no complete box.
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


@dataclass(frozen=True)
class VerifyOptions:
    """How a response is verified: math-verify's options and the last-box rule. Their names are the keyword arguments
    of ``e3.reward.compute_score`` / ``score_batch``; a pool worker receives them with each task. A bad
    ``extraction`` raises ``ValueError``."""

    extraction: tuple[str, ...] = EXTRACTIONS
    """What math-verify extracts, any of ``latex`` (its LatexExtractionConfig) and ``expr`` (ExprExtractionConfig);
    a string is one of them."""
    boxed_priority: int = 0
    """LatexExtractionConfig's ``boxed_match_priority`` (0: ``\\boxed{}`` before the other patterns)."""
    float_rounding: int = 6
    """``verify``'s ``float_rounding``: decimals numbers are compared to."""
    strict: bool = True
    """``verify``'s ``strict`` (False: e.g. variables may differ in name)."""
    allow_set_relation_comp: bool = False
    """``verify``'s ``allow_set_relation_comp`` (a set may verify against a relation)."""
    last_boxed: bool = False
    """Parse only the last complete ``\\boxed{...}`` of the response (:func:`last_boxed`)."""

    def __post_init__(self):
        extraction = (self.extraction,) if isinstance(self.extraction, str) else tuple(self.extraction)
        if not extraction or any(e not in EXTRACTIONS for e in extraction):
            raise ValueError(f"e3.reward: extraction must be a non-empty subset of {EXTRACTIONS}, got {extraction!r}")
        object.__setattr__(self, "extraction", extraction)
        for f in dataclasses.fields(self):  # the others are ints and bools: made the type of their defaults
            if f.name != "extraction":
                object.__setattr__(self, f.name, type(f.default)(getattr(self, f.name)))

    @classmethod
    def among(cls, kwargs: dict) -> "VerifyOptions":
        """The options among keyword arguments that carry others too (verl passes e.g. ``reward_router_address``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})


def verify_texts(golds, pred: str, opts: VerifyOptions | None = None) -> tuple[bool, bool]:
    """``(correct, gold_parsed)`` for raw gold texts and a response, in this process and with no time bound."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    opts = VerifyOptions() if opts is None else opts
    pred = pred[-MAX_RESPONSE_CHARS:]
    if opts.last_boxed and (box := last_boxed(pred)) is not None:
        pred = "\\boxed{" + box + "}"

    make = {"latex": lambda: LatexExtractionConfig(boxed_match_priority=opts.boxed_priority),
            "expr": ExprExtractionConfig}
    cfg = [make[e]() for e in opts.extraction]
    pred_parsed, gold_parsed = None, False
    for g in golds:
        gp = parse(gold_text(g, opts.extraction), cfg, parsing_timeout=None)
        if not gp:
            continue
        gold_parsed = True
        if pred_parsed is None:
            pred_parsed = parse(pred, cfg, parsing_timeout=None)
        if verify(gp, pred_parsed, float_rounding=opts.float_rounding, strict=opts.strict,
                  allow_set_relation_comp=opts.allow_set_relation_comp, timeout_seconds=None):
            return True, True
    return False, gold_parsed


def score_task(task: tuple) -> tuple[bool, bool]:
    """What a pool worker runs: ``task = (golds, pred, VerifyOptions)`` -> ``(correct, gold_parsed)``."""
    golds, pred, opts = task
    ok, gold_ok = verify_texts(golds, pred, opts)
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
