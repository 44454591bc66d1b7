"""A scripted HTTP server on loopback for the transport's and the client's tests: each accepted connection runs
a handler coroutine that reads requests and writes whatever bytes the test wants, well-formed or not."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

__all__ = ["Handler", "Peer", "Server", "ok", "run", "serve"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], bound: float = 5.0) -> T:
    """Run `main` in a fresh event loop, bounded: a hung exchange fails the test instead of stalling it."""

    async def bounded() -> T:
        async with asyncio.timeout(bound):
            return await main

    return asyncio.run(bounded())


def ok(body: bytes = b"ok", *lines: bytes, status: bytes = b"200 OK", version: bytes = b"1.1") -> bytes:
    """An answer framed by Content-Length, with extra header `lines`."""
    head = b"HTTP/%s %s\r\nContent-Length: %d\r\n" % (version, status, len(body))
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, server: Server, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        self.eof = asyncio.Event()  # the client closed its side

    async def request(self) -> bytes | None:
        """The next request (head and Content-Length body), recorded; None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        request = head + await self.reader.readexactly(length)
        self.server.requests.append((self.index, request))
        return request

    async def requests(self) -> AsyncIterator[bytes]:
        while (request := await self.request()) is not None:
            yield request

    async def send(self, *pieces: bytes, gap: float = 0.0) -> None:
        """Write `pieces` one by one (drained; `gap` seconds apart: separate reads for the client)."""
        for i, piece in enumerate(pieces):
            if i and gap:
                await asyncio.sleep(gap)
            self.writer.write(piece)
            await self.writer.drain()

    async def until_closed(self) -> None:
        """Read and drop whatever comes until the client closes the connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.eof.set()


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[tuple[int, bytes]] = []  # (connection index, request bytes)
        self.errors: list[BaseException] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.peers)

    def url(self, path: str = "/", scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    def accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        task = asyncio.get_running_loop().create_task(self._serve(peer))
        self.tasks.add(task)

    async def _serve(self, peer: Peer) -> None:
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what several tests do on purpose
        except Exception as exc:
            self.errors.append(exc)
        finally:
            peer.writer.close()


@asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A raw socket server in this loop (over TLS with `tls`); each connection runs `handler`. Its errors fail
    the test."""
    server = Server(handler)
    listener = await asyncio.start_server(server.accepted, host, 0, ssl=tls)
    server.host = host
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in server.tasks:
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()
    assert not server.errors, server.errors
