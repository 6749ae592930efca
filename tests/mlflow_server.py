"""Tracking servers for tests: a real ``mlflow server`` process (:class:`MlflowServer`), and stand-ins that answer
one fixed way (:func:`answering`, :func:`silent_port`, :func:`closed_port`) for what a real one will not do here:
refuse a request, hang, or be something other than MLflow."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


class MlflowServer:
    """``mlflow server`` on a free loopback port: a SQLite backend and proxied artifacts in ``folder``.

    It runs in a process group of its own (uvicorn's worker is a child of the ``mlflow`` process), so that
    :meth:`stop` ends every process it started and none outlives the tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://{LOOPBACK}:{self.port}"
        self.artifacts = folder / "artifacts"
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        command = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"),
            *("--artifacts-destination", str(self.artifacts)),  # served through the server (mlflow-artifacts:/)
            *("--host", LOOPBACK, "--port", str(self.port), "--workers", "1"),
        ]
        # MLflow 3's job runner (GenAI jobs, six huey consumers) took 35 of 43 s of the start here and is unused
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        environment.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group; SIGKILL to whatever of it is left 15 s later."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group is named after the process that leads it
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _group_alive(group) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader, or the group stays alive as a zombie
            time.sleep(0.2)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, characters: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else "(no log)"


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextmanager
def closed_port() -> Iterator[int]:
    """A port bound but not listening: a connection is refused at once, and no other test can take the port."""
    with socket.socket() as bound:
        bound.bind((LOOPBACK, 0))
        yield bound.getsockname()[1]


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them from the backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind((LOOPBACK, 0))
        listening.listen(8)
        yield listening.getsockname()[1]


@contextmanager
def answering(responses: dict[str, tuple[int, str]], default: tuple[int, str] = (404, "Not Found")) -> Iterator[str]:
    """An HTTP server on a free port answering ``GET <path>`` with ``responses[path]`` (status, body; the query
    string is ignored), else ``default``: its URL."""

    class Fixed(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            status, body = responses.get(self.path.split("?", 1)[0], default)
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # keep the test's stderr for mot-neuro's own lines
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Fixed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
