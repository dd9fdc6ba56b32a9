"""Volunteers: a credential per invited worker, and the record that follows it.

Pure state, no I/O. ``crowdcompute invite NAME`` makes a :class:`Volunteer`
with a random credential; only its SHA-256 digest is kept (the credential is
256 random bits, so a plain hash is as strong as a slow one) and journaled.
A worker that joins with it is that volunteer: its record (tasks done,
agreements, disagreements, missed deadlines, quarantine) is the volunteer's,
whatever ``--name`` it gives, across reconnects and foreman restarts.
Workers that join with the shared ``--worker-token`` have no volunteer:
they are the operator's own machines, trusted, with a record per connection.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from crowdcompute.wire.client_messages import MAX_VOLUNTEER_NAME, volunteer_name_problem

__all__ = [
    "CREDENTIAL_PREFIX",
    "MAX_VOLUNTEER_NAME",
    "CredentialRefused",
    "Record",
    "Registry",
    "Volunteer",
    "digest",
]

#: Every credential starts with this, so that a leaked one is recognisable (and never a client token).
CREDENTIAL_PREFIX = "ccv1_"


class CredentialRefused(Exception):
    """A worker's credential is unknown, revoked or expired; ``reason`` is safe to show and log."""

    def __init__(self, reason: str, name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.name = name  # the volunteer, when the credential was once valid


@dataclass
class Record:
    """What a worker did: one per volunteer, or per connection for shared-token workers."""

    tasks_done: int = 0
    agreed: int = 0  # redundant runs where it sided with the accepted outcome
    disagreed: int = 0  # ... and where it did not
    missed: int = 0  # leases it held past their deadline
    quarantined: bool = False  # it gets no more work


@dataclass
class Volunteer:
    """An invited worker identity."""

    name: str
    digest: str  # SHA-256 of the credential, hex
    created_at: float
    slots: int = 0  # most slots it is granted; 0: the foreman's --max-slots-per-worker
    trusted: bool = False  # its results may be unpickled by clients that do not opt in
    expires_at: float | None = None
    revoked_at: float | None = None
    joined_at: float | None = None  # first connection
    record: Record = field(default_factory=Record)

    def summary(self, now: float) -> dict:
        """The volunteer as ``crowdcompute workers`` shows it (nothing secret)."""
        state = "revoked" if self.revoked_at is not None else "expired" if self.expired(now) else "active"
        return {
            "identity": self.name,
            "trusted": self.trusted,
            "slots": self.slots,
            "state": state,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "joined_at": self.joined_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "tasks_done": self.record.tasks_done,
            "agreed": self.record.agreed,
            "disagreed": self.record.disagreed,
            "missed_deadlines": self.record.missed,
            "quarantined": self.record.quarantined,
        }

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def digest(credential: str) -> str:
    """What the foreman keeps of a credential."""
    return hashlib.sha256(credential.encode()).hexdigest()


class Registry:
    """Every volunteer the foreman knows, by name and by credential digest."""

    def __init__(self) -> None:
        self.by_name: dict[str, Volunteer] = {}
        self._by_digest: dict[str, Volunteer] = {}

    def restore(self, volunteers: list[Volunteer]) -> None:
        """Take back the journaled volunteers after a restart."""
        for volunteer in volunteers:
            self.by_name[volunteer.name] = volunteer
            self._by_digest[volunteer.digest] = volunteer

    def invite(
        self, name: str, now: float, *, slots: int = 0, expires_in: float | None = None, trusted: bool = False
    ) -> tuple[str, Volunteer]:
        """A new credential for ``name`` and its volunteer; ValueError for a bad name or a name in use.

        Inviting a revoked or expired name again gives it a new credential and keeps its record.
        """
        problem = volunteer_name_problem(name)
        if problem:
            raise ValueError(problem)
        if slots < 0:
            raise ValueError(f"--slots must not be negative, not {slots}")
        if expires_in is not None and expires_in <= 0:
            raise ValueError(f"--expires must be positive, not {expires_in}")
        previous = self.by_name.get(name)
        if previous is not None and previous.revoked_at is None and not previous.expired(now):
            raise ValueError(f"volunteer {name} already has a valid credential: revoke it first to issue a new one")
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        volunteer = Volunteer(
            name,
            digest(credential),
            now,
            slots=slots,
            trusted=trusted,
            expires_at=None if expires_in is None else now + expires_in,
            joined_at=previous.joined_at if previous else None,
            record=previous.record if previous else Record(),
        )
        if previous is not None:
            self._by_digest.pop(previous.digest, None)
        self.by_name[name] = volunteer
        self._by_digest[volunteer.digest] = volunteer
        return credential, volunteer

    def authenticate(self, credential: str, now: float) -> Volunteer:
        """The volunteer holding ``credential``; raises CredentialRefused (unknown, revoked, expired)."""
        volunteer = self._by_digest.get(digest(credential))
        if volunteer is None:
            raise CredentialRefused("wrong or missing worker token")
        if volunteer.revoked_at is not None:
            raise CredentialRefused(
                f"the credential of volunteer {volunteer.name} was revoked; ask the foreman's operator for a new invite",
                volunteer.name,
            )
        if volunteer.expired(now):
            raise CredentialRefused(
                f"the credential of volunteer {volunteer.name} expired; ask the foreman's operator for a new invite",
                volunteer.name,
            )
        if volunteer.joined_at is None:
            volunteer.joined_at = now
        return volunteer

    def revoke(self, name: str, now: float) -> Volunteer:
        """Refuse ``name``'s credential from now on; KeyError naming it when there is no such volunteer."""
        volunteer = self.by_name.get(name)
        if volunteer is None:
            raise KeyError(f"no volunteer named {name!r} (crowdcompute workers lists them)")
        if volunteer.revoked_at is None:
            volunteer.revoked_at = now
        return volunteer
