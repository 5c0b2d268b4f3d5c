"""e3.reward.pool: a crashed worker is never killed by a pid number that may have been reused.

The pool kills a worker it gives up on (deadline passed, or it died mid-call) through a pidfd, or, where pidfds do
not exist, by asking the zygote that reaps it. Both are checked twice: no ``os.kill`` of a worker's pid from the
caller, and with a real reuse — the crashed worker is reaped, a new process is made to get its pid (by writing
``/proc/sys/kernel/ns_last_pid``, root only: skipped elsewhere), and only then does the pool discard the worker; the
new process must survive.
"""

import os
import subprocess
import threading
import time

import pytest

import e3.reward as reward
import e3.reward.pool as reward_pool
from e3.reward.score import VerifyOptions

SLOW = "\\boxed{2^{2^{2^{2^{2^{2}}}}}}"
TASK = ([str(5)], SLOW, VerifyOptions())


def _reaped(pid, wait=5.0):
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.01)
    return False


def _process_with_pid(pid, tries=50):
    """A ``sleep 60`` that has pid ``pid`` (None if this machine does not let us choose pids)."""
    for _ in range(tries):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.fixture(params=[True, False], ids=["pidfd", "zygote-kills"])
def pool(request, monkeypatch):
    if request.param and not reward_pool.USE_PIDFD:
        pytest.skip("no pidfd on this platform")
    monkeypatch.setattr(reward_pool, "USE_PIDFD", request.param)
    p = reward_pool.Pool(reward.TARGET, reward.WARM_UP, 0, max_workers=2)
    assert p.run(([str(1)], "\\boxed{1}", VerifyOptions()), 30.0) == ("ok", (True, True))
    yield p
    p.shutdown()


def _busy_worker(pool):
    while True:
        with pool.cond:
            busy = [w for w in pool.live if w not in pool.idle]
        if busy:
            return busy[0]
        time.sleep(0.01)


def test_timeouts_and_crashes_never_signal_a_pid_from_the_caller(pool, monkeypatch):
    killed = []
    real_kill = os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: (killed.append(pid), real_kill(pid, sig)))
    assert pool.run(TASK, 0.5) == ("timeout", None)  # killed at the deadline
    out = {}
    t = threading.Thread(target=lambda: out.update(r=pool.run(TASK, 30.0)))
    t.start()
    w = _busy_worker(pool)
    real_kill(w.pid, 9)  # crashes mid-call (as the OOM killer would)
    t.join(30)
    assert out["r"] == ("crash", None)
    assert killed == []  # the pool itself never sent a signal by number
    assert pool.run(([str(7)], "\\boxed{7}", VerifyOptions()), 30.0) == ("ok", (True, True))


def test_crashed_worker_whose_pid_is_reused_is_not_killed(pool, monkeypatch):
    out, victims = {}, []
    real_discard = pool.discard

    def discard_after_reuse(w):  # the worst moment: the crashed worker is reaped and its number taken
        assert _reaped(w.pid), "the zygote did not reap the crashed worker"
        victims.append(_process_with_pid(w.pid))
        real_discard(w)

    monkeypatch.setattr(pool, "discard", discard_after_reuse)
    t = threading.Thread(target=lambda: out.update(r=pool.run(TASK, 30.0)))
    t.start()
    w = _busy_worker(pool)
    os.kill(w.pid, 9)
    t.join(30)
    assert out["r"] == ("crash", None)
    victim = victims[0]
    if victim is None:
        pytest.skip("cannot give a new process a chosen pid here (needs a writable /proc/sys/kernel/ns_last_pid)")
    try:
        time.sleep(0.3)  # the zygote-kill path is asynchronous: give it time to (wrongly) act
        assert victim.poll() is None, "the process that reused the crashed worker's pid was killed"
    finally:
        victim.kill()
        victim.wait()
