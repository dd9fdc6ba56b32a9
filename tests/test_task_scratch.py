"""A task's scratch folder between two tasks: kept when the task left it empty, known empty from one
``lstat`` while nothing changed in it, removed once anything did (pure: a temporary folder)."""

from __future__ import annotations

import os
import time

import pytest

from worker import child
from worker.child import _leave_scratch


@pytest.fixture
def folder(tmp_path):
    """A task's folder, its times a while back (as after a task that left it alone)."""
    path = tmp_path / "task-j-0"
    path.mkdir()
    past = time.time_ns() - 10**9
    os.utime(path, ns=(past, past))
    return str(path)


def later(monkeypatch, seconds: float = 1.0) -> None:
    """The clock ``seconds`` on: the folder's ctime (set by utime, now) is settled by then."""
    now = time.time_ns()
    monkeypatch.setattr(child.time, "time_ns", lambda: now + int(seconds * 1e9))


def test_an_empty_settled_folder_is_kept_and_then_known_from_its_lstat(folder, tmp_path, monkeypatch):
    later(monkeypatch)
    kept, seen = _leave_scratch(str(tmp_path), folder)
    assert kept == folder and seen is not None
    monkeypatch.setattr(child, "_is_empty", lambda _: pytest.fail("looked inside an unchanged folder"))
    assert _leave_scratch(str(tmp_path), folder, seen) == (folder, seen)


def test_a_file_left_in_a_settled_folder_is_seen_and_the_folder_removed(folder, tmp_path, monkeypatch):
    later(monkeypatch)
    kept, seen = _leave_scratch(str(tmp_path), folder)
    assert seen is not None
    with open(os.path.join(folder, "left.txt"), "w") as file:
        file.write("for the next task")
    assert _leave_scratch(str(tmp_path), folder, seen) == (None, None)
    assert not os.path.exists(folder)


def test_a_folder_whose_mode_changed_is_looked_into_again(folder, tmp_path, monkeypatch):
    later(monkeypatch)
    kept, seen = _leave_scratch(str(tmp_path), folder)
    os.chmod(folder, 0o500)  # still usable by root, who runs CI; not by anyone else
    looked = []
    monkeypatch.setattr(child, "_is_empty", lambda path: looked.append(path) or True)
    _leave_scratch(str(tmp_path), folder, seen)
    assert looked == [folder], "a changed mode must send it back to looking inside"


def test_a_folder_changed_just_now_is_looked_into_next_time(tmp_path):
    path = tmp_path / "task-j-1"
    path.mkdir()  # its times are now: a change in the same clock tick could leave them equal
    kept, seen = _leave_scratch(str(tmp_path), str(path))
    assert kept == str(path) and seen is None
