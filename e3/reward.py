"""Math answer reward on math-verify 0.9.0, bounded in time, with verl's ``custom_reward_function`` signature.

DESIGN.md 2.6. ``score = 1.0`` iff ``math_verify.verify(gold, pred)`` holds (``acc`` = 1), else 0.0:

- ``pred`` is math-verify's parse of the response: its last ``\\boxed{}`` first (``boxed_priority=0``), else its other
  LaTeX / expression / "final answer is" patterns, rightmost first. Like math-verify, several ``\\boxed{}`` in one
  formula or paragraph are read together as a set of answers (``\\boxed{1}, \\boxed{2}`` = {1, 2}), so a response
  that boxes 3 and then 4 in one paragraph scores 0 against 4; ``last_boxed=True`` parses only the last complete
  ``\\boxed{...}`` instead (then multi-answer responses score 0);
- ``gold`` is the ground truth parsed the same way; a bare ground truth (no ``\\boxed``, unescaped ``$``, ``\\(``
  or ``\\[``) is wrapped in ``\\boxed{}`` first. A list/tuple of ground truths scores 1 if any of them verifies;
- ``verify(gold, pred)`` is called gold first: it is asymmetric (assignments, set vs relation). The seed code had
  them reversed.

Time bound. math-verify's own ``signal.alarm`` timeout refuses to run off the main thread, and without it some
inputs take minutes and GBs (``\\boxed{2^{2^{2^{2^{2^{2}}}}}}`` against 5). So parse/verify run with
``parsing_timeout=None, timeout_seconds=None`` in worker processes, each call with a deadline of ``timeout`` (default
``DEFAULT_TIMEOUT`` = 5 s, from the moment its worker has the task); a worker past it is killed (SIGKILL). Workers
are forked (~10 ms) from a *zygote*: one process started with ``subprocess`` (no re-import of ``__main__``; works
from any thread, Ray actor or daemonic process) that imported and warmed up math-verify once. A worker that timed
out, raised or died is replaced; the call scores 0 and is counted in ``reward_stats()``; it never raises on data.
Cheap pre-checks: only the last ``MAX_RESPONSE_CHARS`` (20,000) characters of a response are parsed (final answers
come last); each worker's address space is capped at ``$E3_REWARD_WORKER_MEMORY_MB`` (default 4096; 0 = no cap).
The pool starts on first use, grows on demand to ``workers`` (default ``os.cpu_count()``), is reused, forgotten in
forked children and shut down at exit. A call first waits for a free worker (bounded: every running call is).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

DEFAULT_TIMEOUT = 5.0
MAX_RESPONSE_CHARS = 20_000
STARTUP_TIMEOUT = 120.0  # seconds the zygote may take to import and warm up math-verify
EXTRACTIONS = ("latex", "expr")

_DELIMITED = re.compile(r"\\boxed|(?<!\\)\$|\\\(|\\\[")
_BOX_TOKENS = re.compile(r"\\boxed\s*\{|\\.|[{}]", re.S)
_STAT_KEYS = ("calls", "correct", "timeouts", "errors", "crashes", "gold_unparsed", "workers_started",
              "zygotes_started")


# --------------------------------------------------------------------------------------- scoring (in a worker)
def gold_text(ground_truth: str, extraction=EXTRACTIONS) -> str:
    """The text math-verify parses as gold: a bare LaTeX answer is wrapped in ``\\boxed{}``."""
    s = ground_truth.strip()
    if s and "latex" in extraction and not _DELIMITED.search(s):
        s = "\\boxed{" + s + "}"
    return s


def find_last_boxed(text: str) -> str | None:
    """The last complete ``\\boxed{...}`` of ``text`` (the outermost if nested; escaped braces skipped), or None."""
    stack, best = [], None
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group()
        if tok == "{":
            stack.append(-1)
        elif tok == "}":
            if stack and (start := stack.pop()) >= 0:
                best = (start, m.end())
        elif tok.startswith("\\boxed"):
            stack.append(m.start())
    return text[best[0]:best[1]] if best else None


def verify_texts(golds, pred: str, *, extraction=EXTRACTIONS, boxed_priority=0, float_rounding=6, strict=True,
                 allow_set_relation_comp=False, last_boxed_only=False) -> tuple[bool, bool]:
    """``(correct, gold_parsed)`` for raw gold texts and a response, in this process and with no time bound."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if last_boxed_only:
        pred = find_last_boxed(pred) or pred

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


