"""Checks of what a job or worker names: resources, labels and requirements (shared by several messages)."""

from __future__ import annotations

from .framing import require as _require

__all__ = ["MAX_NEEDS", "check_labels", "check_requirements", "check_resources"]

#: Most requirements, resources and labels one job or worker may name.
MAX_NEEDS = 100


def check_resources(kind: str, resources: dict[str, float]) -> None:
    _require(len(resources) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} resources")
    for name, amount in resources.items():
        _require(
            isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount >= 0,
            f"{kind}: resource {name!r} must be a number of at least 0, not {amount!r}",
        )


def check_labels(kind: str, labels: dict[str, str]) -> None:
    _require(len(labels) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} labels")
    for name, value in labels.items():
        _require(isinstance(value, str), f"{kind}: label {name!r} must be text, not {value!r}")


def check_requirements(kind: str, requirements: list[str]) -> None:
    _require(len(requirements) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} requirements")
    _require(all(r.strip() for r in requirements), f"{kind}: a requirement must not be empty")
