"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


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
