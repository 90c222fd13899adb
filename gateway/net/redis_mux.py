"""One multiplexed, auto-pipelined Redis connection for the commands on the request path.

Design note (hand-written network code):
  * Replaces redis-py's connection pool for the two request-path commands (the limiter's EVALSHA, the session
    GETEX); `redis.multiplex: false` sends them through redis-py's pool again.
  * Measured gain: with it (and the lean upstream client, in the same bench step) the gateway with Redis and
    PostgreSQL went from 3.68x to 1.79x the bare proxy's CPU per request (docs/benchmark.md, "History of the
    hand-written network code"); sending both commands together made one round trip per request instead of two
    (tests/e2e/test_ratelimit_http.py `test_limits_and_session_lookup_share_one_redis_round_trip`).
  * Invariants: replies are matched to commands strictly in order, so a late reply drops the connection and fails
    everything in flight (never a reply given to the wrong caller); commands in flight are bounded; no TLS (callers
    stay on redis-py); failures are redis-py's exception types, so callers' degradation paths are unchanged.
  * Obsolete when redis-py (or another maintained asyncio client) pipelines concurrent commands on one connection
    at a comparable cost per command.

Every proxied call makes two Redis commands (the limiter's EVALSHA, the session GETEX). Through redis-py each one
checks a connection out of the pool, packs in Python, arms its own timeout and does its own send and recv: that
bookkeeping cost more gateway CPU than the rest of the request. Here all concurrent requests share one connection:
a command is packed (hiredis' C packer), queued with a future and written together with every other command of the
same event-loop iteration (one write syscall for many requests); Redis answers in order, so replies are matched to
the futures FIFO as hiredis parses them. One connection is enough: Redis executes commands one at a time anyway.

Failures look like redis-py's, so callers keep their handling: refused or lost connection -> `ConnectionError` for
every pending and new command (reconnected lazily by a later command, after a short backoff so a dead Redis does not
cost a connect attempt per request); a reply later than `timeout` -> `TimeoutError` for everything in flight, and
the connection is dropped (later replies would be matched to the wrong futures); too many commands in flight ->
`ConnectionError(BUSY)`, the message redis-py's BlockingConnectionPool uses when it has no free connection.

Only the hot path uses this; everything else (admin, pub/sub, pipelines, SCRIPT LOAD, probes) stays on redis-py.
TLS (`rediss://`) is not supported here: `RedisMux.from_url` returns None and callers stay on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int | float

# the message redis-py's BlockingConnectionPool raises when no connection frees up; the limiter decides such a
# request in process instead of declaring Redis down (gateway/ratelimit/backend.py)
BUSY = "No connection available."

_GRACE = 0.001
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0

# error replies whose class matters to callers; everything else is a plain ResponseError (as in redis-py)
_ERRORS: dict[str, type[ResponseError] | type[RedisConnectionError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,  # a ConnectionError: Redis is not serving yet
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


def reply_error(message: str) -> Exception:
    """The redis-py exception for an error reply: the code picks the class, the rest is the message."""
    code, _, rest = message.partition(" ")
    cls = _ERRORS.get(code)
    if cls is None:
        return ResponseError(message)
    return cls(rest)


def pack(args: tuple[Arg, ...]) -> bytes:
    try:
        # the stub types the tuple as one element long; any length is accepted
        packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    except TypeError as exc:  # bool, None and friends: redis-py refuses them too
        raise DataError(f"invalid argument in {args[:1]!r}: {exc}") from None
    return packed


class _Connection(asyncio.Protocol):
    """One socket: futures waiting for replies in send order, one pending write, one deadline timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, where: str) -> None:
        self._loop = loop
        self._timeout = timeout
        self._where = where
        self._transport: asyncio.Transport | None = None
        # ResponseError as the reply-error class: nested errors inside an array come back like redis-py's
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._overdue = False
        self.open = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError, f"Protocol error from {self._where}: {exc}")
                return
            if reply is False:  # RESP2 has no boolean replies: False only means "need more bytes"
                return
            if not pending:
                self.fail(RedisConnectionError, f"Unexpected reply from {self._where}")
                return
            fut = pending.popleft()[0]
            if fut.done():  # the caller gave up (cancelled); the reply still had to be consumed in order
                continue
            if type(reply) is ResponseError:
                fut.set_exception(reply_error(str(reply)))
            else:
                fut.set_result(reply)

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed Redis connection answers nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self.fail(RedisConnectionError, f"Connection to {self._where} lost{reason}")

    # -- commands

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        loop = self._loop
        fut: asyncio.Future[Any] = loop.create_future()
        self.pending.append((fut, loop.time() + self._timeout))
        self._out.append(packed)
        if not self._flush_scheduled:
            # every command of this loop iteration goes out in one write
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_at(self.pending[0][1], self._check_deadline)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.open and self._transport is not None:
            self._transport.write(data)

    def _check_deadline(self) -> None:
        # one timer per connection, not per command: replies are FIFO, so only the oldest one can be late first
        self._timer = None
        if not self.pending:
            self._overdue = False
            return
        deadline = self.pending[0][1]
        if deadline > self._loop.time():
            self._overdue = False
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        elif not self._overdue:
            # after a long loop iteration the reply may be unread in the socket (whether due timers run before the
            # poll depends on the loop and its libuv version): look once more after the next poll before giving up
            self._overdue = True
            self._timer = self._loop.call_later(_GRACE, self._check_deadline)
        else:
            self.fail(RedisTimeoutError, f"Timeout reading from {self._where}")

    def fail(self, cls: type[Exception], message: str) -> None:
        """Fail everything in flight and drop the socket: after a lost or late reply the order is unknown."""
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()
        pending, self.pending = self.pending, collections.deque()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(cls(message))  # one instance each: awaiting adds to its traceback


