"""Foreman addresses and connection files.

A foreman started without ``--token`` generates one and writes it, with its
URL, to ``$CROWDCOMPUTE_HOME/foreman-PORT.json`` (default ``~/.crowdcompute``,
mode 0600). A client or worker of the same user that connects to a loopback
address without a token reads it from there.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .constants import DEFAULT_PORT, HOME_VARIABLE

__all__ = [
    "DEFAULT_PORT",
    "Address",
    "crowdcompute_home",
    "connection_file_path",
    "generate_token",
    "is_loopback",
    "live_connection_files",
    "parse_address",
    "read_connection_file",
    "remove_connection_file",
    "write_connection_file",
]


@dataclass(frozen=True)
class Address:
    """Where a foreman listens."""

    host: str
    port: int
    secure: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_address(host: str | None, port: int | None = None) -> Address:
    """Return the Address for ``host`` (a name, ``ws://h:p`` or ``wss://h:p``) and ``port``.

    Raises ValueError when the address cannot be understood.
    """
    host = (host or "127.0.0.1").strip()
    secure = False
    if "://" in host:
        parts = urlsplit(host)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"unsupported address {host!r}: use ws://HOST:PORT or wss://HOST:PORT")
        secure = parts.scheme == "wss"
        if not parts.hostname:
            raise ValueError(f"address {host!r} names no host")
        try:
            url_port = parts.port
        except ValueError as exc:
            raise ValueError(f"address {host!r} has an invalid port") from exc
        return Address(parts.hostname, port or url_port or DEFAULT_PORT, secure)
    if host.count(":") == 1:  # host:port
        name, _, text = host.partition(":")
        if not text.isdigit():
            raise ValueError(f"address {host!r} has an invalid port")
        return Address(name, port or int(text), secure)
    return Address(host, port or DEFAULT_PORT, secure)


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def crowdcompute_home() -> Path:
    """The folder for connection files and journals: ``$CROWDCOMPUTE_HOME`` or ``~/.crowdcompute``."""
    return Path(os.environ.get(HOME_VARIABLE) or Path.home() / ".crowdcompute")


def connection_file_path(port: int) -> Path:
    return crowdcompute_home() / f"foreman-{port}.json"


def generate_token() -> str:
    """A random token that never starts with "-", which ``--token TOKEN`` would read as an option."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def write_connection_file(port: int, url: str, token: str, *, embedded: bool = False) -> Path:
    """Write ``url`` and ``token`` to the port's connection file, readable by this user only.

    ``embedded``: the foreman belongs to another process (a notebook's kernel,
    say), whose pid the file records as ``parent``.
    """
    path = connection_file_path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = {"url": url, "token": token, "pid": os.getpid(), "started": time.time()}
    if embedded:
        data.update(embedded=True, parent=os.getppid())
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def read_connection_file(port: int) -> dict[str, Any] | None:
    """The port's connection file as a dict, or None when there is none we can read."""
    try:
        data = json.loads(connection_file_path(port).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return None
    return data


def remove_connection_file(port: int, pid: int | None = None) -> None:
    """Remove the port's connection file if this process (or the process ``pid``) wrote it."""
    found = read_connection_file(port)
    if found is not None and found.get("pid") == (pid or os.getpid()):
        connection_file_path(port).unlink(missing_ok=True)


def live_connection_files() -> list[dict[str, Any]]:
    """The connection files of foremen of this user that still run, by port; each with its ``port``."""
    found = []
    for path in sorted(crowdcompute_home().glob("foreman-*.json")):
        port = path.stem.removeprefix("foreman-")
        data = read_connection_file(int(port)) if port.isdigit() else None
        if data is None or not isinstance(data.get("pid"), int) or not _running(data["pid"]):
            continue
        found.append({**data, "port": int(port)})
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    return True
