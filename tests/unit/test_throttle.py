"""The throttling proxy against a small TCP server of the test's own on 127.0.0.1 (never the registry)."""

from __future__ import annotations

import http.client
import http.server
import os
import random
import signal
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from layerwise.measure.throttle import ThrottledProxy, Traffic
from layerwise.units import parse_bandwidth

PAYLOAD = random.Random(1).randbytes(3_000_000)


class _Handler(socketserver.StreamRequestHandler):
    """One request per connection, one line long:
    "GET n" -> the first n payload bytes, then close;
    "PUT n" + n bytes -> "OK <count>";
    "EOF" -> read until the client half-closes, then "GOT <count>".
    """

    def handle(self):
        verb, _, arg = self.rfile.readline().decode().strip().partition(" ")
        if verb == "GET":
            self.wfile.write(PAYLOAD[: int(arg)])
        elif verb == "PUT":
            self.wfile.write(b"OK %d\n" % len(self.rfile.read(int(arg))))
        elif verb == "EOF":
            self.wfile.write(b"GOT %d\n" % len(self.rfile.read()))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128                    # the default 5 drops SYNs under parallel clients

    def handle_error(self, request, client_address):
        """A peer that resets is how some tests end (the proxy passes a client's reset on); only
        other errors are printed, so stderr still shows the proxy's own noise and nothing else."""
        import sys
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def target():
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def exchange(port: int, request: bytes, half_close: bool = False) -> bytes:
    """Send a request, read the reply until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, n: int) -> bytes:
    return exchange(port, b"GET %d\n" % n)


# --- data and counters -------------------------------------------------------------------------

def test_payload_arrives_intact_and_is_counted(target):
    with ThrottledProxy(target=target) as proxy:
        request = b"GET %d\n" % len(PAYLOAD)
        assert exchange(proxy.port, request) == PAYLOAD
        assert proxy.snapshot() == Traffic(bytes_down=len(PAYLOAD), bytes_up=len(request), connections=1)
        assert (proxy.bytes_down, proxy.bytes_up, proxy.connections) == (len(PAYLOAD), len(request), 1)


def test_upload_passes_and_is_counted(target):
    body = PAYLOAD[:1_000_000]
    with ThrottledProxy(target=target, bandwidth_bps=parse_bandwidth("1Gbit")) as proxy:
        request = b"PUT %d\n" % len(body) + body
        assert exchange(proxy.port, request) == b"OK 1000000\n"
        assert proxy.snapshot() == Traffic(bytes_down=len(b"OK 1000000\n"), bytes_up=len(request), connections=1)


def test_reset_counters_returns_previous_values(target):
    with ThrottledProxy(target=target) as proxy:
        get(proxy.port, 1000)
        get(proxy.port, 2000)
        assert proxy.reset_counters() == Traffic(bytes_down=3000, bytes_up=2 * len(b"GET 1000\n"), connections=2)
        assert proxy.snapshot() == Traffic(0, 0, 0)
        get(proxy.port, 10)
        assert proxy.reset_counters() == Traffic(bytes_down=10, bytes_up=len(b"GET 10\n"), connections=1)


def test_http_keep_alive_through_the_proxy():
    """A real HTTP/1.1 client and server: two requests share one proxied connection."""

    class Blob(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            n = int(self.path.strip("/"))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(PAYLOAD[:n])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blob)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with ThrottledProxy(target=server.server_address) as proxy:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            for n in (500_000, 123):
                conn.request("GET", f"/{n}")
                assert conn.getresponse().read() == PAYLOAD[:n]
            conn.close()
            traffic = proxy.snapshot()
            assert traffic.connections == 1
            assert traffic.bytes_down > 500_123          # bodies plus response headers
    finally:
        server.shutdown()
        server.server_close()


def test_client_half_close_is_passed_on(target):
    """The target only answers once it sees the client's EOF, so the EOF must cross the proxy."""
    with ThrottledProxy(target=target) as proxy:
        assert exchange(proxy.port, b"EOF\n" + b"x" * 100_000, half_close=True) == b"GOT 100000\n"


