"""A client's requests about the foreman rather than its jobs: its status and the volunteers' credentials.

Answers come in the order the requests went out, so each kind waits in a
queue of futures. Mixed into :class:`crowdcompute.client.CrowdComputeClient`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from .errors import CrowdComputeError
from .wire import messages as p
from .wire.client_messages import volunteer_name_problem

if TYPE_CHECKING:
    from .link import Link

__all__ = ["AdminRequests"]


class AdminRequests:
    """``status``, ``invite``, ``revoke`` and ``volunteers`` (the client token is the admin's)."""

    timeout: float
    _status_waiters: deque[asyncio.Future]
    _admin_waiters: deque[asyncio.Future]

    if TYPE_CHECKING:

        @property
        def _open_link(self) -> Link: ...
        def _require_connection(self) -> None: ...

    async def status(self) -> dict:
        """The foreman's workers, slots and jobs as a dict."""
        return await self._ask(self._status_waiters, p.StatusRequest())

    async def invite(
        self, name: str, *, slots: int = 0, expires_in: float | None = None, trusted: bool = False
    ) -> tuple[str, dict]:
        """Admin: a credential for volunteer ``name``, and the volunteer as the foreman records it.

        Raises ValueError, before anything is sent, for a name the foreman would refuse or negative
        ``slots`` (0: the foreman's maximum); CrowdComputeError saying why the foreman refused (a name
        with a valid credential).
        """
        problem = volunteer_name_problem(name)
        if problem:
            raise ValueError(problem)
        if slots < 0:
            raise ValueError(f"slots must not be negative (0: the foreman's maximum), not {slots}")
        answer = await self._admin(p.InviteVolunteer(name, slots, expires_in, trusted))
        return answer["credential"], answer["volunteer"]

    async def revoke(self, name: str) -> dict:
        """Admin: refuse volunteer ``name`` from now on; its connections close. Its record, and how many closed."""
        return await self._admin(p.RevokeVolunteer(name))

    async def volunteers(self) -> list[dict]:
        """Admin: every invited volunteer and its record (tasks done, agreed, disagreed, missed deadlines...)."""
        return (await self._admin(p.ListVolunteers()))["volunteers"]

    async def _admin(self, request: p.Message) -> dict:
        answer = await self._ask(self._admin_waiters, request)
        if "error" in answer:
            raise CrowdComputeError(f"the foreman refused: {answer['error']}")
        return answer

    async def _ask(self, waiters: deque[asyncio.Future], request: p.Message) -> dict:
        self._require_connection()
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        self._open_link.send(request)
        return await asyncio.wait_for(waiter, self.timeout)

    def _answered(self, msg: p.Message) -> bool:
        """Hand a StatusReply or VolunteersReply to the oldest request of its kind; whether it was one."""
        read: Any
        if isinstance(msg, p.StatusReply):
            waiters, read = self._status_waiters, lambda: msg.status
        elif isinstance(msg, p.VolunteersReply):
            waiters, read = self._admin_waiters, lambda: msg.answer
        else:
            return False
        if waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                try:
                    waiter.set_result(read())
                except CrowdComputeError as exc:  # a body that is not a JSON object
                    waiter.set_exception(exc)
        return True
