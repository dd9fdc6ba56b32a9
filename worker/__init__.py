"""The CrowdCompute worker: an agent that runs tasks in isolated child processes.

``WorkerAgent`` loads on first use: a task process (and the forkserver that
preloads ``worker.child``) never imports the agent's websockets and asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import WorkerAgent

__all__ = ["WorkerAgent"]


def __getattr__(name: str) -> Any:
    if name != "WorkerAgent":
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = importlib.import_module(".agent", __name__).WorkerAgent
    globals()[name] = value
    return value
