"""The web playground's static files (``static/``), served by :mod:`app.api.routes.playground`."""
