"""Real ``oblix server`` processes for the tests, their test models, and a loopback "cloud".

* :class:`OblixServer` starts ``python -m oblix_core server`` on a free loopback port,
  with its own ``$OBLIX_HOME`` and ``config.toml``.
* This module is also an Oblix plugin, loaded by those processes through an entry point
  (:func:`write_plugin_dist` puts a ``.dist-info`` on their ``PYTHONPATH``). It registers
  three *test double* model types: ``scripted`` (the core's scripted backend: answers at
  once with an echo), ``paced`` (:class:`PacedBackend`: a fixed number of tokens at a
  set pace, reporting whether it is generating) and ``pid`` (:class:`PidBackend`: names the
  process that answered).
* ``python -m tests.server_process cloud --port N`` runs :func:`cloud_app`, a protocol
  double of an OpenAI-compatible endpoint (a test double, not OpenAI) that streams
  ``cloud t0 t1 ...`` at a set pace and counts the requests it receives (``GET /stats``),
  so that a test can kill it before or during an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from oblix_core import hookimpl
from oblix_core.models.backend import GenerationRequest, ModelBackend, StreamChunk
from oblix_core.testing import ScriptedPlugin
from tests.support.net import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent

# -- the test plugin (loaded inside server processes) -----------------------------------------


class PacedBackend(ModelBackend):
    """A test double model: ``[<messages received>]`` then `` t0 t1 ...``, one token per ``delay`` s.

    ``busy`` is true while a generation runs, like the llama.cpp backend's, so a test
    can see through ``/health`` that closing a stream stopped it. No usage is reported
    (the server then marks token counts as estimated).
    """

    model_type = "paced"
    end_is_complete = True

    def __init__(
        self, model_name: str, *, tokens: int = 5, delay: float = 0.0, first_delay: float = 0.0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("local", True)
        super().__init__(model_name, **kwargs)
        self.tokens = tokens
        self.delay = delay
        self.first_delay = first_delay
        self.active = 0

    @property
    def busy(self) -> bool:
        return self.active > 0

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        self.active += 1
        try:
            await anyio.sleep(self.first_delay)
            yield StreamChunk(f"[{len(request.messages)}]")
            for i in range(request.max_tokens or self.tokens):
                await anyio.sleep(self.delay)
                yield StreamChunk(f" t{i}")
        finally:
            self.active -= 1


class PidBackend(ModelBackend):
    """A test double model that says which process answered: ``[<messages received>] pid <pid>``.

    With ``oblix server --workers N`` it tells the workers apart.
    """

    model_type = "pid"
    end_is_complete = True

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("local", True)
        super().__init__(model_name, **kwargs)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk(f"[{len(request.messages)}] pid {os.getpid()}")


_scripted = ScriptedPlugin()


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("paced", PacedBackend)
    register("pid", PidBackend)
    _scripted.oblix_register_models(register)


def write_plugin_dist(folder: Path) -> Path:
    """A ``.dist-info`` in ``folder`` whose entry point loads this module as an Oblix plugin."""
    dist = folder / "oblix_server_test_models-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: oblix-server-test-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[oblix]\nservertest = tests.server_process\n")
    return folder


# -- server processes ----------------------------------------------------------------------------


def model_toml(type_: str, name: str, **options: Any) -> str:
    lines = ["[[models]]", f"type = {json.dumps(type_)}", f"name = {json.dumps(name)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


class OblixServer:
    """``oblix server`` in its own process on a free loopback port; output goes to ``log_path``.

    ``nofile`` lowers the process's descriptor limit (``ulimit -n``).
    """

    def __init__(
        self,
        home: Path,
        *args: str,
        plugin_dir: Path | None = None,
        api_key: str | None = None,
        agents: bool = False,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.home = home
        self.nofile = nofile
        self.args = args
        self.api_key = api_key
        self.port = free_port()
        self.log_path = home / f"server-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OBLIX_SERVER_API_KEY")}
        path = [str(plugin_dir)] if plugin_dir else []
        environ |= {"OBLIX_HOME": str(home), "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
        if not agents:  # no resource/connectivity agents: routing follows the configured preference
            environ["OBLIX_DISABLE_PLUGINS"] = "system"
        self.env = environ | (env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self, timeout: float = 120.0) -> OblixServer:
        args = [sys.executable, "-m", "oblix_core", "server", "--port", str(self.port), *self.args]
        if self.api_key:
            args += ["--api-key", self.api_key]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                preexec_fn=self._limit_descriptors if self.nofile else None,
            )
        try:
            wait_for_http(f"{self.root}/health", timeout=timeout, process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"oblix server did not start: {exc}\n{self.log()}") from None
        return self

    def _limit_descriptors(self) -> None:
        """In the child: lower the descriptor limit (``ulimit -n``) to ``nofile``."""
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def open_descriptors(self) -> int:
        """How many file descriptors the server process holds now (Linux ``/proc``)."""
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.root}/health", headers=self.auth, timeout=5).json())

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> OblixServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the loopback "cloud" --------------------------------------------------------------------------


def cloud_app(tokens: int, delay: float, first_delay: float) -> Any:
    """An OpenAI-compatible protocol double that streams ``cloud t0 t1 ...`` and counts requests."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    stats = {"requests": 0, "open": 0}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "cloud",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(data)}\n\n".encode()

    async def events(include_usage: bool) -> AsyncIterator[bytes]:
        stats["open"] += 1
        try:
            await anyio.sleep(first_delay)
            yield chunk({"role": "assistant", "content": "cloud"})
            for i in range(tokens):
                await anyio.sleep(delay)
                yield chunk({"content": f" t{i}"})
            yield chunk({}, "stop")
            if include_usage:
                usage = {"prompt_tokens": 3, "completion_tokens": tokens + 1, "total_tokens": tokens + 4}
                yield f"data: {json.dumps({'id': 'c1', 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            stats["open"] -= 1

    async def completions(request: Request) -> Any:
        stats["requests"] += 1
        body = await request.json()
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(events(usage), media_type="text/event-stream")

    async def get_stats(request: Request) -> Any:
        return JSONResponse(stats)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/stats", get_stats),
        ]
    )


class Cloud:
    """The loopback cloud in its own process, so that a test can SIGKILL it mid-answer."""

    def __init__(self, tokens: int = 5, delay: float = 0.0, first_delay: float = 0.0) -> None:
        self.port = free_port()
        self.options = [str(tokens), str(delay), str(first_delay)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Cloud:
        args = [sys.executable, "-m", "tests.server_process", "cloud", str(self.port), *self.options]
        self.process = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_http(f"http://127.0.0.1:{self.port}/stats", process=self.process)
        return self

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Cloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.server_process")
    parser.add_argument("what", choices=["cloud"])
    parser.add_argument("port", type=int)
    parser.add_argument("tokens", type=int)
    parser.add_argument("delay", type=float)
    parser.add_argument("first_delay", type=float)
    args = parser.parse_args(argv)
    import uvicorn

    app = cloud_app(args.tokens, args.delay, args.first_delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
