"""Which role may send each message type, and the scheduler call that handles it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import Role

from .scheduler import Action, Scheduler
from .state import Send

__all__ = ["ROUTES", "Route"]

M = TypeVar("M", bound=p.Message)
Handler = Callable[[Scheduler, str, Any], list[Action]]


@dataclass(frozen=True)
class Route:
    """Which role may send a message type, and the scheduler call that handles it."""

    message_type: type[p.Message]
    role: Role
    handler: Handler


def _route(message_type: type[M], role: Role, handler: Callable[[Scheduler, str, M], list[Action]]) -> Route:
    """A table entry whose handler type-checks against its message type."""
    return Route(message_type, role, handler)


#: Every message a peer may send after its Hello, by type: who may send it and what handles it.
ROUTES: dict[type[p.Message], Route] = {
    route.message_type: route
    for route in (
        _route(p.SubmitJob, Role.CLIENT, lambda s, conn, msg: s.submit_job(conn, msg)),
        _route(p.SubmitTask, Role.CLIENT, lambda s, conn, msg: s.submit_task(conn, msg)),
        _route(p.CancelJob, Role.CLIENT, lambda s, conn, msg: s.cancel_job(conn, msg.job_id)),
        _route(p.StatusRequest, Role.CLIENT, lambda s, conn, msg: [Send(conn, p.StatusReply.of(s.status()))]),
        _route(p.AttachJob, Role.CLIENT, lambda s, conn, msg: s.attach_job(conn, msg.job_id, msg.resume)),
        _route(p.CollectJob, Role.CLIENT, lambda s, conn, msg: s.collect_job(conn, msg.job_id)),
        _route(p.AckResults, Role.CLIENT, lambda s, conn, msg: s.ack_results(conn, msg.job_id, msg.task_ids)),
        # Admin requests on a client connection (the client token is the admin's): see foreman.credentials.
        _route(p.InviteVolunteer, Role.CLIENT, lambda s, conn, msg: s.invite_volunteer(conn, msg)),
        _route(p.RevokeVolunteer, Role.CLIENT, lambda s, conn, msg: s.revoke_volunteer(conn, msg)),
        _route(p.ListVolunteers, Role.CLIENT, lambda s, conn, msg: s.list_volunteers(conn)),
        _route(p.TaskDone, Role.WORKER, lambda s, conn, msg: s.task_done(conn, msg)),
        _route(p.TaskCrashed, Role.WORKER, lambda s, conn, msg: s.task_crashed(conn, msg)),
        _route(p.TaskCancelled, Role.WORKER, lambda s, conn, msg: s.task_cancelled(conn, msg)),
        _route(p.TaskOutput, Role.WORKER, lambda s, conn, msg: s.task_output(conn, msg)),
        _route(p.TaskProgress, Role.WORKER, lambda s, conn, msg: s.task_output(conn, msg)),
        _route(p.WorkerDraining, Role.WORKER, lambda s, conn, msg: s.worker_draining(conn)),
        _route(p.EnvironmentStatus, Role.WORKER, lambda s, conn, msg: s.environment_status(conn, msg)),
    )
}
