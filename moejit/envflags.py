"""Boolean switches read from the environment at call time (the layers' fused/unfused choices)."""

from __future__ import annotations

import os

from moejit.errors import MoejitInputError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(names: tuple[str, ...], default: bool) -> bool:
    """The first of ``names`` that is set (and not empty) decides; otherwise ``default``. Values: 1/0, true/false,
    yes/no, on/off (case-insensitive). Raises :class:`MoejitInputError` for a value that is not a boolean word."""
    for name in names:
        raw = os.environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise MoejitInputError(f"environment variable {name}={raw!r} is not a boolean (use 1/0, true/false, "
                               "yes/no, on/off)")
    return default
