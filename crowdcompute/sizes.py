"""Amounts as people type them, for resources: ``1``, ``0.5``, ``64GB``, ``512MiB``.

(The worker's limits take whole byte sizes: :func:`worker.limits.parse_size`.)"""

from __future__ import annotations

import re

__all__ = ["RAISE_FRAME_LIMIT", "format_amount", "format_mib", "parse_amount"]

#: How to raise the foreman's limit on what one task (or a job's function) may weigh: errors about it say so.
RAISE_FRAME_LIMIT = "start the foreman with a larger --max-frame-size (in bytes)"

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*")


def parse_amount(text: str | int | float) -> float:
    """A number of bytes (or units) from ``text``: bytes, or a number with KB/MB/GB/TB (KiB/MiB/GiB/TiB).

    Raises ValueError saying what a size looks like.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size must not be negative, not {text}")
        return float(text)
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give a number, optionally with KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    return float(match.group(1)) * _UNITS[unit]


def format_amount(value: float) -> str:
    """An amount as people write it: ``1``, ``0.5``, ``64GB`` (decimal units from 1000 up)."""
    for unit in ("TB", "GB", "MB", "KB"):
        if value >= _UNITS[unit] and value % (_UNITS[unit] // 1000 or 1) == 0:
            return f"{value / _UNITS[unit]:g}{unit}"
    return f"{value:g}"


def format_mib(size: float) -> str:
    """A byte count in MiB, as the README writes the limits: ``255.9 MiB``."""
    return f"{size / 2**20:,.1f} MiB"
