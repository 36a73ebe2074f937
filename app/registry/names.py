"""Names users give to vectors, checked once here so no name can escape the registry folder."""

from __future__ import annotations

import re

from app.errors import InvalidInput

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
NAME_RULE = "1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


def check_name(name: str, param: str = "name") -> str:
    """Return ``name`` if it is a valid vector name, else raise a 422 naming the rule."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidInput(f"invalid vector name {name[:80]!r}: use {NAME_RULE}", param=param)
    return name