class RedisMux:
    """The shared hot-path connection to one Redis. Connects lazily; `execute` is safe from any coroutine."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.25,
        max_pending: int = 10_000,
    ) -> None:
        self._host = host
        self._port = port
        self._path = path
        self._db = db
        self._username = username
        self._password = password
        self._timeout = timeout
        self._max_pending = max_pending
        self.where = path if path is not None else f"{host}:{port}"
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN
        self._last_error: tuple[type[Exception], str] = (RedisConnectionError, "not connected")
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float, max_pending: int) -> RedisMux | None:
        """A mux for a redis-py URL (`redis://`, `unix://`); None for TLS, which stays on redis-py."""
        opts = parse_url(url)
        conn_cls = opts.get("connection_class")
        if conn_cls is not None and issubclass(conn_cls, SSLConnection):
            return None
        return cls(
            host=opts.get("host") or "localhost",
            port=int(opts.get("port") or 6379),
            path=opts.get("path"),
            db=int(opts.get("db") or 0),
            username=opts.get("username"),
            password=opts.get("password"),
            timeout=timeout,
            max_pending=max_pending,
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.open

    @property
    def in_flight(self) -> int:
        return len(self._conn.pending) if self._conn is not None else 0

    def execute(self, *args: Arg) -> Awaitable[Any]:
        """Send one command; await the result for its reply (bytes, int, list, None as redis-py returns them).

        Not a coroutine on purpose: while connected the future itself is returned, one frame less per command.
        """
        conn = self._conn
        if conn is not None and conn.open:
            if len(conn.pending) >= self._max_pending:
                raise RedisConnectionError(BUSY)
            return conn.send(pack(args))
        return self._execute_after_connect(args)

    def execute_packed(self, args: tuple[Arg, ...], packed: bytes) -> Awaitable[Any]:
        """`execute(*args)` for a command the caller sends often and packed once: `packed` must be `pack(args)`."""
        conn = self._conn
        if conn is not None and conn.open:
            if len(conn.pending) >= self._max_pending:
                raise RedisConnectionError(BUSY)
            return conn.send(packed)
        return self._execute_after_connect(args)

    async def _execute_after_connect(self, args: tuple[Arg, ...]) -> Any:
        conn = await self._connection(force=False)
        if len(conn.pending) >= self._max_pending:
            raise RedisConnectionError(BUSY)
        return await conn.send(pack(args))

    async def connect(self) -> None:
        """Connect now if not connected, ignoring the backoff (a probe that found Redis reachable calls this)."""
        await self._connection(force=True)

    async def _connection(self, *, force: bool) -> _Connection:
        if self._closed:
            raise RedisConnectionError("Redis hot-path connection closed")
        conn = self._conn
        if conn is not None and conn.open:
            return conn
        loop = asyncio.get_running_loop()
        if self._connecting is None:
            if not force and loop.time() < self._retry_at:
                cls, message = self._last_error
                raise cls(message)
            self._connecting = loop.create_task(self._open())
        task = self._connecting
        # shielded: one caller being cancelled must not abort the connect the others wait for
        await asyncio.shield(task)
        conn = self._conn
        if conn is None or not conn.open:
            cls, message = self._last_error
            raise cls(message)
        return conn

    async def _open(self) -> None:
        """One connect attempt (socket, AUTH, SELECT); the outcome is left in `_conn` or `_last_error`."""
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self._timeout, self.where)
        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    await loop.create_unix_connection(lambda: conn, self._path)
                else:
                    await loop.create_connection(lambda: conn, self._host, self._port)
                if self._password is not None:
                    auth: tuple[Arg, ...] = (self._password,)
                    if self._username is not None:
                        auth = (self._username, self._password)
                    await conn.send(pack(("AUTH", *auth)))
                if self._db:
                    await conn.send(pack(("SELECT", self._db)))
        except TimeoutError:  # asyncio.timeout's, the builtin
            conn.fail(RedisConnectionError, "connect timed out")
            self._failed(RedisTimeoutError, f"Timeout connecting to {self.where}")
        except OSError as exc:
            conn.fail(RedisConnectionError, "connect failed")
            self._failed(RedisConnectionError, f"Error {exc.errno} connecting to {self.where}. {exc.strerror or exc}.")
        except Exception as exc:  # an error reply to AUTH or SELECT, or the socket lost during them
            conn.fail(RedisConnectionError, "handshake failed")
            self._failed(type(exc), str(exc))
        except BaseException:  # cancelled by aclose: no half-open socket left behind
            conn.fail(RedisConnectionError, "Redis hot-path connection closed")
            raise
        else:
            if self._closed:
                conn.fail(RedisConnectionError, "Redis hot-path connection closed")
            else:
                self._conn = conn
                self._backoff = _BACKOFF_MIN
                self._retry_at = 0.0
        finally:
            self._connecting = None

    def _failed(self, cls: type[Exception], message: str) -> None:
        self._last_error = (cls, message)
        self._retry_at = asyncio.get_running_loop().time() + self._backoff
        self._backoff = min(_BACKOFF_MAX, self._backoff * 2)

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            task = self._connecting
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            self._conn.fail(RedisConnectionError, "Redis hot-path connection closed")
            self._conn = None
