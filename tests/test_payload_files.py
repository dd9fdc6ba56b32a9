"""Big payloads: buffers out of band, and files in the foreman's payload folder between peers on its host.

Pure tests for the codecs and references; integration tests run a real
foreman and real workers on this host, so both share the folder unless a
process is told not to (``CROWDCOMPUTE_SHARE_FILES=0``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import arun, wait_until

from crowdcompute import CrowdComputeClient
from crowdcompute.codecs import buffers
from crowdcompute.codecs.outcomes import decode_outcomes, dumps_outcomes
from crowdcompute.codecs.pickled import dumps_items, loads_items
from crowdcompute.wire import messages as p
from crowdcompute.wire.blobs import BLOB_THRESHOLD, SharedFolder, job_prefix, parse_reference
from crowdcompute.wire.constants import SHARE_FILES_VARIABLE

MB = 1_000_000


def echo(item):
    return item


def echo_slow(item):
    import time

    time.sleep(0.5)
    return item


def files_in(folder: str) -> list[str]:
    return sorted(path.name for path in Path(folder).iterdir() if path.name.endswith((".blob", ".part")))


def folder_of(cc: CrowdComputeClient) -> str:
    welcome = cc._open_link.welcome
    assert welcome is not None and welcome.blobs, "the foreman offered no payload folder"
    return welcome.blobs


# --- pure: the codecs ---------------------------------------------------------------


def test_big_buffers_travel_beside_the_pickle_and_come_back_equal_and_writable():
    array, data = np.arange(200_000, dtype=np.float64), os.urandom(300_000)
    items = [array, data, bytearray(data), memoryview(data), "small", b"tiny"]
    payload = dumps_items(items)
    assert isinstance(payload, p.Pieces), "big buffers were pickled in band"
    assert any(piece.obj is data for piece in payload.pieces if isinstance(piece, memoryview))  # not copied
    for received in (bytes(payload), bytearray(bytes(payload))):  # read-only as it arrived, or writable
        back = loads_items(received)
        assert np.array_equal(back[0], array) and back[0].flags.writeable
        assert back[1] == data and type(back[1]) is bytes
        assert back[2] == bytearray(data) and type(back[2]) is bytearray
        assert back[3] == data  # a memoryview comes back as bytes
        assert back[4:] == ["small", b"tiny"]
    small = dumps_items([1, b"x" * 100])
    assert isinstance(small, bytes) and pickle.loads(small) == [1, b"x" * 100]  # a plain pickle, as before


def test_outcomes_with_big_buffers_decode_trusted_and_as_plain_data():
    array = np.ones((300, 300))
    payload = bytes(dumps_outcomes([array, b"y" * 200_000, None], {}))
    assert buffers.is_buffered(payload)
    for trusted in (True, False):
        values, errors = decode_outcomes(payload, 3, trusted=trusted)
        assert not errors and np.array_equal(values[0], array) and values[1] == b"y" * 200_000
    small = dumps_outcomes([1, b"x" * 100, (2.5, "z")], {})
    assert isinstance(small, bytes) and pickle.loads(small) == ([1, b"x" * 100, (2.5, "z")], {})  # a plain pickle


def test_a_reference_names_a_file_of_its_job_and_a_bad_one_is_refused(tmp_path):
    folder = SharedFolder.create(tmp_path / "payloads")
    assert oct(folder.path.stat().st_mode & 0o777) == "0o700" and folder.proof()
    data = os.urandom(BLOB_THRESHOLD)
    ref = folder.write("job-1", [data[:10], memoryview(data)[10:]])
    name, size = parse_reference(ref)
    assert size == len(data) and name.startswith(job_prefix("job-1"))
    assert folder.check("job-1", ref) == (name, size)
    view = folder.read(ref)
    assert view == data and not view.readonly  # a private mapping: writable, the file untouched
    with pytest.raises(ValueError, match="not one of job"):
        folder.check("job-2", ref)
    with pytest.raises(ValueError, match="not a payload file"):
        parse_reference(ref[:12] + b"../../etc/passwd")
    folder.delete_job("job-1")
    with pytest.raises(ValueError, match="cannot be read"):
        folder.check("job-1", ref)
    assert parse_reference(pickle.dumps([1])) is None and parse_reference(b"") is None
    # A result whose file could not be read here fails its items with a sentence saying so.
    _, errors = decode_outcomes(ref, 2)
    assert "payload file" in str(errors[0]) and set(errors) == {0, 1}


def test_a_forgotten_jobs_stray_file_is_swept_and_other_jobs_files_stay():
    """A worker that wrote an outcome file and died before naming it leaves a stray: a job the
    foreman never saw a reference for is swept later, in one read of the folder for many jobs."""
    from foreman.sharing import SharedPayloads

    payloads = SharedPayloads(None)
    try:
        data = os.urandom(BLOB_THRESHOLD)
        stray = parse_reference(payloads.folder.write("job-gone", [data]))[0]
        kept = parse_reference(payloads.folder.write("job-running", [data]))[0]
        payloads.forget(["job-gone"])  # no reference was ever seen: nothing read at once
        assert (payloads.folder.path / stray).exists(), "forget read the folder for a job without files"
        payloads.sweep()
        assert not (payloads.folder.path / stray).exists(), "the stray file of a forgotten job was not swept"
        assert (payloads.folder.path / kept).exists(), "the sweep deleted a file of a job still held"
    finally:
        payloads.close()


# --- integration: a foreman and workers on this host ------------------------------------


@pytest.mark.parametrize("size", [BLOB_THRESHOLD - 200, BLOB_THRESHOLD, 3 * MB])
def test_payloads_at_and_over_the_threshold_go_there_and_back(start_foreman, start_worker, size):
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")
    data = os.urandom(size)
    items = [data, np.frombuffer(data[: size // 8 * 8], dtype=np.int64).copy(), [data[:1000], 7], "mixed"]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            results = await cc.map(echo, items, progress=False)
            assert results[0] == data and np.array_equal(results[1], items[1]) and results[2:] == items[2:]
            assert results[1].flags.writeable
            await wait_until(lambda: not files_in(folder_of(cc)), 10, "payload files left after the job")

    arun(main(), timeout=60)


def test_a_job_and_a_cancelled_job_leave_no_payload_file(start_foreman, start_worker):
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")
    blobs = [os.urandom(2 * MB) for _ in range(6)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            folder = folder_of(cc)
            assert await cc.map(echo, blobs, progress=False) == blobs
            await wait_until(lambda: not files_in(folder), 10, "payload files left after a collected job")
            job = await cc.submit(echo_slow, blobs)
            await wait_until(lambda: files_in(folder), 10, "the job's inputs never became files")
            job.cancel()
            await wait_until(lambda: not files_in(folder), 10, "payload files left after a cancelled job")

    arun(main(), timeout=60)


def test_a_worker_that_cannot_share_files_gets_the_bytes_inline(start_foreman, start_worker, monkeypatch):
    foreman = start_foreman("--journal", "none")
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")
    start_worker(foreman.url, "--procs", "2")  # another host, as far as the folder goes
    monkeypatch.delenv(SHARE_FILES_VARIABLE)
    blobs = [os.urandom(2 * MB) for _ in range(4)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert cc._open_link.shared is not None, "the client on the foreman's host does not share its folder"
            assert await cc.map(echo, blobs, progress=False) == blobs
            await wait_until(lambda: not files_in(folder_of(cc)), 10, "payload files left after the job")

    arun(main(), timeout=60)


def test_a_foreman_told_not_to_share_files_offers_no_folder(start_foreman, start_worker):
    foreman = start_foreman("--journal", "none", "--no-shared-files")
    start_worker(foreman.url, "--procs", "1")
    blobs = [os.urandom(2 * MB) for _ in range(2)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert cc._open_link.welcome.blobs == "" and cc._open_link.shared is None
            assert await cc.map(echo, blobs, progress=False) == blobs

    arun(main(), timeout=60)


def test_a_client_that_cannot_share_files_sends_and_gets_the_bytes_inline(start_foreman, start_worker, monkeypatch):
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")
    blobs = [os.urandom(2 * MB) for _ in range(4)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert cc._open_link.shared is None
            assert await cc.map(echo, blobs, progress=False) == blobs

    arun(main(), timeout=60)


def test_a_restarted_foreman_finds_the_payload_files_its_journal_names(start_foreman, start_worker, tmp_path):
    journal = str(tmp_path / "journal.sqlite3")
    foreman = start_foreman("--journal", journal, "--token", "t0ken")
    blobs = [os.urandom(2 * MB) for _ in range(4)]

    async def main():
        async with CrowdComputeClient(foreman.url, token="t0ken", reconnect_timeout=30) as cc:
            folder = folder_of(cc)
            job = await cc.submit(echo, blobs)  # no worker yet: the inputs wait, as files, in the journal
            await wait_until(lambda: len(files_in(folder)) == len(blobs), 10, "the inputs never became files")
            foreman.proc.popen.kill()
            foreman.proc.popen.wait(10)
            stray = Path(folder) / f"{job_prefix('no-such-job')}-{'0' * 32}.out.blob"
            stray.write_bytes(b"left by a crash")
            orphan = Path(folder) / f"{job_prefix(job.id)}-{'1' * 32}.in.blob"  # written, never sent
            orphan.write_bytes(b"an input the journal never heard of")
            again = start_foreman("--journal", journal, "--token", "t0ken", port=foreman.port)
            assert not stray.exists(), "the restarted foreman kept a file no job of its journal names"
            assert not orphan.exists(), "the restarted foreman kept an input file no task names"
            start_worker(again.url, "--procs", "2", "--token", "t0ken")
            assert await job == blobs
            # The inputs go once their tasks have outcomes; the outcomes stay with the journal for the TTL.
            await wait_until(
                lambda: len(files_in(folder)) == len(blobs), 10, f"the inputs' files stayed: {files_in(folder)}"
            )

    arun(main(), timeout=90)


def test_a_sandboxed_task_process_gets_its_big_input_and_returns_its_big_outcome(start_foreman, start_worker):
    from worker.sandbox import SandboxUnavailableError, find_bwrap

    try:
        find_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(str(exc))
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "1", "--sandbox")  # the sandbox hides the folder: the agent hands bytes
    blobs = [os.urandom(2 * MB) for _ in range(3)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert await cc.map(echo, blobs, progress=False) == blobs
            await wait_until(lambda: not files_in(folder_of(cc)), 10, "payload files left after the job")

    arun(main(), timeout=60)
