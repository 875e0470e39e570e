"""A bandwidth-limited TCP proxy on loopback, to pull images as if over a slow link.

`layerwise bench pull` puts this proxy in front of the local registry (127.0.0.1:5000) so that the
Docker Engine and containerd download layers at a chosen rate (e.g. 100 Mbit/s) instead of at
loopback speed, where every plan would look equally fast. It also counts the bytes that really
crossed the "link" in each case, to cross-check the bytes the cost model predicted.

Design:
- Only the downstream direction (target -> client, what a host downloads) is throttled, through
  ONE token bucket shared by all connections: a host's link is shared by its parallel layer
  downloads. Upstream is passed through unthrottled (requests are tiny) but counted.
- The asyncio loop runs in a daemon thread, so synchronous callers (the CLI, tests) just
  start(), read `.port`, and stop(); stop() never blocks for long, even on a Ctrl-C path.
- Loopback only: it speaks plain TCP without authentication, so it must never face a network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["ThrottledProxy", "Traffic"]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024              # read size: large enough that Python overhead is per chunk, not per byte
MIN_BURST = 64 * 1024          # bytes; at least one chunk, or a full read could never be paid for
BURST_SECONDS = 1 / 50         # at high rates, allow 20 ms of bytes so timer jitter does not cut the rate
CONNECT_TIMEOUT = 10.0         # seconds to reach the target before dropping the client
LINGER = 1.0                   # seconds the client may keep talking after the target has closed
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Traffic:
    """Payload bytes that crossed the proxy (TCP/IP overhead not included) and connections accepted."""

    bytes_down: int = 0        # target -> client
    bytes_up: int = 0          # client -> target
    connections: int = 0
    body_down: int = 0         # of bytes_down, HTTP response bodies (the rest is status lines and headers)


# --- the proxy ---------------------------------------------------------------------------------

def _check_loopback(address: tuple[str, int], what: str, *, port_zero_ok: bool) -> tuple[str, int]:
    try:
        host, port = address
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (host, port) pair, not {address!r}") from None
    host = str(host).strip().strip("[]").lower()
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{what} host {address[0]!r} is not a loopback address "
                             f"(only 127.0.0.0/8, ::1 and localhost are allowed)") from None
        if not ip.is_loopback:
            raise ValueError(f"{what} host {address[0]!r} is not a loopback address "
                             f"(only 127.0.0.0/8, ::1 and localhost are allowed)")
    if not isinstance(port, int) or isinstance(port, bool) or not (0 if port_zero_ok else 1) <= port <= 65535:
        raise ValueError(f"{what} port must be an integer in 1..65535, not {port!r}")
    return host, port


class _TokenBucket:
    """Pacing shared by all downstream pumps. Lives on the loop thread only, so it needs no lock.

    Tokens may go negative: a reader takes what its chunk costs and sleeps off the debt. Later
    readers then queue behind earlier debt, so the total rate stays exact however many share it,
    and a sleep that overshoots is credited back on the next refill (no drift from timer jitter).
    """

    def __init__(self, bytes_per_second: float):
        self.rate = bytes_per_second
        self.burst = max(MIN_BURST, bytes_per_second * BURST_SECONDS)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class ThrottledProxy:
    """A TCP proxy from `listen` to `target`, both on loopback, with downloads limited to
    `bandwidth_bps` bits per second (None: unlimited). Use as a context manager, or start()/stop().
    """

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5000),
                 listen: tuple[str, int] = ("127.0.0.1", 0), bandwidth_bps: float | None = None):
        self.target = _check_loopback(target, "target", port_zero_ok=False)
        host, port = _check_loopback(listen, "listen", port_zero_ok=True)
        # "localhost" may resolve to both 127.0.0.1 and ::1, and port 0 would then give two ports.
        self.listen = ("127.0.0.1" if host == "localhost" else host, port)
        if bandwidth_bps is not None:
            if isinstance(bandwidth_bps, bool) or not isinstance(bandwidth_bps, (int, float)) \
                    or not (0 < bandwidth_bps < math.inf):
                raise ValueError(f"bandwidth_bps must be a positive number of bits per second or None, "
                                 f"not {bandwidth_bps!r}")
            bandwidth_bps = float(bandwidth_bps)
        self.bandwidth_bps = bandwidth_bps

        self._lock = threading.Lock()           # counters are written on the loop thread, read anywhere
        self._down = self._up = self._conns = self._body = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._bucket: _TokenBucket | None = None   # made on the loop thread, which alone uses it
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- public, called from any thread ----------------------------------------------------------

    def start(self) -> ThrottledProxy:
        """Listen in a background thread; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("ThrottledProxy can be started only once")
        self._thread = threading.Thread(target=self._run, name=f"layerwise-throttle-{id(self):x}", daemon=True)
        self._thread.start()
        try:
            if not self._ready.wait(START_TIMEOUT):
                raise RuntimeError(f"throttling proxy did not start within {START_TIMEOUT:.0f} s")
        except BaseException:                   # including KeyboardInterrupt while waiting
            self.stop()
            raise
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the listener and every connection, then join the thread (at most `timeout` s).

        Idempotent and lock-free, so it is safe from a signal handler that interrupted start() or
        another stop(): it only sets a flag, posts one callback and does a bounded join.
        """
        if self._stopping:
            return
        self._stopping = True
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:                # loop already closed: the thread is ending anyway
                pass
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("throttling proxy thread did not stop within %.1f s; leaving it (daemon)", timeout)

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ThrottledProxy is not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port to give clients, e.g. as the registry in an image reference."""
        return f"{self.listen[0]}:{self.port}"

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._down

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._up

    @property
    def connections(self) -> int:
        with self._lock:
            return self._conns

    def snapshot(self) -> Traffic:
        """The counters now, all read at one instant."""
        with self._lock:
            return Traffic(self._down, self._up, self._conns, self._body)

    def reset_counters(self) -> Traffic:
        """Zero the counters and return their previous values (one case of a benchmark)."""
        with self._lock:
            previous = Traffic(self._down, self._up, self._conns, self._body)
            self._down = self._up = self._conns = self._body = 0
        return previous

    def __repr__(self) -> str:
        rate = "unlimited" if self.bandwidth_bps is None else f"{self.bandwidth_bps / 1e6:g} Mbit/s"
        where = f"{self.listen[0]}:{self._port}" if self._port else "not started"
        return f"<ThrottledProxy {where} -> {self.target[0]}:{self.target[1]} {rate}>"

    # -- the loop thread -------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        # Peers vanishing mid-transfer is normal for a proxy: log at debug, never print tracebacks.
        loop.set_exception_handler(lambda _loop, ctx: log.debug("throttle: %s", ctx.get("message"),
                                                                exc_info=ctx.get("exception")))
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as e:   # noqa: BLE001 - reported to start() or logged, never printed
            if not self._ready.is_set():
                self._start_error = e
            else:
                log.debug("throttle loop failed", exc_info=True)
        finally:
            self._ready.set()
            try:
                leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in leftovers:
                    t.cancel()
                if leftovers:
                    loop.run_until_complete(asyncio.wait(leftovers, timeout=1.0))
            except BaseException:   # noqa: BLE001
                log.debug("throttle cleanup failed", exc_info=True)
            # Not shutdown_default_executor(): it can block without bound; close() does not wait.
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop_event = asyncio.Event()
        if self.bandwidth_bps is not None:
            self._bucket = _TokenBucket(self.bandwidth_bps / 8)
        server = await asyncio.start_server(self._handle, *self.listen, limit=CHUNK)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if self._stopping:                      # stop() came while we were binding
            self._stop_event.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)

    def _count(self, down: int = 0, up: int = 0, conns: int = 0, body: int = 0) -> None:
        with self._lock:
            self._down += down
            self._up += up
            self._conns += conns
            self._body += body

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool,
                    meter: "_HttpMeter | None" = None) -> None:
        """Copy until EOF, then pass the EOF on (a half-close), so the peer can finish its side."""
        bucket = self._bucket if downstream else None
        # Under a low limit, smaller reads (~20 ms of bytes) keep delivery smooth instead of bursty.
        size = CHUNK if bucket is None else max(4096, min(CHUNK, int(bucket.rate * BURST_SECONDS)))
        while data := await reader.read(size):
            if bucket is not None:
                await bucket.take(len(data))    # pay before sending: the client sees the paced rate
            # Counted before it is sent: a reader that has everything must see it counted.
            if downstream:
                self._count(down=len(data), body=meter.feed_response(data) if meter else 0)
            else:
                if meter:
                    meter.feed_request(data)
                self._count(up=len(data))
            writer.write(data)
            await writer.drain()                # back-pressure: never buffer more than the peer takes
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self._count(conns=1)
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(cwriter)
        twriter = None
        pumps: list[asyncio.Task] = []
        clean = False
        try:
            try:
                treader, twriter = await asyncio.wait_for(
                    asyncio.open_connection(*self.target, limit=CHUNK), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                log.debug("throttle: cannot reach %s:%s: %s", *self.target, e)
                return
            self._writers.add(twriter)
            meter = _HttpMeter()
            down = asyncio.create_task(self._pump(treader, cwriter, downstream=True, meter=meter))
            up = asyncio.create_task(self._pump(creader, twriter, downstream=False, meter=meter))
            pumps = [down, up]
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() for t in done):
                return                          # a peer failed: abort both sides
            if down in done:
                # The target is done and its EOF was passed on: give the client a moment to close.
                await asyncio.wait([up], timeout=LINGER)
            else:
                # The client half-closed: the response may still be streaming, so wait for it.
                await asyncio.wait([down])
            # The whole response reached the client: close gracefully, else abort below.
            clean = down.done() and not down.cancelled() and down.exception() is None
        except asyncio.CancelledError:
            # stop(): the finally below closes everything. Not re-raised, because the stream
            # server's done-callback would log a cancelled handler as an error.
            pass
        finally:
            for t in pumps:
                if not t.done():
                    t.cancel()
            if pumps:
                await asyncio.wait(pumps, timeout=1.0)
                for t in pumps:                 # retrieve, so asyncio logs no "never retrieved"
                    if t.done() and not t.cancelled() and t.exception():
                        log.debug("throttle: connection ended by %r", t.exception())
            for w in (cwriter, twriter):
                if w is None:
                    continue
                self._writers.discard(w)
                if clean:
                    w.close()                   # everything was drained already: a plain FIN
                else:
                    w.transport.abort()
            self._tasks.discard(task)


