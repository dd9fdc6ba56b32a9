"""What the foreman opens before it serves: its TLS certificate and its journal, with errors that name the file.

Each failure is a :class:`StartupError` whose message is one line for the
operator: what is wrong, with which file, and what to do when that is not
obvious. ``crowdcompute foreman`` prints it as ``error: ...`` and exits 1.
"""

from __future__ import annotations

import sqlite3
import ssl
from pathlib import Path

from .journal import Journal

__all__ = ["StartupError", "open_journal", "tls_context"]


class StartupError(Exception):
    """Raised when the foreman cannot start: the message says what is wrong and names the file."""


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server TLS context with this certificate and key; StartupError naming the file that is wrong."""
    for what, path in (("certificate", certfile), ("key", keyfile)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise StartupError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise StartupError(_tls_problem(certfile, keyfile, exc)) from exc
    return context


def _tls_problem(certfile: str, keyfile: str, exc: ssl.SSLError) -> str:
    """Why OpenSSL refused the pair, in words: its own message ("PEM lib") names neither file."""
    cert = Path(certfile).read_bytes()
    key = Path(keyfile).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        swapped = b"PRIVATE KEY-----" in cert and b"-----BEGIN CERTIFICATE-----" in key
        hint = ": --certfile and --keyfile are swapped" if swapped else ""
        return f"the certificate file {certfile} holds no PEM certificate{hint}"
    if b"PRIVATE KEY-----" not in key:
        return f"the key file {keyfile} holds no PEM private key"
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"the key file {keyfile} is not the private key of the certificate {certfile}"
    reason = exc.reason or exc.strerror or str(exc)
    return f"cannot use the certificate {certfile} with the key {keyfile}: {reason}"


def open_journal(path: str | Path) -> Journal:
    """The journal at ``path``, created if absent; StartupError when it cannot be opened or is not a journal."""
    path = Path(path)
    if path.is_file():
        # Asked before Journal() opens it, which would log a traceback and say only that it failed.
        try:
            probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                probe.execute("SELECT name FROM sqlite_master").fetchall()
            finally:
                probe.close()
        except sqlite3.OperationalError as exc:  # unreadable, say: not the file's fault
            raise StartupError(f"cannot open the journal {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StartupError(
                f"the journal {path} is not a CrowdCompute journal ({exc}): move it away or pass another --journal"
            ) from exc
    try:
        return Journal(path)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) != str(path) else ""
        raise StartupError(f"cannot open the journal {path}: {where}{exc.strerror or exc}") from exc
