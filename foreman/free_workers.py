"""Which worker gets the next lease, without looking at every worker (issue 12).

The foreman serves first the worker with an idle slot (a far worker's prefetch
room must not keep work from idle slots), then the one with the most free
room, then the one holding the fewest items (its slots run out of work first:
at a job's tail, equal workers then end within an item of each other), then
the one whose latest lease is oldest (so that ties between equally free
workers take turns), then the one that joined first. Scanning every
worker for that on every lease cost 0.4 µs per connected worker per task;
:class:`FreeWorkers` keeps the workers with free room in a heap ordered by
that rank instead, so that finding the best one costs O(log n).

Entries are invalidated lazily: a worker's rank changes on every lease,
unlease, change of its prefetch, drain or quarantine, and rather than find and
remove its old entry, a new one is pushed (``touch``) and the old one is
recognized as stale when it reaches the top (its rank is no longer the
worker's, or the worker left or has no room). Only a change that *raises* a
worker's rank needs a ``touch`` (a lease ended, its prefetch grew, it joined);
one that lowers it (it was quarantined or drains, a lease began elsewhere) is
found when its old entry is popped. Stale entries are dropped in one rebuild
when they outnumber the live workers, which keeps the heap O(n).

Workers are kept in one heap per *kind* (:func:`kind`: the labels, resources
and abilities that decide which jobs a worker may run). When no queued job
suits the best worker's kind, ``pop(skipping=...)`` passes over every worker
of that kind at once: a job waiting for the 10 GPU workers of a crowd of
10,000 costs one look per kind, not a pop of every idle CPU worker (45 ms a
task with 10,000 of them before).
"""

from __future__ import annotations

import heapq
import itertools

from .state import Worker

__all__ = ["MAX_KINDS", "FreeWorkers", "Kind", "kind", "rank"]

#: Stale heap entries tolerated beyond twice the connected workers before the heap is rebuilt.
STALE_ENTRIES_SLACK = 64

#: (no idle slot, -free room, items held, latest lease, order of joining): the least is served first.
Rank = tuple[int, int, int, int, int]
#: What decides which jobs a worker may run: (portable only, installs, labels, names of its resources).
Kind = tuple[bool, bool, tuple[tuple[str, str], ...], tuple[str, ...]]
#: Kinds kept apart; workers of further kinds share one heap that is never passed over (each pop
#: looks at the best worker of every kind, so their number must stay small).
MAX_KINDS = 32
#: The heap of the workers beyond MAX_KINDS kinds.
MIXED: Kind = (False, False, (), ("*",))


def rank(worker: Worker, joined: int) -> Rank:
    """Where ``worker`` stands for the next lease: the least rank is served first."""
    held = len(worker.running)
    items = sum(worker.running.values())
    return (0 if worker.slots > held else 1, held - worker.capacity, items, worker.last_lease, joined)


def kind(worker: Worker) -> Kind:
    """The worker's kind: workers of one kind suit the same jobs, but for how much of each resource
    they have and a job whose environment failed to build on one of them."""
    return (
        worker.portable_only,
        worker.installs,
        tuple(sorted(worker.labels.items())),
        tuple(sorted(worker.resources)),
    )


