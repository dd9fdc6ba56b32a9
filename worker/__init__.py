"""The CrowdCompute worker: an agent that runs tasks in isolated child processes."""

from __future__ import annotations

from .agent import WorkerAgent

__all__ = ["WorkerAgent"]
