"""Running the sandbox: `Sandbox` (a background thread with its own event loop, for tests and
`uploader run --sandbox`) and `serve` (blocking, for `uploader sandbox`).

Both bind the socket themselves before serving, so the real port is known even when port 0 asked the
OS for a free one, and start-up costs a few milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from uploader.sandbox.app import SandboxApp
from uploader.sandbox.config import RUNTIME_FIELDS, SandboxConfig
from uploader.sandbox.journal import Journal, read_journal
from uploader.sandbox.state import SandboxState
from uploader.sandbox.stats import Stats

__all__ = ["Sandbox", "serve"]

T = TypeVar("T")
#: How long a stopping sandbox lets in-flight requests finish before cancelling them.
SHUTDOWN_GRACE_S = 0.25
_START_TIMEOUT_S = 10.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Engine:
    """One life of a sandbox server: state replayed from the journal, the app, the listening site."""

    def __init__(self, config: SandboxConfig) -> None:
        state = SandboxState()
        if config.state_file is not None:
            state.replay(read_journal(config.state_file))
        self.journal = Journal(config.state_file)
        self.app = SandboxApp(config, state, self.journal)
        self.runner: web.ServerRunner | None = None
        self.base_url = ""

    async def start(self, host: str, port: int) -> str:
        try:
            sock = _bind(host, port)
        except BaseException:
            self.journal.close()
            raise
        try:
            server = web.Server(self.app.handle, handler_cancellation=True, access_log=None)
            self.runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)
            await self.runner.setup()
            await web.SockSite(self.runner, sock).start()
        except BaseException:
            sock.close()
            self.journal.close()
            raise
        self.base_url = _url(sock)
        return self.base_url

    async def stop(self) -> None:
        try:
            if self.runner is not None:
                await self.runner.cleanup()
        finally:
            self.journal.close()

    def stats(self) -> dict[str, Any]:
        return self.app.stats.snapshot(self.app.state)

    def jobs(self) -> list[dict[str, Any]]:
        # A deep copy through JSON: exactly what /_sandbox/jobs would give, and safe to mutate.
        copy: list[dict[str, Any]] = json.loads(json.dumps(self.app.state.job_records()))
        return copy


class Sandbox:
    """The API emulator in a background thread: `with Sandbox(SandboxConfig(...)) as sb: ... sb.base_url`.

    A stopped sandbox can be started again: it listens on the same port and replays its state file
    (without one, a restart begins empty, like a real server that lost its memory).
    """

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config or SandboxConfig()
        self.host = host
        self.port = port
        self._engine: _Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._base_url = ""

    # -- public attributes ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash; known once started."""
        if not self._base_url:
            raise RuntimeError("the sandbox has not been started")
        return self._base_url

    @property
    def api_key(self) -> str:
        return self._config.api_key

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Start serving; returns once the socket accepts connections."""
        if self.running:
            return self
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        engine = _Engine(self._config)
        self._thread = threading.Thread(target=self._run, args=(engine, ready), name="uploader-sandbox", daemon=True)
        self._thread.start()
        try:
            self._base_url = ready.result(timeout=_START_TIMEOUT_S)
        except BaseException:
            self._thread.join(timeout=_START_TIMEOUT_S)
            self._thread = None
            raise
        self._engine = engine
        self.port = int(self._base_url.rsplit(":", 1)[1])  # a restart reuses the port clients know
        return self

    def _run(self, engine: _Engine, ready: concurrent.futures.Future[str]) -> None:
        async def main() -> None:
            try:
                url = await engine.start(self.host, self.port)
            except BaseException as exc:
                ready.set_exception(exc)
                return
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            ready.set_result(url)
            try:
                await self._stop_event.wait()
            finally:
                await engine.stop()

        asyncio.run(main())

    def stop(self) -> None:
        """Stop serving (in-flight requests get a short grace) and release the port; idempotent."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(event.set)
        thread.join()
        self._thread = self._loop = self._stop_event = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- introspection and control ----------------------------------------------------------------
    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop (where the state lives) and return its result."""
        loop = self._loop
        if loop is None or not self.running:
            return fn()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return result.result(timeout=_START_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        """Same document as GET /_sandbox/stats (after stop: the last run's figures)."""
        engine = self._engine
        return self._on_loop(engine.stats) if engine is not None else Stats().snapshot(SandboxState())

    def jobs(self) -> list[dict[str, Any]]:
        """Same list as GET /_sandbox/jobs: every stored job with its full data (empty before start)."""
        engine = self._engine
        return self._on_loop(engine.jobs) if engine is not None else []

    def configure(self, **changes: Any) -> None:
        """Change settings (faults, key, legacy, ...) on the fly; the state file is fixed at start."""
        if "state_file" in changes and self.running:
            raise ValueError("state_file cannot change while the sandbox runs")
        unknown = set(changes) - RUNTIME_FIELDS - {"state_file"}
        if unknown:
            raise TypeError(f"unknown sandbox settings: {', '.join(sorted(unknown))}")
        config = self._config.replace(**changes)
        self._config = config
        engine = self._engine
        if engine is not None and self.running:
            self._on_loop(lambda: engine.app.reconfigure(config))


def serve(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (or KeyboardInterrupt), then return cleanly.

    `on_ready(base_url)` is called once the socket listens. Every created job is already in the state
    file when it is answered, so stopping loses nothing.
    """

    async def main() -> None:
        engine = _Engine(config)
        url = await engine.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals on this platform
        try:
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await engine.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
