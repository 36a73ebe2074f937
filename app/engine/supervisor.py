"""Runs a command as a process tree that cannot outlive the process that started it.

Why: vLLM's API server starts an engine core and its workers (gigabytes of RAM; on a GPU, the memory a restarted
server needs). When the API server was SIGKILLed, or fvsteer itself was, they were left running, parented to init.
``python -m app.engine.supervisor GRACE -- COMMAND...`` starts COMMAND in the supervisor's own process group and
stays its parent; it is a child subreaper, so whatever COMMAND's processes leave behind is re-parented to it, not to
init. It ends the whole tree, SIGTERM then SIGKILL after GRACE seconds, when:

- COMMAND's first process exits (the engine it started must not run on without it);
- the supervisor gets SIGTERM or SIGINT (fvsteer stopping it);
- the process that started the supervisor dies, however (it watches its parent: a parent-death signal would fire
  when the *thread* that spawned it ends, which in fvsteer is not the process ending).

Its exit status is COMMAND's. It imports nothing outside the standard library, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.2


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m app.engine.supervisor GRACE_SECONDS -- COMMAND...", file=sys.stderr)
        return 2
    grace = float(argv[0])
    parent = os.getppid()
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # the tree's group is the supervisor's: one killpg from its starter ends everything
    _become_subreaper()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    leader = subprocess.Popen(argv[2:], preexec_fn=_die_with_parent)  # safe here: this process has one thread
    while not stopping and leader.poll() is None and os.getppid() == parent:
        time.sleep(POLL_S)
    statuses = end_tree(grace)
    status = leader.returncode if leader.returncode is not None else statuses.get(leader.pid, 0)
    return status if status >= 0 else 128 - status


def end_tree(grace: float) -> dict[int, int]:
    """SIGTERM to every descendant, SIGKILL to what is left after ``grace`` seconds; returns once none is left,
    with the exit status (negative: the signal) of each child it collected."""
    statuses: dict[int, int] = {}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgrp(), signal.SIGTERM)  # reaches the supervisor too: its handler only sets a flag
    _signal_children(signal.SIGTERM)  # orphans re-parented here that left the group
    deadline = time.monotonic() + grace
    while _reap(statuses) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Killing children one generation at a time: each killed process's children are re-parented here.
    while _reap(statuses):
        _signal_children(signal.SIGKILL)
        time.sleep(0.05)
    return statuses


def _signal_children(signum: int) -> None:
    for pid in _children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _reap(statuses: dict[int, int]) -> bool:
    """Collects exited children; True while any child (a process still to end) remains."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        statuses[pid] = os.waitstatus_to_exitcode(status)


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces: state, ppid, ...
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


def _die_with_parent() -> None:
    """In the first process, before it runs COMMAND: SIGKILL when the supervisor dies (if the supervisor itself is
    SIGKILLed, its starter still ends the group; see ``ManagedVllm.stop``)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"supervisor: cannot become a subreaper (errno {ctypes.get_errno()})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
