"""A worker agent's preparation of a job's environment: built once per job, its state told to the foreman.

Mixed into :class:`worker.agent.WorkerAgent`, which owns the state read here.
"""

from __future__ import annotations

import asyncio
import logging

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import EnvironmentState

from .environments import BuildFailed, Environments

__all__ = ["EnvironmentPreparation"]

log = logging.getLogger("crowdcompute.worker")


class EnvironmentPreparation:
    """``_prepare``: the site-packages folder of a job's environment (see :mod:`worker.environments`)."""

    name: str
    environments: Environments | None
    _builds: dict[str, asyncio.Task]
    _setup: dict[str, float]
    _keys: dict[str, str]
    _outbox: asyncio.Queue[list[bytes | memoryview]]

    async def _prepare(self, job_id: str, requirements: list[str]) -> str | None:
        """The site-packages folder of the job's environment, built once per job; None if it failed."""
        build = self._builds.get(job_id)
        if build is None:
            build = self._builds[job_id] = asyncio.create_task(self._build(job_id, requirements))
        return await asyncio.shield(build)

    async def _build(self, job_id: str, requirements: list[str]) -> str | None:
        def tell(state: EnvironmentState, reason: str = "", seconds: float = 0.0) -> None:
            self._outbox.put_nowait(p.encode_parts(p.EnvironmentStatus(job_id, state, reason, seconds)))

        if self.environments is None:
            tell(EnvironmentState.FAILED, f"worker {self.name} does not install packages (it runs with --no-install)")
            return None
        try:
            key = self._keys[job_id] = self.environments.key(requirements)
            self.environments.in_use = set(self._keys.values())
            building = self.environments.cached(key) is None
            if building:
                tell(EnvironmentState.BUILDING)
            site, seconds = await self.environments.ensure(requirements)
        except BuildFailed as exc:
            log.warning("job %s: %s", job_id, exc)
            tell(EnvironmentState.FAILED, f"worker {self.name}: {exc}")
            return None
        except Exception as exc:  # the installer itself is missing or broken: still not a crash
            log.exception("job %s: building its environment failed", job_id)
            tell(EnvironmentState.FAILED, f"worker {self.name} could not run the installer: {exc!r}")
            return None
        if seconds:
            self._setup[job_id] = seconds
        if building:  # (another job may have finished building it meanwhile: ready all the same)
            tell(EnvironmentState.READY, seconds=seconds)
        return str(site)
