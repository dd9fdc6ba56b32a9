"""The CrowdCompute foreman: accepts jobs, hands tasks to workers, returns results."""

from __future__ import annotations

from .scheduler import Scheduler
from .server import ForemanServer

__all__ = ["ForemanServer", "Scheduler"]
