"""CrowdCompute: map Python functions over many worker processes.

    from crowdcompute import connect, map, run, disconnect

    await connect()                       # embedded foreman and workers
    squares = await map(lambda x: x * x, range(10))
    await disconnect()

Importing this package imports no Jupyter package; ``%load_ext crowdcompute``
loads the Jupyter layer from ``crowdcompute_jupyter``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    ConnectionLostError,
    CrowdComputeError,
    EnvironmentBuildError,
    ForemanUnavailableError,
    JobCancelledError,
    LocalModuleWarning,
    ProtocolError,
    QuorumError,
    SerializationError,
    TaskError,
    TaskTimeoutError,
    UntrustedPayloadError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from .api import attach, connect, disconnect, map, run, status, submit
    from .client import CrowdComputeClient
    from .executor import Executor
    from .job import Job, JobState

# The SDK loads on first use, so that the foreman, which imports
# crowdcompute.wire, never imports cloudpickle (it unpickles nothing).
_LAZY = {
    **{name: ".api" for name in ("attach", "connect", "disconnect", "map", "run", "status", "submit")},
    "CrowdComputeClient": ".client",
    "Executor": ".executor",
    "Job": ".job",
    "JobState": ".job",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'crowdcompute' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConnectionLostError",
    "CrowdComputeClient",
    "CrowdComputeError",
    "EnvironmentBuildError",
    "Executor",
    "ForemanUnavailableError",
    "Job",
    "JobCancelledError",
    "LocalModuleWarning",
    "JobState",
    "ProtocolError",
    "QuorumError",
    "SerializationError",
    "TaskError",
    "TaskTimeoutError",
    "UntrustedPayloadError",
    "WorkerCrashedError",
    "attach",
    "connect",
    "disconnect",
    "map",
    "run",
    "status",
    "submit",
]


def load_ipython_extension(ipython):  # pragma: no cover - exercised through IPython
    """``%load_ext crowdcompute``: load the Jupyter layer."""
    from crowdcompute_jupyter import load_ipython_extension as load

    load(ipython)
