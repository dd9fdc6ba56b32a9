"""The scheduler's volunteer events: admin requests (invite, revoke, list) and what trust and
slots follow from a worker's credential. A mixin of :class:`foreman.scheduler.Scheduler`:
pure state, events in, actions out, like the rest of it (see :mod:`foreman.credentials`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import CloseCode

from .credentials import Registry, Volunteer
from .state import Action, Close, Note, SaveVolunteer, Send, Task, Worker

__all__ = ["VolunteerEvents"]


class VolunteerEvents:
    """Invites, revocations and the records that follow a credential."""

    # Provided by the Scheduler.
    workers: dict[str, Worker]
    volunteers: Registry
    max_slots_per_worker: int
    clock: Callable[[], float]

    if TYPE_CHECKING:

        def remove_worker(self, worker_id: str) -> list[Action]: ...

    def granted_slots(self, claimed: int, volunteer: Volunteer | None = None) -> int:
        """Slots a worker claiming ``claimed`` gets: at most --max-slots-per-worker, or its invite's --slots."""
        cap = self.max_slots_per_worker
        if volunteer is not None and volunteer.slots:
            cap = min(cap, volunteer.slots)
        return max(1, min(claimed, cap))

    def invite_volunteer(self, client_id: str, msg: p.InviteVolunteer) -> list[Action]:
        """A credential for a new volunteer; the reply holds it, the journal only its digest."""
        try:
            credential, volunteer = self.volunteers.invite(
                msg.name, self.clock(), slots=msg.slots, expires_in=msg.expires_in, trusted=msg.trusted
            )
        except ValueError as exc:
            return [Send(client_id, p.VolunteersReply.of({"error": str(exc)}))]
        answer = {"credential": credential, "volunteer": volunteer.summary(self.clock())}
        trust = "trusted" if volunteer.trusted else "untrusted"
        return [
            SaveVolunteer(volunteer),
            Note(f"invited volunteer {volunteer.name} ({trust}, slots {volunteer.slots or 'default'})", routine=True),
            Send(client_id, p.VolunteersReply.of(answer)),
        ]

    def revoke_volunteer(self, client_id: str, msg: p.RevokeVolunteer) -> list[Action]:
        """Refuse a volunteer from now on: its connections close and their tasks run elsewhere."""
        try:
            volunteer = self.volunteers.revoke(msg.name, self.clock())
        except KeyError as exc:
            return [Send(client_id, p.VolunteersReply.of({"error": exc.args[0]}))]
        actions: list[Action] = [SaveVolunteer(volunteer)]
        connections = [w for w in self.workers.values() if w.volunteer is volunteer]
        actions += self._shut_out(connections, "credential revoked")
        closed = f"{len(connections)} connection{'' if len(connections) == 1 else 's'}"
        actions.append(Note(f"revoked volunteer {volunteer.name}: closed {closed}", routine=True))
        answer = {"volunteer": volunteer.summary(self.clock()), "closed": len(connections)}
        return actions + [Send(client_id, p.VolunteersReply.of(answer))]

    def list_volunteers(self, client_id: str) -> list[Action]:
        now = self.clock()
        connected: dict[str, list[str]] = {}
        for worker in self.workers.values():
            if worker.identity is not None:
                connected.setdefault(worker.identity, []).append(worker.name)
        volunteers = []
        for volunteer in sorted(self.volunteers.by_name.values(), key=lambda v: v.created_at):
            summary = volunteer.summary(now)
            summary["connected"] = connected.get(volunteer.name, [])
            volunteers.append(summary)
        return [Send(client_id, p.VolunteersReply.of({"volunteers": volunteers}))]

    def _shut_out(self, workers: list[Worker], reason: str) -> list[Action]:
        """Close these workers' connections; their tasks are handed back, not counted as crashes."""
        actions: list[Action] = []
        for worker in workers:
            worker.draining = True
            actions += self.remove_worker(worker.worker_id)
            actions.append(Close(worker.worker_id, CloseCode.POLICY, reason))
        return actions

    def _save_records(self, worker_ids: Iterable[str]) -> list[Action]:
        """Journal the records of the volunteers among ``worker_ids``."""
        found = {id(w.volunteer): w.volunteer for w in map(self.workers.get, worker_ids) if w and w.volunteer}
        return [SaveVolunteer(volunteer) for volunteer in found.values()]

    def _trusted_outcome(self, task: Task, worker_id: str) -> bool:
        """Whether a trusted worker returned these bytes: the one reporting, or one that agreed with it."""
        voters = task.votes.get(task.winner, []) if task.winner is not None else []
        workers = [self.workers.get(w) for w in [worker_id, *voters]]
        return any(w is not None and w.trusted for w in workers)
