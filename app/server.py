"""``python -m app.server`` / ``fvsteer serve``: configure logging and run uvicorn on the app."""

from __future__ import annotations

import logging
import os

import uvicorn

from app.api.app import create_app
from app.settings import Settings


def run(settings: Settings) -> None:
    """Serve until interrupted; binds ``FVSTEER_HOST:FVSTEER_PORT`` (127.0.0.1:8000 by default)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    run(Settings())
