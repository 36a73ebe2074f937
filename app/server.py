"""``python -m app.server`` / ``fvsteer serve``: configure logging and run uvicorn on the app, with a graceful drain.

SIGTERM (or a first Ctrl-C): ``/readyz`` turns 503 and new requests get 503, while requests in flight finish for
up to ``FVSTEER_SHUTDOWN_GRACE_S`` (those still running then end with ``finish_reason: "cancelled"`` and the text
so far); then the server stops and the process exits 0. A second signal stops at once.
A fatal engine error makes the process exit 1, so that a supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.api.app import create_app
from app.api.header_timeout import HeaderTimeoutProtocol
from app.logs import configure_logging
from app.runtime import Runtime
from app.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn closes its socket on the first signal; this keeps serving (503s and in-flight work) while draining."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace_s: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.grace_s = grace_s
        self._drain_started = False
        runtime.request_exit = self._exit_now

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started:
            super().handle_exit(sig, frame)  # a second signal: stop now (uvicorn re-raises it on the way out)
            return
        if self.runtime.state != "ready":  # loading or failed: nothing to drain; exit with the runtime's code
            self.should_exit = True
            return
        self._drain_started = True
        self.runtime.begin_drain()
        threading.Thread(target=self._drain, name="fvsteer-drain", daemon=True).start()

    def _drain(self) -> None:
        started = time.monotonic()
        while not self.runtime.drained() and time.monotonic() - started < self.grace_s:
            time.sleep(0.05)
        left = self.runtime.in_flight
        if left:
            log.warning("grace period of %g s over with %d requests in flight; cutting them short", self.grace_s,
                        left)
            self.runtime.cut_short()
            cut = time.monotonic()
            while self.runtime.in_flight and time.monotonic() - cut < 5:  # their answers go out
                time.sleep(0.05)
        else:
            log.info("drained in %.1f s; stopping", time.monotonic() - started)
        self.should_exit = True

    def _exit_now(self) -> None:
        self.should_exit = True


def run(settings: Settings, app: FastAPI | None = None) -> int:
    """Serve ``app`` (default: :func:`create_app` of the settings) until stopped; binds ``FVSTEER_HOST:FVSTEER_PORT``
    (127.0.0.1:8000 by default). Returns the exit code."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app = app or create_app(settings)
    runtime: Runtime = app.state.runtime
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            log_config=None, access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=settings.keep_alive_s,
                            http=HeaderTimeoutProtocol.with_timeout(settings.header_timeout_s))
    DrainingServer(config, runtime, settings.shutdown_grace_s).run()
    return runtime.exit_code


if __name__ == "__main__":
    sys.exit(run(Settings()))