# (gold, response, verdict): run by the zygote before it forks anyone, so that math-verify's and sympy's lazily
# imported parts are loaded once (forked workers start warm) and a broken installation fails loudly.
_SELF_CHECK = [("\\frac{1}{2}", "so $x = 0.5$", True), ("[0, 1)", "\\boxed{[0,1)}", True),
               ("\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1 \\\\ 3\\end{pmatrix}}", False),
               ("x^2 - 1", "\\boxed{(x-1)(x+1)}", True), ("\\{1, 2\\}", "The final answer is $\\{2, 1\\}$", True),
               ("10\\%", "\\boxed{10\\%}", True), ("\\sqrt{2}", "\\boxed{1.41421356}", True),
               ("3", "\\boxed{4}", False), ("y = 2x + 1", "\\boxed{y=1+2x}", True)]


def _worker_loop(rfd: int, wfd: int, memory_mb: int, zygote_pid: int) -> None:
    """A forked worker: receive ``(golds, pred, options)``, answer ``(status, ok, gold_ok)``; ends on EOF."""
    if sys.platform.startswith("linux"):  # die with the zygote, which dies with the caller (EOF on its socket)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != zygote_pid:
        return
    if memory_mb > 0:
        try:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            limit = memory_mb << 20 if hard < 0 else min(memory_mb << 20, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass  # platforms without RLIMIT_AS: the timeout still bounds the call
    rx, tx = Connection(rfd, writable=False), Connection(wfd, readable=False)
    while True:
        try:
            golds, pred, options = rx.recv()
        except (EOFError, OSError):
            return
        try:
            ok, gold_ok = verify_texts(golds, pred, **options)
            reply = ("ok", bool(ok), bool(gold_ok))
        except BaseException:  # MemoryError, RecursionError, anything math-verify lets through
            reply = ("error", False, False)
        try:
            tx.send(reply)
        except OSError:
            return


def _zygote_main(sock_fd: int, memory_mb: int) -> None:
    """The zygote: warm up, then fork one worker per request (two pipe fds in, the worker's pid out)."""
    import ctypes  # noqa: F401 - loaded once here for the workers' prctl
    import gc
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it closes us at exit
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sock = socket.socket(fileno=sock_fd)
    bad = [case for case in _SELF_CHECK if verify_texts([case[0]], case[1])[0] != case[2]]
    if bad:
        raise SystemExit(f"e3.reward: math-verify failed its self-check on {bad}")
    gc.collect()
    gc.freeze()  # forked workers then share these pages instead of copying them on the first collection
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our workers
    zygote_pid = os.getpid()
    sock.sendall(struct.pack("q", zygote_pid))
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1, 2)
        except OSError:
            return
        if not msg:
            return  # the parent closed the socket
        pid = -1
        if len(fds) == 2:
            try:
                pid = os.fork()
            except OSError:
                pid = -1
            if pid == 0:
                code = 0
                try:
                    sock.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    _worker_loop(fds[0], fds[1], memory_mb, zygote_pid)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.sendall(struct.pack("q", pid))


# --------------------------------------------------------------------------------------- the pool (caller side)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from e3.reward import _zygote_main; "
         "_zygote_main(int(sys.argv[2]), int(sys.argv[3]))")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Worker:
    def __init__(self, pid: int, tx_fd: int, rx_fd: int):
        self.pid = pid
        self.tx, self.rx = Connection(tx_fd, readable=False), Connection(rx_fd, writable=False)

    def close(self, kill: bool) -> None:
        for conn in (self.tx, self.rx):
            try:
                conn.close()
            except OSError:
                pass
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass


