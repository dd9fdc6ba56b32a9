"""What a job asks for: the keyword arguments of map, submit and run, checked before anything is sent."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .sizes import parse_amount
from .wire import messages as p
from .wire.constants import CHUNKS_PER_SLOT

__all__ = ["JobOptions", "chunk_size", "parse_requirements"]


@dataclass(frozen=True)
class JobOptions:
    """How a job runs; the keyword arguments of map and submit."""

    chunksize: int | None = None
    timeout: float | None = None
    retries: int | None = None
    trust_workers: bool | None = None
    redundancy: int = 1
    serializer: str | None = None
    quorum: int | None = None
    quorum_timeout: float | None = None
    requirements: Sequence[str] | str | None = None  # None: the client's default
    modules: Sequence[Any] = ()
    resources: Mapping[str, float | str] | None = None
    labels: Mapping[str, str] | None = None

    def check(self) -> None:
        """Raise ValueError for an option out of range, saying which."""
        if self.chunksize is not None and self.chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {self.chunksize}")
        if self.timeout is not None and not (0 < self.timeout < math.inf):
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout}")
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"retries must not be negative, not {self.retries}")
        if not 1 <= self.redundancy <= p.MAX_REDUNDANCY:
            raise ValueError(f"redundancy must be 1 to {p.MAX_REDUNDANCY}, not {self.redundancy}")
        if self.quorum is not None and not 1 <= self.quorum <= self.redundancy:
            raise ValueError(
                f"quorum must be 1 to redundancy ({self.redundancy}), not {self.quorum}: it is how many of the "
                "redundant runs must agree"
            )
        if self.quorum_timeout is not None and not (0 < self.quorum_timeout < math.inf):
            raise ValueError(f"quorum_timeout must be a positive number of seconds, not {self.quorum_timeout}")
        if self.redundancy == 1 and (self.quorum or 1) > 1:
            raise ValueError("quorum needs redundancy: pass redundancy=k with quorum=q <= k")

    def needs(self) -> tuple[dict[str, float], dict[str, str]]:
        """The job's resources (amounts as numbers) and labels; ValueError for a bad one, saying which."""
        resources: dict[str, float] = {}
        for name, amount in (self.resources or {}).items():
            value: object = parse_amount(amount) if isinstance(amount, str) else amount
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ValueError(
                    f"resources: {name!r} must be a number of at least 0 (or a size like '8GB'), not {amount!r}"
                )
            resources[str(name)] = float(value)
        labels = {str(name): value for name, value in (self.labels or {}).items()}
        for name, value in labels.items():
            if not isinstance(value, str):
                raise ValueError(f"labels: {name!r} must be text, not {value!r}")
        return resources, labels


def chunk_size(items: int, slots: int) -> int:
    """Items per task: about CHUNKS_PER_SLOT tasks per slot, at least one item."""
    size, extra = divmod(items, max(1, slots) * CHUNKS_PER_SLOT)
    return max(1, size + (1 if extra else 0))


def parse_requirements(requirements: Sequence[str] | str | None) -> list[str]:
    """A job's requirements as a list of non-empty strings (one string is one requirement)."""
    if requirements is None:
        return []
    if isinstance(requirements, str):
        requirements = [requirements]
    from packaging.requirements import InvalidRequirement, Requirement

    result = []
    for requirement in requirements:
        if not isinstance(requirement, str) or not requirement.strip():
            raise ValueError(f"requirements: each must be a requirement like 'numpy>=2', not {requirement!r}")
        try:
            Requirement(requirement)
        except InvalidRequirement as exc:
            raise ValueError(f"requirements: {requirement!r} is not a requirement like 'numpy>=2': {exc}") from None
        result.append(requirement.strip())
    return result
