"""What a worker must share with a client to run its cloudpickle jobs.

cloudpickle output is tied to the Python minor version and to the
cloudpickle version, so every connection announces both and the foreman
refuses peers whose runtime differs from its own (and so from each other).
Nothing here imports cloudpickle: the foreman uses it too.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TypedDict

__all__ = ["cloudpickle_version", "python_version", "runtime_fields", "runtime_mismatch"]


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def cloudpickle_version() -> str:
    try:
        return version("cloudpickle")
    except PackageNotFoundError:
        return ""


def _minor(text: str) -> str:
    return ".".join(text.split(".")[:2])


def runtime_mismatch(role: str, python: str, cloudpickle: str) -> str | None:
    """A sentence naming both runtimes when ``role``'s differs from this process's, else None."""
    mine = (_minor(python_version()), _minor(cloudpickle_version()))
    theirs = (_minor(python), _minor(cloudpickle))
    if mine == theirs:
        return None
    return (
        f"this {role} runs Python {theirs[0] or '?'} with cloudpickle {theirs[1] or '?'}, but the foreman's "
        f"jobs need Python {mine[0]} with cloudpickle {mine[1]}; install the same versions on both sides"
    )


class RuntimeFields(TypedDict):
    """The Hello fields that announce a runtime."""

    python: str
    cloudpickle: str


def runtime_fields() -> RuntimeFields:
    """The Hello fields that announce this process's runtime."""
    return {"python": python_version(), "cloudpickle": cloudpickle_version()}
