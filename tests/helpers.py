"""Small helpers for tests that drive the async SDK from plain test functions."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

#: Default limit for one test's async body, in seconds.
ASYNC_TIMEOUT = 30.0


def arun(awaitable: Awaitable[Any], timeout: float = ASYNC_TIMEOUT) -> Any:
    """Run ``awaitable`` in a fresh event loop, failing after ``timeout`` seconds."""

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the test's async body did not finish within {timeout} s") from None

    return asyncio.run(bounded())
