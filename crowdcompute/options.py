"""What a job asks for: the keyword arguments of map, submit and run, checked before anything is sent."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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

    def check(self) -> JobOptions:
        """These options with their numbers as int and float; TypeError for an option of the wrong
        type and ValueError for one out of range, saying which and what it takes."""
        options = replace(
            self,
            chunksize=_maybe_whole("chunksize", self.chunksize),
            timeout=_seconds("timeout", self.timeout),
            retries=_maybe_whole("retries", self.retries),
            redundancy=_whole("redundancy", self.redundancy),
            quorum=_maybe_whole("quorum", self.quorum),
            quorum_timeout=_seconds("quorum_timeout", self.quorum_timeout),
            resources=_mapping("resources", self.resources, "resource names and amounts", '{"gpu": 1}'),
            labels=_mapping("labels", self.labels, "label names and values", '{"site": "lab1"}'),
        )
        options._check_ranges()
        return options

    def _check_ranges(self) -> None:
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


def _whole(name: str, value: object) -> int:
    """``value`` as an int (numpy's integers too); TypeError for anything else, bool included."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be a whole number (int), not {value!r}")
    return operator.index(value)


def _maybe_whole(name: str, value: object) -> int | None:
    """``value`` as an int, or None; TypeError for anything else (see ``_whole``)."""
    return None if value is None else _whole(name, value)


def _seconds(name: str, value: object) -> float | None:
    """``value`` as a float (an int or numpy's numbers too), or None; TypeError for anything else."""
    if value is None:
        return None
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number of seconds (int or float), not {value!r}")
    return float(value)


def _mapping(name: str, value: object, holding: str, example: str) -> Mapping | None:
    """``value`` if it is a dict (any Mapping), or None; TypeError saying the shape expected otherwise."""
    if value is None or isinstance(value, Mapping):
        return value
    raise TypeError(f"{name} must be a dict of {holding}, such as {example}, not {value!r}")


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