class _Zygote:
    def __init__(self, memory_mb: int):
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PKG_PARENT, str(theirs.fileno()), str(memory_mb)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock, self.ready = ours, False

    def _read_pid(self, timeout: float) -> int:
        self.sock.settimeout(timeout)
        buf = b""
        while len(buf) < 8:
            chunk = self.sock.recv(8 - len(buf))
            if not chunk:
                raise EOFError("the reward zygote exited")
            buf += chunk
        return struct.unpack("q", buf)[0]

    def fork_worker(self) -> _Worker:
        if not self.ready:
            self._read_pid(STARTUP_TIMEOUT)
            self.ready = True
        r1, w1 = os.pipe()  # caller -> worker
        r2, w2 = os.pipe()  # worker -> caller
        try:
            socket.send_fds(self.sock, [b"F"], [r1, w2])
            pid = self._read_pid(30.0)
        except BaseException:
            os.close(w1)
            os.close(r2)
            raise
        finally:
            os.close(r1)
            os.close(w2)
        if pid <= 0:
            os.close(w1)
            os.close(r2)
            raise OSError("the reward zygote could not fork")
        return _Worker(pid, w1, r2)

    def close(self) -> None:
        self.sock.close()  # EOF: the zygote exits
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Pool:
    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.live: set[_Worker] = set()
        self.slots = 0  # live workers + forks in progress
        self.max_workers = 1
        self.closed = False
        self.zygote: _Zygote | None = None
        self.zlock = threading.Lock()
        self.stats = {**dict.fromkeys(_STAT_KEYS, 0), "slowest_s": 0.0}

    def _fork(self) -> _Worker:
        with self.zlock:
            for attempt in range(2):
                if self.zygote is None:
                    self.zygote = _Zygote(self.memory_mb)
                    self.stats["zygotes_started"] += 1
                try:
                    return self.zygote.fork_worker()
                except (OSError, EOFError) as e:  # a dead or stuck zygote: start a fresh one once
                    self.zygote.proc.kill()
                    self.zygote.close()
                    self.zygote = None
                    if attempt:
                        raise RuntimeError("e3.reward: could not start a math-verify worker; the reason is on "
                                           "stderr above") from e

    def acquire(self) -> _Worker:
        with self.cond:
            while True:
                if self.closed:
                    raise RuntimeError("e3.reward: the worker pool is shut down (interpreter exiting)")
                if self.idle:
                    return self.idle.pop()
                if self.slots < self.max_workers:
                    self.slots += 1
                    break
                self.cond.wait()
        try:
            w = self._fork()
        except BaseException:
            with self.cond:
                self.slots -= 1
                self.cond.notify()
            raise
        with self.cond:
            self.live.add(w)
            self.stats["workers_started"] += 1
        return w

    def release(self, w: _Worker) -> None:
        with self.cond:
            self.idle.append(w)
            self.cond.notify()

    def discard(self, w: _Worker) -> None:
        w.close(kill=True)
        with self.cond:
            self.live.discard(w)
            self.slots -= 1
            self.cond.notify()

    def shutdown(self) -> None:
        with self.cond:
            self.closed = True
            busy = self.live - set(self.idle)
            workers, self.idle = list(self.live), []
            self.live.clear()
            self.cond.notify_all()
        for w in workers:
            w.close(kill=w in busy)  # idle ones exit on EOF
        with self.zlock:
            if self.zygote is not None:
                self.zygote.close()
                self.zygote = None

    def forget(self) -> None:
        """In a forked child: drop our copies of the fds; the processes belong to the parent."""
        for w in self.live:
            w.close(kill=False)
        if self.zygote is not None:
            self.zygote.sock.close()
            self.zygote.proc.returncode = 0  # not our child: Popen.__del__ must not wait for it


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int | None) -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(int(os.environ.get("E3_REWARD_WORKER_MEMORY_MB", "4096")))
        with _POOL.cond:
            _POOL.max_workers = max(_POOL.max_workers, int(workers or os.cpu_count() or 1))
        return _POOL


def _forget_pool_in_child() -> None:
    global _POOL, _POOL_LOCK
    if _POOL is not None:
        _POOL.forget()
    _POOL, _POOL_LOCK = None, threading.Lock()


