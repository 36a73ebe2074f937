"""``python -m fvsteer_cli``: the console script without installing it (tests send it SIGINT this way)."""

from fvsteer_cli.main import main

raise SystemExit(main())
