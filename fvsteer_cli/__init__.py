"""The ``fvsteer`` command line, a client of the server: it depends on the SDK (``fvsteer_client``) only.

``local.py`` alone runs the server's code (``serve``, ``analogies``, ``alignment``), importing ``app`` inside
those commands; importing this package loads neither the server nor torch, tqdm or matplotlib.
"""

from fvsteer_cli.main import main

__all__ = ["main"]