def shutdown() -> None:
    """Stop the zygote and all workers (also run at exit); a later call starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_forget_pool_in_child)


def reward_stats() -> dict:
    """Counters of this process since start or ``reset_reward_stats()``: ``calls``, ``correct``, ``timeouts``
    (worker killed at the deadline), ``errors`` (exception inside math-verify), ``crashes`` (worker died), all three
    scored 0; ``gold_unparsed`` (math-verify found nothing in the ground truth), ``workers_started``,
    ``zygotes_started``, ``slowest_s`` (longest call, including any wait for a worker)."""
    pool = _POOL
    if pool is None:
        return {**dict.fromkeys(_STAT_KEYS, 0), "slowest_s": 0.0}
    with pool.cond:
        return dict(pool.stats)


def reset_reward_stats() -> None:
    pool = _POOL
    if pool is not None:
        with pool.cond:
            pool.stats = {**dict.fromkeys(_STAT_KEYS, 0), "slowest_s": 0.0}


# --------------------------------------------------------------------------------------- public API
def _text(x) -> str:
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


def _golds(ground_truth) -> list[str]:
    if isinstance(ground_truth, (list, tuple)) or getattr(ground_truth, "ndim", 0):
        return [_text(g) for g in list(ground_truth)]
    return [_text(ground_truth)]


def _options(timeout, extraction=EXTRACTIONS, boxed_priority=0, float_rounding=6, strict=True,
             allow_set_relation_comp=False, last_boxed=False) -> dict:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"e3.reward: timeout must be a number of seconds > 0, got {timeout!r}")
    extraction = (extraction,) if isinstance(extraction, str) else tuple(extraction)
    if not extraction or any(e not in EXTRACTIONS for e in extraction):
        raise ValueError(f"e3.reward: extraction must be a non-empty subset of {EXTRACTIONS}, got {extraction!r}")
    return {"extraction": extraction, "boxed_priority": int(boxed_priority), "float_rounding": int(float_rounding),
            "strict": bool(strict), "allow_set_relation_comp": bool(allow_set_relation_comp),
            "last_boxed_only": bool(last_boxed)}


def _run(pool: _Pool, task: tuple, timeout: float) -> tuple[str, bool, bool]:
    """One task on one worker: ``(status, ok, gold_ok)`` with status ok / timeout / error / crash."""
    for _ in range(2):  # a second try only when the worker had died while idle
        w = pool.acquire()
        try:
            w.tx.send(task)
        except OSError:
            pool.discard(w)
            continue
        try:
            if not w.rx.poll(timeout):
                pool.discard(w)
                return "timeout", False, True
            status, ok, gold_ok = w.rx.recv()
        except (EOFError, OSError):
            pool.discard(w)
            return "crash", False, True
        if status == "ok":
            pool.release(w)
        else:
            pool.discard(w)  # an exception may have left it in a bad state: a fresh fork costs ~10 ms
        return status, ok, gold_ok
    return "crash", False, True


def _score(pool: _Pool, golds: list[str], pred: str, options: dict, timeout: float) -> dict:
    start = time.monotonic()
    status, ok, gold_ok = _run(pool, (golds, pred[-MAX_RESPONSE_CHARS:], options), timeout)
    elapsed = time.monotonic() - start
    ok = bool(ok) and status == "ok"
    with pool.cond:
        s = pool.stats
        s["calls"] += 1
        s["correct"] += ok
        s["timeouts"] += status == "timeout"
        s["errors"] += status == "error"
        s["crashes"] += status == "crash"
        s["gold_unparsed"] += status == "ok" and not gold_ok
        s["slowest_s"] = max(s["slowest_s"], elapsed)
    return {"score": 1.0 if ok else 0.0, "acc": int(ok), "timeout": int(status == "timeout"),
            "error": int(status in ("error", "crash"))}


def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *,
                  timeout: float = DEFAULT_TIMEOUT, workers: int | None = None, extraction=EXTRACTIONS,
                  boxed_priority: int = 0, float_rounding: int = 6, strict: bool = True,
                  allow_set_relation_comp: bool = False, last_boxed: bool = False, **kwargs) -> dict:
    """verl's ``reward.custom_reward_function``: ``{"score": 1.0 | 0.0, "acc": 1 | 0}``; never raises on data.

    ``timeout`` / ``workers`` bound the call and the pool (config ``reward.timeout`` / ``reward.workers``, or
    verl's ``reward_kwargs``); the others are math-verify's options (``extraction`` in {"latex", "expr"}, the
    priority of ``\\boxed{}``, ``float_rounding``, ``strict``, ``allow_set_relation_comp``) and ``last_boxed``
    (parse only the last complete ``\\boxed{...}``; see the module docstring). Other keyword
    arguments verl passes (e.g. ``reward_router_address``) are ignored, and so are ``data_source``/``extra_info``.
    Bad options raise ``ValueError``.
    """
    options = _options(timeout, extraction, boxed_priority, float_rounding, strict, allow_set_relation_comp,
                       last_boxed)
    result = _score(_pool(workers), _golds(ground_truth), _text(solution_str), options, float(timeout))
    return {"score": result["score"], "acc": result["acc"]}


def _item(i: int, item) -> tuple[str, list[str]]:
    if isinstance(item, dict):
        for field in ("solution_str", "ground_truth"):
            if field not in item:
                raise ValueError(f"e3.reward.score_batch: item {i}: missing field {field!r}")
        return _text(item["solution_str"]), _golds(item["ground_truth"])
    if isinstance(item, (tuple, list)) and 3 <= len(item) <= 4:
        return _text(item[1]), _golds(item[2])
    raise ValueError(f"e3.reward.score_batch: item {i}: expected a dict with 'solution_str' and 'ground_truth' or "
                     f"a tuple (data_source, solution_str, ground_truth[, extra_info]), got {type(item).__name__}")


def score_batch(items, timeout: float = DEFAULT_TIMEOUT, workers: int | None = None, **options) -> list[dict]:
    """Score ``(data_source, solution_str, ground_truth[, extra_info])`` items (dicts or tuples) in parallel.

    ``workers`` processes (default: all cores), each item bounded by ``timeout``, order preserved. Each result is
    ``{"score", "acc", "timeout": 0|1, "error": 0|1}``. A malformed item raises ``ValueError`` naming it before any
    work starts; ``options`` are ``compute_score``'s math-verify options.
    """
    opts = _options(timeout, **options)
    work = [_item(i, it) for i, it in enumerate(items)]
    if not work:
        return []
    n = max(1, int(workers or os.cpu_count() or 1))
    pool = _pool(n)
    with ThreadPoolExecutor(max_workers=min(n, len(work)), thread_name_prefix="e3-reward") as ex:
        return list(ex.map(lambda w: _score(pool, w[1], w[0], opts, float(timeout)), work))