_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) [^ \r\n]+ HTTP/1\.[01]\r\n")


class _HttpMeter:
    """Splits one connection's HTTP/1.1 responses into head and body bytes.

    Registry clients keep connections alive and send GET and HEAD; a HEAD response announces a
    Content-Length but carries no body, so the request methods are tracked in order. Bodies are
    what the cost model predicts (manifests, configs, blobs); heads are protocol overhead.
    """

    def __init__(self):
        self.methods: list[bytes] = []
        self._request_tail = b""
        self._head = b""
        self._remaining = 0          # body bytes still to come for the current response
        self._mode = "head"          # head | body | chunked | close

    def feed_request(self, data: bytes) -> None:
        text = self._request_tail + data
        for m in _REQUEST_LINE.finditer(text):
            if m.start() == 0 or text[m.start() - 2:m.start()] == b"\r\n" or text[m.start() - 1:m.start()] == b"\n":
                self.methods.append(m.group(1))
        self._request_tail = text[-64:]

    def feed_response(self, data: bytes) -> int:
        """Count a chunk of the response stream; returns how many of its bytes were body."""
        body = 0
        while data:
            if self._mode == "body":
                n = min(self._remaining, len(data))
                body += n
                self._remaining -= n
                data = data[n:]
                if not self._remaining:
                    self._mode = "head"
            elif self._mode in ("chunked", "close"):
                body += len(data)    # chunk framing counts as body: registries send lengths, not chunks
                data = b""
            else:
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    return body
                head, data = self._head[:end + 4], self._head[end + 4:]
                self._head = b""
                self._start_body(head)
        return body

    def _start_body(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:] if l)}
        method = self.methods.pop(0) if self.methods else b"GET"
        if 100 <= status < 200:
            self.methods.insert(0, method)   # an interim response: the real one follows
            return
        if method == b"HEAD" or status in (204, 304):
            return
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self._mode = "chunked"
        elif b"content-length" in headers:
            self._remaining = int(headers[b"content-length"])
            self._mode = "body" if self._remaining else "head"
        else:
            self._mode = "close"