class FreeWorkers:
    """Connected workers with free room, best first (see the module docstring).

    ``add`` a worker when it joins, ``remove`` it when it leaves, ``touch`` it
    whenever its free room may have grown; ``pop`` the best one with room.
    A popped worker is out of the index until it is touched again: the caller
    touches it after leasing it a task, or after finding it can take nothing.
    """

    def __init__(self) -> None:
        self._heaps: dict[Kind, list[tuple[Rank, str]]] = {}  # one per kind of worker
        self._members: dict[str, tuple[Worker, int, Kind]] = {}  # worker id -> (worker, order of joining, kind)
        self._listed: dict[str, Rank] = {}  # worker id -> rank of its one live entry (absent: none)
        self._entries = 0  # in all heaps, stale ones included
        self._order = itertools.count()
        self._kind_sizes: dict[Kind, int] = {}  # connected workers of each kind

    def __len__(self) -> int:
        """Entries in the heaps, stale ones included (bounded by about twice the workers)."""
        return self._entries

    def kind_of(self, worker: Worker) -> Kind | None:
        """The kind ``worker`` is kept with; None if it shares the heap of mixed kinds."""
        found = self._members[worker.worker_id][2]
        return None if found == MIXED else found

    def add(self, worker: Worker) -> None:
        """``worker`` joined."""
        self.remove(worker.worker_id)
        found = kind(worker)
        if found not in self._heaps and len(self._heaps) >= MAX_KINDS:
            found = MIXED
        self._heaps.setdefault(found, [])
        self._members[worker.worker_id] = (worker, next(self._order), found)
        self._kind_sizes[found] = self._kind_sizes.get(found, 0) + 1
        self.touch(worker)

    def remove(self, worker_id: str) -> None:
        """The worker left: its entries are stale from now on; a kind it was the last of is dropped
        (with its heap), so that kinds that come and go do not use up MAX_KINDS."""
        member = self._members.pop(worker_id, None)
        self._listed.pop(worker_id, None)
        if member is None:
            return
        found = member[2]
        self._kind_sizes[found] -= 1
        if not self._kind_sizes[found]:
            del self._kind_sizes[found]
            self._entries -= len(self._heaps.pop(found, []))

    def touch(self, worker: Worker) -> None:
        """``worker``'s rank may have changed (a lease began or ended, its prefetch changed)."""
        worker_id = worker.worker_id
        member = self._members.get(worker_id)
        if member is None or member[0] is not worker or worker.free <= 0:
            return
        current = rank(worker, member[1])
        if self._listed.get(worker_id) == current:
            return  # its live entry says so already
        self._listed[worker_id] = current
        heapq.heappush(self._heaps.setdefault(member[2], []), (current, worker_id))
        self._entries += 1
        if self._entries > 2 * len(self._members) + STALE_ENTRIES_SLACK:
            self._rebuild()

    def pop(self, skipping: set[Kind] | frozenset[Kind] = frozenset()) -> Worker | None:
        """The best worker with free room, taken out of the index (None if none has room);
        workers of the kinds in ``skipping`` are passed over (and left in)."""
        listed = self._listed
        while True:
            best: list[tuple[Rank, str]] | None = None
            for worker_kind, heap in self._heaps.items():
                if worker_kind in skipping:
                    continue
                while heap and listed.get(heap[0][1]) != heap[0][0]:
                    heapq.heappop(heap)  # stale: it left, was taken out, or has a newer entry
                    self._entries -= 1
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                return None
            entry_rank, worker_id = heapq.heappop(best)
            self._entries -= 1
            del listed[worker_id]
            worker, joined, _ = self._members[worker_id]
            if worker.free <= 0:
                continue  # no room (quarantined, draining, leased elsewhere): touched again when it grows
            current = rank(worker, joined)
            if current <= entry_rank:  # (less: it rose without a touch, and is still the best there is)
                return worker
            listed[worker_id] = current  # it fell since its entry was made: it waits for its turn
            heapq.heappush(best, (current, worker_id))
            self._entries += 1

    def _rebuild(self) -> None:
        """Drop stale entries: one entry per worker with room, at its rank now."""
        self._listed = {
            worker_id: rank(worker, joined)
            for worker_id, (worker, joined, _) in self._members.items()
            if worker.free > 0 and worker_id in self._listed
        }
        self._heaps = {found: [] for _, _, found in self._members.values()}  # kinds with no room yet stay known
        for worker_id, listed in self._listed.items():
            self._heaps.setdefault(self._members[worker_id][2], []).append((listed, worker_id))
        for heap in self._heaps.values():
            heapq.heapify(heap)
        self._entries = len(self._listed)
