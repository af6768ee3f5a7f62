"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), so that an
    error quoted inside one of ours keeps it to one line."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class MedqaError(Exception):
    """Base class: the message names the file, row or key and the reason."""


class ConfigError(MedqaError):
    """params.yaml is missing, malformed, or has a wrong type or unknown key."""


class DataError(MedqaError):
    """Input data cannot be read or fails validation."""


class ModelError(MedqaError):
    """A model or registry entry cannot be found or loaded."""


class BusyError(MedqaError):
    """Another process holds a resource this one needs (a second trainer on the same state)."""
