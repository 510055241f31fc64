"""Real servers for the tests, started as subprocesses on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.net import free_port, wait_for_http


class LlamaServer:
    """``python -m llama_cpp.server``: a real OpenAI-compatible HTTP server."""

    def __init__(
        self, model: Path, api_key: str | None = None, port: int | None = None, threads: int | None = None
    ) -> None:
        self.model = model
        self.threads = threads
        self.api_key = api_key
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        args = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--chat_format",
            "alpaca",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "2048",
            "--seed",
            "1",
            "--interrupt_requests",
            "False",
        ]
        if self.api_key:
            args += ["--api_key", self.api_key]
        if self.threads:
            args += ["--n_threads", str(self.threads)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_http(f"http://127.0.0.1:{self.port}/v1/models", process=self.process)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
