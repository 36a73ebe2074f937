"""Container health probe: exit 0 when the server answers 200 on a path, 1 otherwise.

The image has no curl, and should not need one: the standard library is enough. Usage:

    python /srv/fvsteer/docker/healthcheck.py [/readyz | /healthz]

``/readyz`` (the default) is 200 only once the model is loaded and warm, so an orchestrator routes
no traffic to a container that would answer 503. The probe talks to the loopback address on
``FVSTEER_PORT`` and ignores any proxy variables of the environment.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("FVSTEER_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
