"""What a volunteer or a user sees when the foreman cannot be reached: said at once, with what to do.

Real foreman, worker and client processes; a test CA from trustme.
"""

from __future__ import annotations

import socket

import pytest
from conftest import spawn
from helpers import arun

from crowdcompute import CrowdComputeClient, ForemanUnavailableError
from crowdcompute.dialing import RetryNotices

trustme = pytest.importorskip("trustme")

#: Seconds within which a worker must say what is wrong: its first attempt fails at once.
SAY_WITHIN = 5.0


@pytest.fixture
def tls_foreman(start_foreman, tmp_path):
    """A wss:// foreman whose certificate (for 127.0.0.1 only) a private CA signed; yields (foreman, ca file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(cafile)
    foreman = start_foreman("--token", "tls-token", "--certfile", str(certfile), "--keyfile", str(keyfile))
    return foreman, cafile


def _watch(*args: str):
    """A worker process whose first lines we read; stopped by the caller."""
    return spawn("worker", *args, "--procs", "1", "--name", "volunteer")


def test_worker_says_at_once_to_pass_cafile_when_it_cannot_verify_the_certificate(tls_foreman, tmp_path):
    foreman, cafile = tls_foreman
    worker = _watch(foreman.url, "--token", "tls-token")
    try:
        line = worker.wait_for_line("certificate", timeout=SAY_WITHIN)
        assert "cannot verify the foreman's TLS certificate" in line and "--cafile" in line, line
    finally:
        assert worker.stop() == 0
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(other_ca)
    worker = _watch(foreman.url, "--token", "tls-token", "--cafile", str(other_ca))
    try:
        line = worker.wait_for_line("certificate", timeout=SAY_WITHIN)
        assert f"The CA in {other_ca} did not sign it" in line, line
    finally:
        assert worker.stop() == 0
    worker = _watch(foreman.url, "--token", "tls-token", "--cafile", str(cafile))
    try:
        worker.wait_for_line("connected to", timeout=SAY_WITHIN * 2)
    finally:
        assert worker.stop() == 0


def test_client_errors_say_what_to_pass_for_tls(tls_foreman):
    foreman, cafile = tls_foreman

    async def main():
        with pytest.raises(ForemanUnavailableError, match="cafile=") as caught:
            await CrowdComputeClient(foreman.url, token="tls-token", timeout=5).connect()
        assert "cannot verify the foreman's TLS certificate" in str(caught.value)
        by_name = foreman.url.replace("127.0.0.1", "localhost")
        with pytest.raises(ForemanUnavailableError, match="host name the certificate was issued for"):
            await CrowdComputeClient(by_name, token="tls-token", cafile=str(cafile), timeout=5).connect()
        plain = foreman.url.replace("wss://", "ws://")
        with pytest.raises(ForemanUnavailableError, match="use wss://"):
            await CrowdComputeClient(plain, token="tls-token", timeout=5).connect()

    arun(main())


def test_a_missing_cafile_is_named_and_said_what_it_is_for(tls_foreman, tmp_path):
    foreman, _ = tls_foreman
    missing = tmp_path / "nonexist.pem"

    async def main():
        with pytest.raises(FileNotFoundError) as caught:
            await CrowdComputeClient(foreman.url, token="tls-token", cafile=str(missing), timeout=5).connect()
        text = str(caught.value)
        assert str(missing) in text and "CA certificate" in text, text

    arun(main())
    worker = _watch(foreman.url, "--token", "tls-token", "--cafile", str(missing))
    try:
        assert worker.popen.wait(20) == 2  # at once, not retried
        worker.close()
        assert len(worker.lines) == 1, worker.lines
        assert worker.lines[0].startswith("error: ") and str(missing) in worker.lines[0], worker.lines
        assert "--cafile" in worker.lines[0] and "CA certificate" in worker.lines[0], worker.lines
    finally:
        worker.stop()


def test_worker_says_at_once_when_the_url_has_the_wrong_scheme(foreman):
    worker = _watch(foreman.url.replace("ws://", "wss://"), "--token", foreman.token)
    try:
        line = worker.wait_for_line("TLS", timeout=SAY_WITHIN)
        assert "use ws://" in line, line
    finally:
        assert worker.stop() == 0


def test_worker_says_at_once_that_nothing_listens(crowd_home):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = _watch(f"ws://127.0.0.1:{port}", "--token", "t")
    try:
        line = worker.wait_for_line("no foreman answered", timeout=SAY_WITHIN)
        assert f"nothing listens on 127.0.0.1:{port}" in line and "crowdcompute foreman" in line, line
    finally:
        assert worker.stop() == 0


def test_worker_with_a_wrong_token_exits_saying_which_option_to_pass(foreman):
    worker = _watch(foreman.url, "--token", "not-the-token")
    try:
        assert worker.popen.wait(20) == 1
        line = worker.wait_for_line("refused this worker token", timeout=SAY_WITHIN)
        assert "--token" in line and "CROWDCOMPUTE_WORKER_TOKEN" in line, line
    finally:
        worker.stop()


def test_client_says_when_a_foreman_does_not_answer(crowd_home):
    with socket.socket() as silent:  # accepts TCP connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"

        async def main():
            with pytest.raises(ForemanUnavailableError, match="no answer within 1 s") as caught:
                await CrowdComputeClient(url, token="t", timeout=1).connect()
            assert "firewall" in str(caught.value)

        arun(main())


def test_retry_notices_say_at_once_then_at_a_lower_rate():
    said, now = [], [0.0]
    notices = RetryNotices(said.append, interval=30, clock=lambda: now[0])
    notices.failed("refused")
    assert said == ["refused"]
    for _ in range(5):
        now[0] += 1
        notices.failed("refused")
    assert said == ["refused"], "an unchanged reason was repeated before the interval"
    notices.failed("TLS")  # a new reason is said at once
    now[0] += 31
    notices.failed("TLS")
    assert said == ["refused", "TLS", "TLS (and 0 more attempts since the last message)"]
    notices.reset()
    notices.failed("TLS")
    assert said[-1] == "TLS"
