"""``oblix server --workers N``: N server processes answering on one listening socket.

The parent binds the socket, as gunicorn and uvicorn's own ``--workers`` do, and starts N
worker processes (``multiprocessing``, spawned). Each worker is a whole server — its own
client, models, agents, limits and metrics — and accepts connections from the shared
socket; the kernel gives each new connection to whichever worker takes it first. The
workers share what lives in the store: sessions, the usage ledger and models' persisted
health (``$OBLIX_HOME``, or Redis/S3), so a session continues on any worker.

The parent waits until every worker listens (a worker that fails to start stops them all,
with its error), restarts a worker that dies later, and on SIGINT or SIGTERM stops them
(SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT` s).
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import click

from oblix.plugin import ConfigError
from oblix_server.connections import BACKLOG
from oblix_server.serving import Launch, run

#: Seconds a worker gets to finish after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
#: Seconds between two checks that every worker is alive.
CHECK_INTERVAL = 0.5

_spawn = multiprocessing.get_context("spawn")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (``SO_REUSEADDR``, as uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None


def _worker(launch: Launch, sock: socket.socket, ready: Connection) -> None:
    """A worker process: serve on ``sock``; tell the parent when listening, or why it could not start."""
    try:
        run(launch, [sock], on_ready=lambda: ready.send("ready"))
    except Exception as exc:
        ready.send(str(exc) or type(exc).__name__)
        raise SystemExit(1) from None


class Worker:
    """One worker process and the pipe it reports on."""

    def __init__(self, launch: Launch, sock: socket.socket) -> None:
        self.ready, child_end = _spawn.Pipe(duplex=False)
        self.process: BaseProcess = _spawn.Process(
            target=_worker, args=(launch, sock, child_end), name="oblix-server-worker"
        )
        self.process.start()
        child_end.close()

    def poll(self) -> str | None:
        """``None`` while starting; ``"ready"``, or the error that stopped it."""
        if self.ready.poll():
            try:
                message: str = self.ready.recv()
            except EOFError:
                message = ""
            return message or f"the worker exited with code {self.process.exitcode}"
        return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM


class Supervisor:
    """Starts, watches and stops the workers of one ``oblix server --workers N``."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.sock = listen(launch.settings.host, launch.settings.port)
        self.workers: list[Worker] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM; a :class:`ConfigError` if a worker cannot start."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.workers = [Worker(self.launch, self.sock) for _ in range(self.launch.workers)]
            self._until_listening(self.workers)
            if not self.stopping.is_set():
                pids = ", ".join(str(w.process.pid) for w in self.workers)
                settings = self.launch.settings
                click.echo(
                    f"Oblix server on http://{settings.host}:{settings.port}/v1 · "
                    f"{len(self.workers)} workers (processes {pids})",
                    err=True,
                )
            while not self.stopping.wait(CHECK_INTERVAL):
                self._replace_dead()
        finally:
            self._stop_all()
            self.sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()

    def _until_listening(self, workers: list[Worker]) -> None:
        """Wait until each of ``workers`` listens; the first that fails stops everything."""
        starting = list(workers)
        while starting and not self.stopping.is_set():
            wait([w.ready for w in starting] + [w.process.sentinel for w in starting], CHECK_INTERVAL)
            for worker in list(starting):
                message = worker.poll()
                if message is None and not worker.process.is_alive():
                    message = f"the worker exited with code {worker.process.exitcode}"
                if message is None:
                    continue
                if message != "ready":
                    raise ConfigError(f"A server worker could not start: {message}")
                starting.remove(worker)

    def _replace_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            if worker.process.is_alive() or self.stopping.is_set():
                continue
            click.echo(
                f"oblix server: worker {worker.process.pid} exited with code {worker.process.exitcode}; "
                "starting another",
                err=True,
            )
            self.workers[i] = Worker(self.launch, self.sock)
            self._until_listening([self.workers[i]])

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.process.join(STOP_TIMEOUT)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
