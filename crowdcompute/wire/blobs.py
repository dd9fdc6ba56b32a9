"""Big payloads as files in a folder the foreman shares with peers on its own host. No sockets.

Every payload byte on the websocket path crosses the foreman twice (client
to foreman to worker, and back), in Python. When a client or worker runs on
the foreman's machine (the embedded cluster, a ``crowdcompute foreman`` with
local workers) that is not needed: the foreman names a private folder in its
Welcome (``Welcome.blobs``: beside its journal, else a temporary one, mode
0700), the peer reads the proof file in it and sends its text back
(``ShareBlobs``), and from then on a payload of at least
:data:`BLOB_THRESHOLD` bytes between them is a file there: the message
carries only a *reference* (:func:`reference`), a few bytes the foreman
forwards, journals and checks but never reads through. A peer that cannot
read the folder (another host: the crowd) proves nothing and gets every
payload inline, as before; the foreman reads the file for it.

File names are ``<job prefix>-<random>.<in|out>.blob``: the prefix (:func:`job_prefix`,
a hash of the job id) lets the foreman delete a job's files together, and
the journal's own payload files use the same prefix. A writer writes a
temporary name and renames it, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import secrets
import struct
from collections.abc import Iterable
from pathlib import Path

from .constants import SHARE_FILES_VARIABLE

__all__ = [
    "BLOB_THRESHOLD",
    "PROOF_FILE",
    "SharedFolder",
    "join_folder",
    "job_prefix",
    "parse_reference",
    "payload_parts",
    "payload_size",
    "read_proof",
    "reference",
]

#: Payloads of at least this many bytes travel as files between peers that share the foreman's folder.
BLOB_THRESHOLD = 1024 * 1024
#: The file whose text a peer sends back to show that it reads the folder (mode 0600).
PROOF_FILE = "proof"
#: The first bytes of a reference payload (pickles start with 0x80, JSON with [ or {, out-of-band payloads \x00CC5).
_MAGIC = b"\x00CCR"
_SIZE = struct.Struct("!Q")
_NAME = re.compile(r"[0-9a-f]{32}-[0-9a-f]{32}\.(in|out)\.blob")


def job_prefix(job_id: str) -> str:
    """The start of every file name of a job (job ids come from clients: hashed, never used as names)."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:32]


def reference(name: str, size: int) -> bytes:
    """The payload that stands for the file ``name`` of ``size`` bytes."""
    return _MAGIC + _SIZE.pack(size) + name.encode()


def parse_reference(payload: object) -> tuple[str, int] | None:
    """(file name, size) if ``payload`` is a reference, None if it is a payload of its own.

    Raises ValueError for a reference whose name is not one a writer makes.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)) or len(payload) < len(_MAGIC) + _SIZE.size:
        return None
    if payload[0] != _MAGIC[0]:  # (pickles and JSON never start with it: the common case, made cheap)
        return None
    view = memoryview(payload)
    if view[: len(_MAGIC)] != _MAGIC:
        return None
    (size,) = _SIZE.unpack_from(view, len(_MAGIC))
    name = bytes(view[len(_MAGIC) + _SIZE.size :]).decode("ascii", "replace")
    if not _NAME.fullmatch(name):
        raise ValueError(f"a payload file reference names {name[:80]!r}, not a payload file")
    return name, size


def join_folder(welcome_folder: str) -> tuple[SharedFolder, str] | None:
    """The foreman's payload folder and its proof, if this process shares it (and may: see
    ``SHARE_FILES_VARIABLE``); None to send and get every payload inline."""
    if not welcome_folder or os.environ.get(SHARE_FILES_VARIABLE, "1") == "0":
        return None
    proof = read_proof(welcome_folder)
    return None if proof is None else (SharedFolder(welcome_folder), proof)


def payload_parts(payload: object) -> tuple[bytes | memoryview, ...]:
    """A payload as the buffers that make it (a payload kept in pieces is not joined)."""
    pieces = getattr(payload, "pieces", None)
    return tuple(pieces) if pieces is not None else (payload,)  # type: ignore[return-value]


def payload_size(payload: object) -> int:
    """Bytes a payload stands for: a reference's file size, else its own length."""
    try:
        found = parse_reference(payload)
    except ValueError:
        found = None
    return found[1] if found is not None else len(payload)  # type: ignore[arg-type]


def read_proof(folder: str) -> str | None:
    """The proof text in ``folder``, if this process can read it (it shares the foreman's files)."""
    try:
        with open(os.path.join(folder, PROOF_FILE), encoding="ascii") as file:
            return file.read(256)
    except (OSError, ValueError):
        return None


class SharedFolder:
    """The payload folder, as the foreman and the peers that share it use it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path) -> SharedFolder:
        """The foreman's folder (made private if new), with a fresh proof file."""
        folder = cls(path)
        folder.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder.path, 0o700)
        proof = folder.path / PROOF_FILE
        proof.unlink(missing_ok=True)
        descriptor = os.open(proof, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_hex(16))
        return folder

    def proof(self) -> str:
        return (self.path / PROOF_FILE).read_text(encoding="ascii")

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, job_id: str, payload: object) -> tuple[str, int] | None:
        """Like :func:`parse_reference`, and the file must be the job's and hold ``size`` bytes.

        Raises ValueError saying what is wrong.
        """
        found = parse_reference(payload)
        if found is None:
            return None
        name, size = found
        if not name.startswith(job_prefix(job_id)):
            raise ValueError(f"payload file {name} is not one of job {job_id}'s")
        try:
            actual = os.stat(self.path / name).st_size
        except OSError as exc:
            raise ValueError(f"payload file {name} cannot be read: {exc.strerror}") from None
        if actual != size:
            raise ValueError(f"payload file {name} holds {actual} bytes, not {size}")
        return found

    def write(self, job_id: str, parts: Iterable[bytes | memoryview], kind: str = "out") -> bytes:
        """Write a payload of ``parts`` as a new file of the job (``kind``: "in" for a task's input,
        "out" for an outcome); return its reference. Raises OSError."""
        name = f"{job_prefix(job_id)}-{secrets.token_hex(16)}.{kind}.blob"
        temporary = self.path / f".{name}.part"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = 0
            with os.fdopen(descriptor, "wb", buffering=0) as file:
                for part in parts:
                    view = memoryview(part).cast("B")
                    while view:  # a raw file may write less than asked
                        written = file.write(view)
                        view = view[written or 0 :]
                        size += written or 0
            os.rename(temporary, self.path / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return reference(name, size)

    def read(self, payload: object) -> memoryview:
        """The bytes a reference stands for, as a private (copy-on-write, so writable) mapping of its file.

        Raises OSError when the file is gone, ValueError for a bad reference.
        """
        found = parse_reference(payload)
        if found is None:
            raise ValueError("not a payload file reference")
        name, size = found
        with open(self.path / name, "rb") as file:
            if size == 0:
                return memoryview(bytearray())
            mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
        return memoryview(mapped)

    def delete(self, payload: object) -> None:
        """Delete the file a reference stands for (nothing if it is gone or not a reference)."""
        try:
            found = parse_reference(payload)
        except ValueError:
            return
        if found is not None:
            (self.path / found[0]).unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> None:
        """Delete every file of a job, finished or half written."""
        prefix = job_prefix(job_id)
        for path in [*self.path.glob(f"{prefix}-*.blob"), *self.path.glob(f".{prefix}-*.part")]:
            path.unlink(missing_ok=True)
