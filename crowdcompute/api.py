"""Module-level functions that act on the default client set by ``connect``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .client import CrowdComputeClient
from .errors import CrowdComputeError
from .job import Job

__all__ = ["attach", "connect", "default_client", "disconnect", "map", "run", "status", "submit"]

_default: CrowdComputeClient | None = None


def default_client() -> CrowdComputeClient:
    """The client ``connect`` made; raises CrowdComputeError when there is none."""
    if _default is None or not _default.connected:
        raise CrowdComputeError("not connected: call `await crowdcompute.connect()` first")
    return _default


async def connect(
    host: str | None = None,
    port: int | None = None,
    *,
    token: str | None = None,
    workers: int | None = None,
    timeout: float = 10,
    reconnect_timeout: float = 60,
    task_timeout: float | None = None,
    cafile: str | None = None,
    trust_workers: bool | None = None,
    serializer: str = "cloudpickle",
    requirements: Sequence[str] | str | None = None,
) -> CrowdComputeClient:
    """Connect to a foreman and make it the default for map, run, submit.

    ``host`` may be a name or a ``ws://h:p`` / ``wss://h:p`` URL. With no host:
    ``$CROWDCOMPUTE_ADDRESS`` (+ ``$CROWDCOMPUTE_TOKEN``) if set, else an
    embedded foreman with ``workers`` worker processes (default: CPU count),
    stopped by ``disconnect()``. A previous default client is disconnected.
    ``trust_workers=False`` decodes results as plain data only; by default only
    results from untrusted volunteers are, and ``True`` unpickles those too.
    ``serializer``: the default of map and submit ("cloudpickle" or "portable").
    ``requirements``: packages every job's environment has unless it names its own.

    Raises ForemanUnavailableError, AuthenticationError.
    """
    global _default
    client = CrowdComputeClient(
        host,
        port,
        token=token,
        workers=workers,
        timeout=timeout,
        reconnect_timeout=reconnect_timeout,
        task_timeout=task_timeout,
        cafile=cafile,
        trust_workers=trust_workers,
        serializer=serializer,
        requirements=requirements,
    )
    await client.connect()
    previous, _default = _default, client
    if previous is not None:
        await previous.disconnect()
    return client


async def map(
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    chunksize: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    progress: Any = None,
    trust_workers: bool | None = None,
    redundancy: int = 1,
    serializer: str | None = None,
    quorum: int | None = None,
    quorum_timeout: float | None = None,
    requirements: Sequence[str] | str | None = None,
    modules: Sequence[Any] = (),
    resources: Mapping[str, float | str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Any]:
    """``func`` over ``iterable`` on the cluster; results in input order (see CrowdComputeClient.map)."""
    return await default_client().map(
        func,
        iterable,
        chunksize=chunksize,
        timeout=timeout,
        retries=retries,
        progress=progress,
        trust_workers=trust_workers,
        redundancy=redundancy,
        serializer=serializer,
        quorum=quorum,
        quorum_timeout=quorum_timeout,
        requirements=requirements,
        modules=modules,
        resources=resources,
        labels=labels,
    )


async def run(
    func: Callable[..., Any],
    /,
    *args: Any,
    requirements: Sequence[str] | str | None = None,
    modules: Sequence[Any] = (),
    resources: Mapping[str, float | str] | None = None,
    labels: Mapping[str, str] | None = None,
    redundancy: int = 1,
    quorum: int | None = None,
    quorum_timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """``func(*args, **kwargs)`` on one worker; its result (what it needs as for ``map``)."""
    return await default_client().run(
        func,
        *args,
        requirements=requirements,
        modules=modules,
        resources=resources,
        labels=labels,
        redundancy=redundancy,
        quorum=quorum,
        quorum_timeout=quorum_timeout,
        **kwargs,
    )


async def submit(
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    chunksize: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    trust_workers: bool | None = None,
    redundancy: int = 1,
    serializer: str | None = None,
    quorum: int | None = None,
    quorum_timeout: float | None = None,
    requirements: Sequence[str] | str | None = None,
    modules: Sequence[Any] = (),
    resources: Mapping[str, float | str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Job:
    """Send a job and return its Job once the foreman accepted it."""
    return await default_client().submit(
        func,
        iterable,
        chunksize=chunksize,
        timeout=timeout,
        retries=retries,
        trust_workers=trust_workers,
        redundancy=redundancy,
        serializer=serializer,
        quorum=quorum,
        quorum_timeout=quorum_timeout,
        requirements=requirements,
        modules=modules,
        resources=resources,
        labels=labels,
    )


async def attach(job_id: str) -> Job:
    """The Job of a job submitted earlier (by this or another process holding the token)."""
    return await default_client().attach(job_id)


async def status() -> dict:
    """The foreman's workers, slots and jobs."""
    return await default_client().status()


async def disconnect() -> None:
    """Disconnect the default client (and stop its embedded cluster); idempotent."""
    global _default
    client, _default = _default, None
    if client is not None:
        await client.disconnect()
