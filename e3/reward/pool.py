"""A bounded process pool: each call runs in a worker process and is cut at a deadline; callable from anywhere.

``Pool(target, warm_up).run(task, timeout)`` calls ``target(task)`` (a ``"module:function"`` name) in a worker and
returns ``(status, result)`` with status ``ok`` / ``timeout`` (the worker was killed at the deadline, counted from
the moment the worker has the task) / ``error`` (``target`` raised; the worker is replaced) / ``crash`` (the worker
died). It never raises on a task. Workers are forked (~10 ms) from a *zygote*: one process started with
``subprocess`` that imported the target and ran ``warm_up`` once, so a fresh worker starts warm. The pool starts on
first use, grows on demand to ``max_workers``, is reused, forgotten in forked children and shut down at exit; a
call first waits for a free worker (bounded: every running call is). Each worker's address space is capped at
``memory_mb`` (0 = no cap); workers die with the zygote (``PR_SET_PDEATHSIG``), the zygote with its caller (EOF on
its socket).

Killing is pid-reuse safe: the zygote, the parent that reaps the workers, opens a pidfd for each new worker before
it can be reaped and hands it to the caller, which kills with ``signal.pidfd_send_signal`` (a pidfd names one
process, never a later one with the same number). Where pidfds do not exist (not Linux >= 5.3), the caller asks
the zygote to kill, and the zygote kills only children it has not reaped yet.

Why hand-written (the full comparison with pebble 5.2.3, measured by ``bench/reward_pool.py``, is in
docs/reward.md and BENCHMARKS.md): no ``multiprocessing``-based pool can start workers from a daemonic caller,
pebble's forkserver variant kills timed-out workers by pid number (unsafe under pid reuse) and re-imports the
caller's ``__main__``, and its fork variant makes every worker a cold fork of the caller. One zygote pool serves
every caller with warm workers and a SIGKILL at the deadline.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

STARTUP_TIMEOUT = 120.0  # seconds the zygote may take to import and warm up
USE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
_MSG = struct.Struct("cq")  # requests to the zygote: b"F" (fork; two pipe fds attached) or b"K" + pid (kill)
_PID = struct.Struct("q")  # replies: the new worker's pid (<= 0: fork failed), its pidfd attached when there is one


def _resolve(name: str):
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _recv_exactly(sock: socket.socket, size: int, maxfds: int) -> tuple[bytes, list[int]]:
    """``size`` bytes and the fds sent with them (fixed-size messages on a stream socket)."""
    buf, fds = b"", []
    while len(buf) < size:
        msg, got, _, _ = socket.recv_fds(sock, size - len(buf), maxfds)
        if not msg:
            for fd in got:
                os.close(fd)
            raise EOFError("the other end of the zygote socket closed")
        buf, fds = buf + msg, fds + list(got)
    return buf, fds


# --------------------------------------------------------------------------------------- worker and zygote side
def _worker_loop(rfd: int, wfd: int, memory_mb: int, zygote_pid: int, target) -> None:
    """A forked worker: receive a task, answer ``(status, result)``; ends on EOF."""
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
            pass  # platforms without RLIMIT_AS: the deadline still bounds the call
    rx, tx = Connection(rfd, writable=False), Connection(wfd, readable=False)
    while True:
        try:
            task = rx.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", target(task))
        except BaseException:  # MemoryError, RecursionError, anything the target lets through
            reply = ("error", None)
        try:
            tx.send(reply)
        except OSError:
            return


def _zygote_main(sock_fd: int, memory_mb: int, target_name: str, warm_up_name: str, use_pidfd: int) -> None:
    """The zygote: warm up, then serve fork and kill requests; the only process that reaps the workers."""
    import ctypes  # noqa: F401 - loaded once here for the workers' prctl
    import gc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business; it closes us at exit
    sock = socket.socket(fileno=sock_fd)
    target = _resolve(target_name)
    if warm_up_name:
        _resolve(warm_up_name)()
    gc.collect()
    gc.freeze()  # forked workers then share these pages instead of copying them on the first collection
    zygote_pid = os.getpid()
    children: set[int] = set()  # forked and not reaped yet: their pids cannot have been reused

    def reap() -> None:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.discard(pid)

    sock.sendall(_PID.pack(zygote_pid))
    sock.settimeout(1.0)  # wake up now and then to reap
    while True:
        reap()
        try:
            msg, fds = _recv_exactly(sock, _MSG.size, 2)
        except (TimeoutError, socket.timeout):
            continue
        except (EOFError, OSError):
            return  # the caller closed the socket
        kind, arg = _MSG.unpack(msg)
        if kind == b"K":
            if arg in children:  # not reaped: the number is still this worker's
                try:
                    os.kill(arg, signal.SIGKILL)
                except OSError:
                    pass
            continue
        pid, pidfd = -1, None
        if kind == b"F" and len(fds) == 2:
            try:
                pid = os.fork()
            except OSError:
                pid = -1
            if pid == 0:
                code = 0
                try:
                    sock.close()
                    _worker_loop(fds[0], fds[1], memory_mb, zygote_pid, target)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            if pid > 0:
                children.add(pid)
                if use_pidfd:
                    try:
                        pidfd = os.pidfd_open(pid)  # before any reap: it names this worker
                    except OSError:
                        pidfd = None
        for fd in fds:
            os.close(fd)
        try:
            socket.send_fds(sock, [_PID.pack(pid)], [pidfd] if pidfd is not None else [])
        except OSError:
            return
        finally:
            if pidfd is not None:
                os.close(pidfd)


# --------------------------------------------------------------------------------------- caller side
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from e3.reward.pool import _zygote_main; "
         "_zygote_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker:
    def __init__(self, pid: int, pidfd: int | None, tx_fd: int, rx_fd: int, zygote: "_Zygote"):
        self.pid, self.pidfd, self.zygote = pid, pidfd, zygote
        self.tx, self.rx = Connection(tx_fd, readable=False), Connection(rx_fd, writable=False)

    def kill(self) -> None:
        """SIGKILL this worker and no other process, whatever happened to it meanwhile."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:  # ProcessLookupError: it has already exited
                pass
        else:
            self.zygote.kill(self.pid)

    def close(self, kill: bool) -> None:
        if kill:
            self.kill()
        for conn in (self.tx, self.rx):
            try:
                conn.close()
            except OSError:
                pass
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _Zygote:
    def __init__(self, memory_mb: int, target: str, warm_up: str):
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PKG_PARENT, str(theirs.fileno()), str(memory_mb), target, warm_up,
                 str(int(USE_PIDFD))], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock, self.ready, self.lock = ours, False, threading.Lock()

    def _read_pid(self, timeout: float) -> tuple[int, int | None]:
        self.sock.settimeout(timeout)
        msg, fds = _recv_exactly(self.sock, _PID.size, 1)
        return _PID.unpack(msg)[0], (fds[0] if fds else None)

    def fork_worker(self) -> _Worker:
        with self.lock:
            if not self.ready:
                self._read_pid(STARTUP_TIMEOUT)
                self.ready = True
            r1, w1 = os.pipe()  # caller -> worker
            r2, w2 = os.pipe()  # worker -> caller
            try:
                socket.send_fds(self.sock, [_MSG.pack(b"F", 0)], [r1, w2])
                pid, pidfd = self._read_pid(30.0)
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
            raise OSError("the zygote could not fork")
        return _Worker(pid, pidfd, w1, r2, self)

    def kill(self, pid: int) -> None:
        """Ask the zygote to SIGKILL its worker ``pid`` (it does so only if it has not reaped it)."""
        with self.lock:
            try:
                self.sock.sendall(_MSG.pack(b"K", pid))
            except OSError:
                pass  # the zygote is gone: its workers die with it

    def close(self) -> None:
        self.sock.close()  # EOF: the zygote exits
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """Workers forked from one zygote; ``run(task, timeout)`` from any number of threads."""

    def __init__(self, target: str, warm_up: str = "", memory_mb: int = 0, max_workers: int = 1):
        self.target, self.warm_up, self.memory_mb = target, warm_up, memory_mb
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.live: set[_Worker] = set()
        self.slots = 0  # live workers + forks in progress
        self.max_workers = max_workers
        self.closed = False
        self.zygote: _Zygote | None = None
        self.zlock = threading.Lock()
        self.stats = {"workers_started": 0, "zygotes_started": 0}

    def _fork(self) -> _Worker:
        with self.zlock:
            for attempt in range(2):
                if self.zygote is None:
                    self.zygote = _Zygote(self.memory_mb, self.target, self.warm_up)
                    self.stats["zygotes_started"] += 1
                try:
                    return self.zygote.fork_worker()
                except (OSError, EOFError) as e:  # a dead or stuck zygote: start a fresh one once
                    self.zygote.proc.kill()
                    self.zygote.close()
                    self.zygote = None
                    if attempt:
                        raise RuntimeError("e3.reward.pool: could not start a worker; the reason is on stderr "
                                           "above") from e

    def acquire(self) -> _Worker:
        with self.cond:
            while True:
                if self.closed:
                    raise RuntimeError("e3.reward.pool: the pool is shut down (interpreter exiting)")
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

    def run(self, task, timeout: float) -> tuple[str, object]:
        """``target(task)`` on a worker within ``timeout`` seconds: ``(status, result)``, result None unless ok."""
        for _ in range(2):  # a second try only when the worker had died while idle
            w = self.acquire()
            try:
                w.tx.send(task)
            except OSError:
                self.discard(w)
                continue
            try:
                if not w.rx.poll(timeout):
                    self.discard(w)
                    return "timeout", None
                status, result = w.rx.recv()
            except (EOFError, OSError):
                self.discard(w)
                return "crash", None
            if status == "ok":
                self.release(w)
            else:
                self.discard(w)  # an exception may have left it in a bad state: a fresh fork costs ~10 ms
            return status, result
        return "crash", None

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


_POOLS: dict[tuple, Pool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(target: str, warm_up: str = "", memory_mb: int = 0, workers: int | None = None) -> Pool:
    """The process-wide pool for ``(target, warm_up, memory_mb)``, grown to at least ``workers`` (default: cores)."""
    key = (target, warm_up, memory_mb)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = Pool(target, warm_up, memory_mb)
        with pool.cond:
            pool.max_workers = max(pool.max_workers, int(workers or os.cpu_count() or 1))
        return pool


def existing_pools() -> list[Pool]:
    with _POOLS_LOCK:
        return list(_POOLS.values())


def shutdown() -> None:
    """Stop every pool's zygote and workers (also run at exit); a later call starts new pools."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown()


def _forget_in_child() -> None:
    global _POOLS_LOCK
    for pool in _POOLS.values():
        pool.forget()
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_forget_in_child)
