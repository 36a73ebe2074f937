"""The supervisor vLLM runs under (app/engine/supervisor.py): however the tree's first process or the supervisor's
starter ends, no process of the tree is left, even one that ignores SIGTERM and left the process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.faults import wait_until

# A tree like vLLM's: a first process that starts a worker which ignores SIGTERM and leaves the process group (a
# new session, as a careless library might), writes both pids, then waits.
TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        start_new_session=True)
    with open(sys.argv[1], "w") as out:
        out.write(f"{__import__('os').getpid()} {worker.pid}")
    time.sleep(600)
""")
# A starter that runs the supervisor, writes its pid, and waits: SIGKILLing it is fvsteer dying mid-drain.
STARTER = textwrap.dedent("""
    import subprocess, sys, time
    supervisor = subprocess.Popen([sys.executable, "-m", "app.engine.supervisor", "2", "--", *sys.argv[2:]],
                                  start_new_session=True)
    open(sys.argv[1], "w").write(str(supervisor.pid))
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def tree(tmp_path: Path, starter: bool = False) -> tuple[subprocess.Popen[bytes], list[int]]:
    pids_file = tmp_path / "pids"
    command = [sys.executable, "-c", TREE, str(pids_file)]
    if starter:
        started = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "supervisor"), *command])
    else:
        started = subprocess.Popen([sys.executable, "-m", "app.engine.supervisor", "2", "--", *command],
                                   start_new_session=True)
    wait_until(lambda: pids_file.exists() and pids_file.read_text().count(" ") == 1, "the tree to start")
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert all(alive(pid) for pid in pids)
    return started, pids


@pytest.fixture()
def leftovers() -> object:
    seen: list[int] = []
    yield seen
    for pid in seen:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_first_process_dying_ends_the_tree(tmp_path: Path, leftovers: list[int]) -> None:
    supervisor, (first, worker) = tree(tmp_path)
    leftovers += [first, worker]
    os.kill(first, signal.SIGKILL)
    assert supervisor.wait(timeout=60) == 128 + signal.SIGKILL  # the first process's status, as a shell gives it
    assert not alive(worker)


def test_sigterm_ends_the_tree_and_kills_what_ignores_it_after_the_grace(tmp_path: Path,
                                                                          leftovers: list[int]) -> None:
    supervisor, (first, worker) = tree(tmp_path)
    leftovers += [first, worker]
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(timeout=60)
    assert time.monotonic() - started >= 2  # the worker ignored SIGTERM: it was killed only after the grace
    assert not alive(first) and not alive(worker)


def test_the_starter_dying_ends_the_tree(tmp_path: Path, leftovers: list[int]) -> None:
    starter, (first, worker) = tree(tmp_path, starter=True)
    supervisor = int((tmp_path / "supervisor").read_text())
    leftovers += [first, worker, supervisor]
    starter.kill()  # SIGKILL: no cleanup code of the starter runs
    starter.wait()
    wait_until(lambda: not any(alive(pid) for pid in (first, worker, supervisor)), "the tree to end", timeout=60)


def test_usage_errors_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "app.engine.supervisor", "5"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "usage" in done.stderr
