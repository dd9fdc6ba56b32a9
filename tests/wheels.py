"""Tiny wheels built on the spot, for tests that install packages without any registry."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def build_wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """Write ``NAME-VERSION-py3-none-any.whl`` holding package ``name`` whose ``__init__.py`` is ``source``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def tinypkg_wheels(folder: Path) -> Path:
    """tinypkg 1.0 and 1.1 in ``folder``: ``tinypkg.version()`` says which."""
    folder.mkdir(parents=True, exist_ok=True)
    for version in ("1.0", "1.1"):
        build_wheel(
            folder, "tinypkg", version, f"__version__ = {version!r}\n\n\ndef version():\n    return __version__\n"
        )
    return folder