def test_many_concurrent_connections(target):
    sizes = [1000 * (i + 1) for i in range(60)]
    with ThrottledProxy(target=target) as proxy, ThreadPoolExecutor(30) as pool:
        for n, body in zip(sizes, pool.map(lambda n: get(proxy.port, n), sizes)):
            assert body == PAYLOAD[:n]
        assert proxy.connections == len(sizes)
        assert proxy.bytes_down == sum(sizes)


# --- throttling --------------------------------------------------------------------------------

def test_throttle_limits_the_download_rate(target):
    n, bps = 2_500_000, 10e6                    # 2.0 s ideal
    with ThrottledProxy(target=target, bandwidth_bps=bps) as proxy:
        start = time.perf_counter()
        assert get(proxy.port, n) == PAYLOAD[:n]
        elapsed = time.perf_counter() - start
    print(f"\n{n / 1e6:.1f} MB at {bps / 1e6:g} Mbit/s: {elapsed:.3f} s, {n * 8 / elapsed / 1e6:.2f} Mbit/s")
    assert elapsed >= 1.8


def test_parallel_downloads_share_one_bucket(target):
    n, bps = 1_250_000, 10e6                    # each alone: 1.0 s; together: 2.0 s ideal
    with ThrottledProxy(target=target, bandwidth_bps=bps) as proxy, ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        bodies = list(pool.map(lambda _: get(proxy.port, n), range(2)))
        elapsed = time.perf_counter() - start
        assert proxy.bytes_down == 2 * n
    assert bodies == [PAYLOAD[:n]] * 2
    print(f"\n2 x {n / 1e6:.2f} MB at {bps / 1e6:g} Mbit/s: {elapsed:.3f} s, {2 * n * 8 / elapsed / 1e6:.2f} Mbit/s")
    assert elapsed >= 1.8


# --- errors and lifecycle ----------------------------------------------------------------------

@pytest.mark.parametrize("target", [("10.0.0.1", 5000), ("0.0.0.0", 5000), ("192.168.1.2", 5000),
                                    ("example.com", 5000), ("::", 5000), ("::ffff:127.0.0.1", 5000)])
def test_non_loopback_target_is_refused(target):
    with pytest.raises(ValueError, match="not a loopback"):
        ThrottledProxy(target=target)


@pytest.mark.parametrize("listen", [("0.0.0.0", 0), ("", 0), ("172.17.0.1", 0)])
def test_non_loopback_listen_is_refused(listen):
    with pytest.raises(ValueError, match="loopback"):
        ThrottledProxy(listen=listen)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts_are_accepted(host):
    ThrottledProxy(target=(host, 5000), listen=(host, 0))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "100Mbit", True])
def test_bad_bandwidth_argument_is_refused(bad):
    with pytest.raises(ValueError, match="bandwidth_bps"):
        ThrottledProxy(bandwidth_bps=bad)


def test_stop_is_idempotent_and_frees_the_port(target):
    proxy = ThrottledProxy(target=target)
    proxy.start()
    port = proxy.port
    assert get(port, 10) == PAYLOAD[:10]
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.socket() as s:                  # the port can be bound again, as any server would
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    ThrottledProxy(target=target).stop()        # never started: nothing to do


