"""Per-request bookkeeping as pure ASGI middleware: a request id (the caller's ``X-Request-ID`` when it is sane,
else a new one) put on every log line and sent back in the response header, one structured access-log line,
the HTTP metrics, and the in-flight count that a SIGTERM drain waits on (a request counts once its body is whole: a
client still trickling its body in does not hold up a shutdown). A client that leaves before its body is
whole is logged as 499 (nginx's "client closed request"), not as whatever error the cut body would have caused."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.disconnect import CLIENT_CLOSED
from app.api.errors import internal_error
from app.api.metrics import HttpMetrics
from app.logs import request_id

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("fvsteer.access")
HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Probes and progress streams are not work a drain should wait for (a job's event stream lasts as long as the job).
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# Metric labels from a closed set: any other method token (h11 accepts them) would make a label per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _counts_as_work(path: str) -> bool:
    return path not in PROBES and not path.endswith("/events")


class RequestObservation:
    def __init__(self, app: ASGIApp, runtime: Runtime, metrics: HttpMetrics) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER)
        rid = given.decode() if given is not None and _SANE_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        work = _counts_as_work(scope["path"])
        counted = False

        def count_in() -> None:
            nonlocal counted
            if work and not counted:
                counted = True
                self.runtime.in_flight += 1
                self.metrics.in_flight.inc()

        started_response = False
        body_whole = scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS")
        left_mid_body = False
        if body_whole:
            count_in()

        async def watched_receive() -> Message:
            nonlocal body_whole, left_mid_body
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_whole = True
                count_in()
            elif message["type"] == "http.disconnect" and not body_whole:
                left_mid_body = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if left_mid_body:
                return  # nobody to answer
            if message["type"] == "http.response.start":
                count_in()  # a route that answers without reading its body
                status, started_response = int(message["status"]), True
                message = {**message, "headers": [*message.get("headers", []), (HEADER, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, watched_receive, send_with_id)
        except Exception:
            if started_response:  # a streamed body broke half-way: nothing can be sent any more
                raise
            if not left_mid_body:
                # A bug: answered here rather than by Starlette's outermost handler, so that the 500 and its log
                # line carry the request id.
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                await internal_error(send_with_id)
        finally:
            if left_mid_body:
                status = CLIENT_CLOSED
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # templates only: no label per vector name
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe(method, template, status, seconds)
            if counted:
                self.runtime.in_flight -= 1
                self.metrics.in_flight.dec()
            level = logging.DEBUG if scope["path"] in PROBES else logging.INFO  # probes every few seconds: quiet
            log.log(level, "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000,
                     extra={"method": scope["method"], "path": scope["path"], "route": template, "status": status,
                            "duration_ms": round(seconds * 1000, 1),
                            "client": (scope.get("client") or ("-",))[0]})
            request_id.reset(token)
