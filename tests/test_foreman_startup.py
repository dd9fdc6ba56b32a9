"""A foreman that cannot start says in one line what is wrong and with which file (real processes)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

#: Seconds a foreman that cannot start may take to say so.
EXIT_TIMEOUT = 30


def run_foreman(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``crowdcompute foreman --port 0 ARGS`` run to its end (it must not start)."""
    return subprocess.run(
        [sys.executable, "-m", "crowdcompute", "foreman", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        cwd=cwd,
    )


def refused(*args: str, cwd=None, code: int = 1) -> str:
    """The one line a foreman that refuses ARGS prints; it exits ``code`` with no traceback."""
    done = run_foreman(*args, cwd=cwd)
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr and "listening" not in done.stdout, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_a_bad_journal_is_named_and_not_blamed_on_listening(tmp_path):
    assert refused("--journal", "/proc/nope/x.sqlite3") == (
        "error: cannot open the journal /proc/nope/x.sqlite3: /proc/nope: No such file or directory"
    )
    (tmp_path / "notdb.sqlite3").write_text("not a database " * 100)
    done = run_foreman("--journal", "notdb.sqlite3", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (
        "error: the journal notdb.sqlite3 is not a CrowdCompute journal (file is not a database): "
        "move it away or pass another --journal"
    )


def test_tls_files_that_are_missing_swapped_or_mismatched_are_named(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    mine, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    mine.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    mine.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))

    def tls(cert: str, key: str) -> str:
        return refused("--certfile", cert, "--keyfile", key, cwd=tmp_path)

    assert tls("nope.pem", "key.pem") == "error: cannot read the certificate file nope.pem: No such file or directory"
    assert tls("cert.pem", "nope.pem") == "error: cannot read the key file nope.pem: No such file or directory"
    assert tls("key.pem", "cert.pem") == (
        "error: the certificate file key.pem holds no PEM certificate: --certfile and --keyfile are swapped"
    )
    assert tls("cert.pem", "other-key.pem") == (
        "error: the key file other-key.pem is not the private key of the certificate cert.pem"
    )


def test_a_port_out_of_range_is_an_argparse_error():
    assert refused("--port", "70000", code=2) == "crowdcompute foreman: error: --port must be 0-65535, not 70000"
    assert refused("--port", "-5", code=2) == "crowdcompute foreman: error: --port must be 0-65535, not -5"
    done = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "local", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("error: --port must be 0-65535, not 70000")


def test_a_port_in_use_is_still_a_listening_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "crowdcompute", "foreman", "--port", str(port), "--journal", "none"],
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
        )
    assert done.returncode == 1 and done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), done
