"""What the foreman does with the scheduler's actions: frames queued on the right connection,
the journal's writes and commits, the shared payload folder's bookkeeping, stored outcomes
replayed. A mixin of :class:`foreman.server.ForemanServer`, which reads the frames and asks
the scheduler; this half carries out what it says.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import FRAGMENT_SIZE

from .journal import Journal, read_outcome_frame, read_outcome_ids
from .peer import Peer
from .scheduler import Action, Scheduler
from .sharing import SharedPayloads
from .state import Close, Note, Replay, SaveResult, Send

__all__ = ["ActionExecution"]

log = logging.getLogger("crowdcompute.foreman")


class ActionExecution:
    """``_execute(actions)``, and the replay of a job's stored outcomes."""

    # Provided by the ForemanServer.
    scheduler: Scheduler
    journal: Journal | None
    payloads: SharedPayloads | None
    _peers: dict[str, Peer]

    def _execute(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions in order; commit the journal once at the end.

        A JobAccepted goes out only once the batch that journaled its job is
        committed (the journal writes in its own thread): "accepted" means durable.
        """
        accepted: list[Send] = []
        for action in actions:
            if isinstance(action, Note):
                log.log(logging.INFO if action.routine else logging.WARNING, "%s", action.text)
            elif isinstance(action, (Send, Close, Replay)):
                peer = self._peers.get(action.to)
                if peer is None:
                    continue  # the connection went away; the scheduler learns it in its finally
                if isinstance(action, Close):
                    peer.close(action.code, action.reason, logged=True)
                elif isinstance(action, Replay):
                    peer.queue_replay(action.job_id)
                elif self.journal is not None and isinstance(action.message, p.JobAccepted):
                    accepted.append(action)
                else:  # a ReleaseJob may wait a moment to ride along with the worker's next frame
                    message = self._readable(peer, action.message)
                    peer.queue_frame(
                        p.encode_parts(message), hold=isinstance(message, p.ReleaseJob), linger=action.linger
                    )
            else:
                if isinstance(action, SaveResult) and self.payloads is not None:
                    self.payloads.saved(action)
                if self.journal is not None:
                    self.journal.apply(action)
        if self.journal is not None:
            if accepted:
                loop = asyncio.get_running_loop()
                self.journal.commit(lambda: loop.call_soon_threadsafe(self._send_after_commit, accepted))
            else:
                self.journal.commit()

    def _send_after_commit(self, sends: list[Send]) -> None:
        for action in sends:
            peer = self._peers.get(action.to)
            if peer is not None:
                peer.queue_frame(p.encode_parts(self._readable(peer, action.message)))

    def _readable(self, peer: Peer, msg: p.Message) -> p.Message:
        """``msg`` with any payload file reference made the file's bytes for a peer that does not share files."""
        return msg if self.payloads is None else self.payloads.outgoing(peer, msg)

    def _forget_files(self, held: set[str]) -> None:
        """Jobs the scheduler no longer holds: without a journal, nothing will ask for their files again."""
        if self.payloads is not None and self.journal is None:
            self.payloads.forget(held - set(self.scheduler.jobs))

    async def _replay(self, websocket: ServerConnection, job_id: str) -> None:
        """Send a job's stored outcomes one by one, so a big job never sits in memory whole."""
        if self.journal is None:
            return
        peer = next((peer for peer in self._peers.values() if peer.websocket is websocket), None)
        for task_id in await self.journal.call_async(read_outcome_ids, job_id):
            frame = await self.journal.call_async(read_outcome_frame, job_id, task_id, self.journal.blobs)
            if frame is not None:
                if self.payloads is not None and peer is not None:
                    frame = self.payloads.outgoing_frame(peer, frame)
                await websocket.send(p.outgoing(p.frame_parts(frame), FRAGMENT_SIZE))