def test_stop_closes_active_connections(target):
    proxy = ThrottledProxy(target=target, bandwidth_bps=1e6).start()   # 3 MB would take 24 s
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET %d\n" % len(PAYLOAD))
        assert s.recv(1024)
        proxy.stop()
        assert not proxy._thread.is_alive()
        received = 0
        try:
            while chunk := s.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass                                # aborted: that is what stop() should do
        assert received < len(PAYLOAD)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_stop_from_a_signal_handler(target):
    """The Ctrl-C path: a handler interrupts a blocked main thread and calls stop()."""
    proxy = ThrottledProxy(target=target, bandwidth_bps=1e6).start()
    previous = signal.signal(signal.SIGALRM, lambda *_: proxy.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            body = get(proxy.port, len(PAYLOAD))    # would take 24 s if stop() did not cut it
        except ConnectionResetError:
            body = b""
        assert len(body) < len(PAYLOAD)
        assert not proxy._thread.is_alive()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        proxy.stop()


def test_start_reports_a_busy_port(target):
    with ThrottledProxy(target=target) as first:
        with pytest.raises(OSError):
            ThrottledProxy(target=target, listen=("127.0.0.1", first.port)).start()


def test_connection_errors_are_quiet(target, capfd, caplog):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()                                # nothing listens there now
    with ThrottledProxy(target=("127.0.0.1", dead_port)) as proxy:
        try:
            assert exchange(proxy.port, b"GET 10\n") == b""
        except ConnectionResetError:
            pass
        assert proxy.connections == 1

    with ThrottledProxy(target=target, bandwidth_bps=8e6) as proxy:
        for _ in range(3):                      # the client vanishes mid-download with a reset
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            s.sendall(b"GET %d\n" % len(PAYLOAD))
            s.recv(1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        time.sleep(0.2)
        assert get(proxy.port, 100_000) == PAYLOAD[:100_000]    # and the proxy carries on
    out, err = capfd.readouterr()
    assert err == ""
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR", "CRITICAL")]


# --- parse_bandwidth ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, bps", [
    ("100Mbit", 100e6), ("100mbit/s", 100e6), ("100 Mbit/s", 100e6), ("1Gbit", 1e9), ("1gbit/s", 1e9),
    ("800kbit", 800e3), ("12.5MB/s", 100e6), ("12.5MB", 100e6), ("1kB/s", 8000), ("1MiB/s", 8 * 2**20),
    ("100Mbits", 100e6), ("1000bit/s", 1000), ("1000", 1000), ("2.5e6", 2.5e6), (" 10Mbit ", 10e6),
    (5e6, 5e6),
])
def test_parse_bandwidth(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("text, message", [
    ("-5Mbit", "negative"), ("-1", "negative"), ("0", "more than zero"), ("0Mbit", "more than zero"),
    ("100Mparsecs", "unknown bandwidth unit"), ("100xbit", "unknown"), ("fast", "not a bandwidth"),
    ("", "not a bandwidth"), ("1.2.3Mbit", "not a bandwidth"), ("100Mbps", "ambiguous"),
    ("100Mb/s", "ambiguous"), ("100mb", "ambiguous"), (-1, "negative"), (float("nan"), "not a bandwidth"),
])
def test_parse_bandwidth_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bandwidth(text)


# --- HTTP body accounting ----------------------------------------------------------------------

def test_http_meter_splits_heads_from_bodies_on_a_kept_alive_connection():
    from layerwise.measure.throttle import _HttpMeter
    meter = _HttpMeter()
    meter.feed_request(b"HEAD /v2/a/manifests/x HTTP/1.1\r\nHost: h\r\n\r\nGET /v2/a/blobs/s HTTP/1.1\r\n")
    meter.feed_request(b"Host: h\r\n\r\n")
    head1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDocker-Content-Digest: sha256:x\r\n\r\n"
    head2 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    stream = head1 + head2 + b"0123456789"
    # Fed in awkward pieces: a head split in two, a body split across reads.
    counted = sum(meter.feed_response(stream[i:i + 7]) for i in range(0, len(stream), 7))
    assert counted == 10           # the HEAD's Content-Length announced no body


def test_proxy_counts_http_bodies(tmp_path):
    import http.server
    import threading
    import urllib.request

    payload = os.urandom(200_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ThrottledProxy(target=server.server_address) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/blob"
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD")).read()
            assert urllib.request.urlopen(url).read() == payload
            traffic = proxy.reset_counters()
        assert traffic.body_down == len(payload)
        assert traffic.bytes_down > traffic.body_down      # the heads crossed too
    finally:
        server.shutdown()
