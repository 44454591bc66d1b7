"""A TCP relay on loopback between `uploader` and the shared PostgreSQL server, for
tests/test_adversary_postgres.py: the test decides what happens to the ledger's connections without touching the
server itself (other people's tests use it).

`PgProxy(target)` listens on a free loopback port and relays every connection to `target`. The test can:

- `cut()`: close every open connection at once (an RST both ways: a network that drops, a server that died);
- `stall()` / `resume()`: stop forwarding bytes on every connection, open and new (or, `existing_only`, on the
  open ones alone), without closing anything (a frozen server, a NAT that forgot the flow, a cable pulled: the
  client's socket sees nothing at all);
- `refuse()` / `accept()`: stop listening (new connections are refused) and start again on the same port;
- `arm(pattern, after=…)`: cut every connection the moment a client sends bytes holding `pattern` (a statement's
  text: the ledger's traffic is plain text on loopback, sslmode=disable), either before the bytes reach the
  server (`after=False`: the statement never ran) or after (`after=True`: it ran, and was perhaps committed, but
  its answer never comes back).

`seen` counts the client's messages holding each armed or watched pattern (`watch(pattern)`), so a test can wait
for a moment of the command's work (its claims, its result writes, its heartbeats).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections import Counter
from typing import Self

from sqlalchemy.engine import make_url


class _Pipe:
    def __init__(self, proxy: PgProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.closed = False
        self.paused = False  #: this connection alone stalled (`stall(existing_only=True)`)
        self.thread = threading.Thread(target=self._relay, name="pg-proxy-pipe", daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def _relay(self) -> None:
        try:
            while not self.closed:
                if self.proxy.stalled or self.paused:
                    self.proxy.stall_tick.wait(0.05)
                    continue
                try:
                    readable, _, _ = select.select([self.client, self.server], [], [], 0.05)
                except (OSError, ValueError):
                    break
                for sock in readable:
                    if self.proxy.stalled or self.paused or self.closed:
                        break
                    data = sock.recv(65536)
                    if not data:
                        self.close()
                        return
                    if sock is self.client and not self.proxy._inspect(data, before=True):
                        self.proxy.cut()
                        return
                    (self.server if sock is self.client else self.client).sendall(data)
                    if sock is self.client and not self.proxy._inspect(data, before=False):
                        self.proxy.cut()
                        return
        except OSError:
            pass
        finally:
            self.close()


class PgProxy:
    """`with PgProxy(("127.0.0.1", 5432)) as proxy:`; `proxy.url(db_url)` is `db_url` through the relay."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.stalled = False
        self.stall_tick = threading.Event()
        self.pipes: list[_Pipe] = []
        self.accepted = 0
        self.seen: Counter[bytes] = Counter()
        self.watched: set[bytes] = set()
        self._armed: tuple[bytes, bool, int, bool] | None = None  #: (pattern, after, skip, at_commit)
        self._commit_next = False
        self._nth: tuple[int, bool] | None = None  #: (cut at this message number, after forwarding it)
        self.messages = 0  #: client messages relayed so far, over all connections
        self.fired = 0  #: how many times an armed pattern cut the connections
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closing = False
        self.port = 0
        self._listen()

    # -- control ----------------------------------------------------------------------------------------

    def url(self, db_url: str) -> str:
        """`db_url` with its host and port replaced by the relay's, and no TLS (the relay reads the traffic)."""
        u = make_url(db_url).set(host="127.0.0.1", port=self.port)
        u = u.update_query_dict({"sslmode": "disable"})
        return u.render_as_string(hide_password=False)

    def cut(self) -> None:
        with self._lock:
            pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            pipe.close()

    def stall(self, *, existing_only: bool = False) -> None:
        """Forward nothing more on the open connections and (unless `existing_only`) on new ones."""
        self.stall_tick.clear()
        if existing_only:
            with self._lock:
                for pipe in self.pipes:
                    pipe.paused = True
        else:
            self.stalled = True

    def resume(self) -> None:
        self.stalled = False
        with self._lock:
            for pipe in self.pipes:
                pipe.paused = False
        self.stall_tick.set()

    def refuse(self) -> None:
        """Stop listening: a new connection is refused (ECONNREFUSED); open ones go on."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
            except OSError:
                pass
            listener.close()

    def accept(self) -> None:
        if self._listener is None:
            self._listen(self.port)

    def watch(self, pattern: bytes) -> None:
        self.watched.add(pattern)

    def arm(self, pattern: bytes, *, after: bool, skip: int = 0, at_commit: bool = False) -> None:
        """Cut every connection once a client message holding `pattern` is seen (after `skip` such messages
        passed untouched): before it is forwarded, or right after; with `at_commit`, right after the COMMIT
        that follows it (the transaction is committed at the server, its answer never comes back). Fires once."""
        self.watched.add(pattern)
        self._commit_next = False
        self._armed = (pattern, after, skip, at_commit)

    def arm_nth(self, n: int, *, after: bool) -> None:
        """Cut every connection at the `n`-th client message from now on (counted over all connections): before
        it is forwarded, or right after. Fires once."""
        with self._lock:
            self._nth = (self.messages + n, after)

    @property
    def armed(self) -> bool:
        """Whether a cut is still waiting for its moment."""
        return self._armed is not None or self._nth is not None

    def disarm(self) -> None:
        self._armed = None
        self._nth = None

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for p in self.pipes if not p.closed)

    def close(self) -> None:
        self._closing = True
        self.refuse()
        self.resume()
        self.cut()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside -----------------------------------------------------------------------------------------

    def _listen(self, port: int = 0) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="pg-proxy-accept", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refuse() closed it
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self.pipes.append(_Pipe(self, client, server))

    def _inspect(self, data: bytes, *, before: bool) -> bool:
        """Count the watched patterns in a client message (once, before it is sent); False: cut now."""
        with self._lock:
            if before:
                self.messages += 1
            if self._nth is not None and self.messages == self._nth[0] and before != self._nth[1]:
                self._nth, self.fired = None, self.fired + 1
                return False
            if before:
                for pattern in self.watched:
                    if pattern in data:
                        self.seen[pattern] += 1
            armed = self._armed
            if armed is None:
                return True
            pattern, after, skip, at_commit = armed
            if at_commit and self._commit_next:
                if not before and b"COMMIT" in data:
                    self._armed, self.fired = None, self.fired + 1
                    return False
                return True
            if pattern not in data or self.seen[pattern] <= skip:
                return True
            if at_commit:
                self._commit_next = True
                return True
            if before != (not after):
                return True
            self._armed, self.fired = None, self.fired + 1
            return False
