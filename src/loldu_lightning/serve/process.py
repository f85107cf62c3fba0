"""The server in a child process, for scripts, benchmarks and tests: started on a free port, waited for
until `/health` answers, and stopped with its workers.

    with served(["--model", "minilm", "--adapters", "adapters/"], log_file=Path("server.log")) as url:
        httpx.post(f"{url}/predict", json={...})
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(process: subprocess.Popen, url: str, log_file: Path, timeout_s: float) -> None:
    """Return once `url/health` answers 200; a RuntimeError with the log's tail if the server exits
    first or does not answer within `timeout_s` (loading a model takes seconds to minutes)."""
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log_file.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not become healthy within {timeout_s:.0f} s (log: {log_file})")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server stops its workers), then SIGKILL; and any worker left in its session."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def served(arguments: Sequence[str], log_file: Path, timeout_s: float = 600) -> Iterator[str]:
    """`python -m loldu_lightning.serve <arguments> --port <free port>` until the block ends; yields its URL.

    The server runs in its own session, so that stopping it also stops the worker processes it starts.
    """
    port = free_port()
    command = [sys.executable, "-m", "loldu_lightning.serve", *arguments, "--port", str(port)]
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(process, url, log_file, timeout_s)
            yield url
        finally:
            stop(process)
