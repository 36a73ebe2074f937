"""``python -m tests.fault_server``: the real server with gates and faults in its engine, driven by the tests over
HTTP, so that the order of events in a test is the test's choice and never the scheduler's.

A gate stands before every decode step (``steps``) and before every task forward (``tasks``: jobs, evaluations,
decoding, analogy scores). Closed, it parks the engine thread at that point until the test opens it:

- ``POST /_faults/{gate}/close?after=N``: let ``N`` more through (default 0), then park before the next one.
- ``POST /_faults/{gate}/open``: let everything through.
- ``GET /_faults``: per gate ``passed`` (how many went through), ``parked`` (the engine waits there now), ``open``.
- ``POST /_faults/fatal``: the next decode step fails the way a broken CUDA context does.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

from fastapi import APIRouter, HTTPException

from app.api.app import create_app
from app.engine.engine import Engine
from app.server import run
from app.settings import Settings

GateName = Literal["steps", "tasks"]
PARK_LIMIT_S = 600.0  # a test that forgets to open a gate fails its own wait long before this


class Gate:
    """Thread-safe: the engine thread passes through :meth:`passing`; request threads open and close it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._allowance: int | None = None  # None: open; n: that many more may pass
        self.passed = 0
        self.parked = False

    def close(self, after: int) -> None:
        with self._cond:
            self._allowance = after

    def open(self) -> None:
        with self._cond:
            self._allowance = None
            self._cond.notify_all()

    def passing(self) -> None:
        with self._cond:
            if self._allowance is not None and self._allowance <= 0:
                self.parked = True
                self._cond.wait_for(lambda: self._allowance is None or self._allowance > 0, timeout=PARK_LIMIT_S)
                self.parked = False
            if self._allowance is not None:
                self._allowance -= 1
            self.passed += 1

    def state(self) -> dict[str, Any]:
        with self._cond:
            return {"passed": self.passed, "parked": self.parked, "open": self._allowance is None}


GATES: dict[GateName, Gate] = {"steps": Gate(), "tasks": Gate()}
FATAL = threading.Event()
_decode_step = Engine._decode_step
_run_task = Engine._run_task


def gated_decode_step(self: Engine) -> None:
    GATES["steps"].passing()
    if FATAL.is_set():
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected by tests.fault_server)")
    _decode_step(self)


def gated_run_task(fn: Callable[[], Any], future: Future[Any]) -> None:
    GATES["tasks"].passing()
    _run_task(fn, future)


Engine._decode_step = gated_decode_step  # type: ignore[method-assign]
Engine._run_task = staticmethod(gated_run_task)  # type: ignore[method-assign]

router = APIRouter(prefix="/_faults")


@router.get("")
def state() -> dict[str, Any]:
    return {name: gate.state() for name, gate in GATES.items()}


@router.post("/{gate}/close")
def close(gate: str, after: int = 0) -> dict[str, Any]:
    _gate(gate).close(after)
    return state()


@router.post("/{gate}/open")
def open_gate(gate: str) -> dict[str, Any]:
    _gate(gate).open()
    return state()


@router.post("/fatal")
def fatal() -> dict[str, Any]:
    FATAL.set()
    return state()


def _gate(name: str) -> Gate:
    if name not in GATES:
        raise HTTPException(404, f"no gate {name!r}")
    return GATES[name]  # type: ignore[index]


if __name__ == "__main__":
    settings = Settings()
    app = create_app(settings)
    app.include_router(router)
    sys.exit(run(settings, app))
