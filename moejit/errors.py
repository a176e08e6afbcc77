"""Exceptions raised by moejit. Every user-facing failure is a :class:`MoejitError`."""


class MoejitError(RuntimeError):
    """A moejit failure with a message meant for the user (bad input, missing build, unsupported GPU)."""


class MoejitBuildError(MoejitError):
    """Compiling a JIT module failed. ``log_path`` holds the full compiler output."""

    def __init__(self, message: str, log_path: str | None = None):
        super().__init__(message)
        self.log_path = log_path


class MoejitInputError(MoejitError, ValueError):
    """An op was called with an argument it cannot accept (dtype, shape, device, layout, value)."""
