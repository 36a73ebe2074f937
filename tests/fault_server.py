"""``python -m tests.fault_server``: the real server with faults injected into its engine, for the tests of
backpressure, deadlines, draining and fatal errors (a slow device, a device that breaks).

``FAULT_STEP_DELAY_S``: sleep this long in every decode step (a slow model, so queues fill and deadlines pass).
``FAULT_TASK_DELAY_S``: sleep this long before every task forward (slow jobs, evaluations and analogies).
``FAULT_FATAL_FILE``: once this file exists, the next decode step fails the way a broken CUDA context does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from app.engine.engine import Engine
from app.server import run
from app.settings import Settings

DELAY_S = float(os.environ.get("FAULT_STEP_DELAY_S", "0"))
TASK_DELAY_S = float(os.environ.get("FAULT_TASK_DELAY_S", "0"))
FATAL_FILE = os.environ.get("FAULT_FATAL_FILE")
_decode_step = Engine._decode_step
_run_task = Engine._run_task


def faulty_decode_step(self: Engine) -> None:
    if DELAY_S:
        time.sleep(DELAY_S)
    if FATAL_FILE and Path(FATAL_FILE).exists():
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected by tests.fault_server)")
    _decode_step(self)


def slow_run_task(fn: Callable[[], Any], future: Future[Any]) -> None:
    if TASK_DELAY_S:
        time.sleep(TASK_DELAY_S)
    _run_task(fn, future)


Engine._decode_step = faulty_decode_step  # type: ignore[method-assign]
Engine._run_task = staticmethod(slow_run_task)  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(run(Settings()))
