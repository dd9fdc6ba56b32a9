"""A real Jupyter server for the server-extension tests, and code run in its kernels.

The extension is enabled the way an install enables it: by the JSON file in
``jupyter-config/jupyter_server_config.d/`` (found through
``$JUPYTER_CONFIG_PATH``, since an editable install does not copy data files
to ``etc/jupyter``), and JupyterLab finds the prebuilt labextension in
``jupyter-data/labextensions/`` (through ``$JUPYTER_PATH``, for the same reason).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import Proc
from http_client import http_request
from websockets.sync.client import connect as ws_connect

__all__ = ["JUPYTER_CONFIG", "JUPYTER_DATA", "JupyterServer", "extension_enabled", "jupyter_server"]

JUPYTER_CONFIG = Path(__file__).resolve().parent.parent / "jupyter-config"
#: What the wheel installs to ``share/jupyter``: the prebuilt labextension (built from ``labextension/``).
JUPYTER_DATA = Path(__file__).resolve().parent.parent / "jupyter-data"
#: Seconds the server gets to print its URL.
SERVER_START_TIMEOUT = 60.0
#: Seconds a cell may run in a kernel.
CELL_TIMEOUT = 60.0


@dataclass
class JupyterServer:
    proc: Proc
    url: str
    token: str

    def get(self, path: str, *, authenticated: bool = True, timeout: float = 10) -> tuple[int, dict, bytes]:
        """GET ``path`` without following redirects: (status, headers, body)."""
        headers = {"Authorization": f"token {self.token}"} if authenticated else {}
        return http_request(self.url + path, headers, timeout=timeout)

    def run_in_kernel(self, *cells: str) -> list[str]:
        """Start a kernel through the REST API, run ``cells`` in it, shut it down; each cell's text output."""
        auth = {"Authorization": f"token {self.token}"}
        status, _, body = http_request(self.url + "/api/kernels", auth, method="POST", data=b"{}")
        assert status == 201, body
        kernel_id = json.loads(body)["id"]
        ws_url = self.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        try:
            with ws_connect(ws_url, additional_headers=auth, max_size=None) as ws:
                return [_execute(ws, code) for code in cells]
        finally:
            http_request(self.url + f"/api/kernels/{kernel_id}", auth, method="DELETE")


@pytest.fixture
def extension_enabled(monkeypatch):
    """Enable the server extension and the labextension as an install does (before a server starts)."""
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(JUPYTER_CONFIG))
    monkeypatch.setenv("JUPYTER_PATH", str(JUPYTER_DATA))


@pytest.fixture
def jupyter_server(crowd_home, tmp_path):
    """Factory: start ``jupyter server ARGS`` on 127.0.0.1, a free port and a token; stopped after the test."""
    started: list[Proc] = []

    def start(*args: str, env: dict | None = None) -> JupyterServer:
        environ = {**os.environ, **(env or {})}
        for name, folder in [
            ("JUPYTER_CONFIG_DIR", "jconfig"),
            ("JUPYTER_RUNTIME_DIR", "jruntime"),
            ("IPYTHONDIR", "ipython"),
        ]:
            environ[name] = str(tmp_path / folder)
        environ["JUPYTER_CONFIG_PATH"] = str(JUPYTER_CONFIG)
        environ["JUPYTER_PATH"] = str(JUPYTER_DATA)
        root = tmp_path / "jroot"
        root.mkdir(exist_ok=True)
        token = secrets.token_hex(16)
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environ,
        )
        proc = Proc(popen)
        started.append(proc)
        line = proc.wait_for_line("http://127.0.0.1:", timeout=SERVER_START_TIMEOUT)
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        _wait_until_listening(url, proc)
        return JupyterServer(proc, url, token)

    yield start
    for proc in started:
        proc.stop(timeout=20)  # SIGTERM: the server stops its kernels and the shared cluster


def _wait_until_listening(url: str, proc: Proc) -> None:
    """The server prints its URL before its loop binds the port: wait until it answers."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            if http_request(url + "/api", timeout=5)[0] == 200:
                return
        except OSError:  # refused (URLError): not listening yet
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer within {SERVER_START_TIMEOUT} s; output:\n" + "\n".join(proc.lines))
        time.sleep(0.05)


def _execute(ws, code: str) -> str:
    """Send an execute_request on the kernel's websocket; its stream and display text until idle."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": datetime.now(timezone.utc).isoformat(),
                },
                "parent_header": {},
                "metadata": {},
                "buffers": [],
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    output: list[str] = []
    deadline = time.monotonic() + CELL_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the cell did not finish within {CELL_TIMEOUT} s: {code!r}; output so far: {output}")
        try:
            msg = json.loads(ws.recv(timeout=remaining))
        except TimeoutError:
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            output.append(content["text"])
        elif kind in ("display_data", "execute_result"):
            output.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            pytest.fail(f"the cell raised {content['ename']}: {content['evalue']}\n" + "\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(output)
