"""The locked environment: which file pins it, its digest, and what installed here differs from it.

``uv.lock`` is the lock (uv resolves it; ``make lock`` upgrades it); ``requirements-lock.txt`` is its
pip-readable export, which ``scripts/setup.sh`` installs. torch is not in the export (its CPU, ROCm
and CUDA builds come from different indexes), so its locked version is read from ``uv.lock``. The
digest of ``uv.lock`` is tagged on training runs and registered versions beside the git commit: two
versions with the same commit and digest were trained with the same library code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from medqa.config import find_project_root

LOCK_FILE = "uv.lock"
EXPORT_FILE = "requirements-lock.txt"
FIX = "bash scripts/setup.sh (or any make target) installs the locked versions"

# `name==version`, then an optional environment marker, in uv's requirements export.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
_TORCH = re.compile(r'^name = "torch"\nversion = "([^"]+)"$', re.MULTILINE)


@dataclass(frozen=True)
class Drift:
    """A package whose installed version is not the locked one (installed None: missing)."""

    name: str
    installed: str | None
    locked: str

    def __str__(self) -> str:
        return f"{self.name} installed {self.installed or 'nothing'}, locked {self.locked}"


def lock_root(start: Path | None = None) -> Path | None:
    """The project folder holding the lock, or None (medqa installed outside a checkout)."""
    root = find_project_root(start)
    return root if root is not None and (root / LOCK_FILE).is_file() else None


def lock_digest(start: Path | None = None) -> str:
    """SHA-256 of ``uv.lock``, or "unknown" outside a checkout that has one."""
    root = lock_root(start)
    if root is None:
        return "unknown"
    return hashlib.sha256((root / LOCK_FILE).read_bytes()).hexdigest()


def locked_versions(export_text: str, lock_text: str) -> dict[str, str]:
    """Canonical package name → locked version, for this interpreter and platform: the export's pins
    whose markers hold here, plus torch from ``uv.lock``."""
    pins: dict[str, str] = {}
    for line in export_text.splitlines():
        m = _PIN.match(line.strip())
        if m is None:
            continue
        name, ver, marker = m.groups()
        if marker and not Marker(marker).evaluate({"extra": ""}):
            continue
        pins[canonicalize_name(name)] = ver
    torch = _TORCH.search(lock_text)
    if torch:
        pins["torch"] = torch.group(1)
    return pins


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def drift(
    locked: Mapping[str, str], installed: Callable[[str], str | None] = _installed
) -> list[Drift]:
    """The locked packages whose installed version differs, sorted by name. A local build tag is
    ignored for torch only (2.13.0+cpu and 2.13.0+rocm7.2 are both the locked 2.13.0)."""
    found = []
    for name, want in sorted(locked.items()):
        have = installed(name)
        base = have.split("+")[0] if have and name == "torch" else have
        if base != want:
            found.append(Drift(name, have, want))
    return found


def lock_report(start: Path | None = None) -> tuple[list[str], list[str]]:
    """(facts, warnings) for ``medqa doctor``: the lock in force and every drifted package."""
    root = lock_root(start)
    if root is None:
        return [f"environment lock: no {LOCK_FILE} here (not a medqa checkout): not checked"], []
    locked = locked_versions((root / EXPORT_FILE).read_text(), (root / LOCK_FILE).read_text())
    drifted = drift(locked)
    facts = [
        f"environment lock: {LOCK_FILE} sha256 {lock_digest(root)[:12]}, {len(locked)} packages, "
        + ("all as locked" if not drifted else f"{len(drifted)} not as locked")
    ]
    warnings = [
        f"{len(drifted)} package(s) differ from {LOCK_FILE}: "
        + "; ".join(str(d) for d in drifted)
        + f". {FIX}"
    ]
    return facts, warnings if drifted else []
