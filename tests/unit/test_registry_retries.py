"""The registry client on a bad link: its time-out setting, the back-off policy, and what it does
when a blob stops flowing mid-way (a StallingProxy in front of a small fake registry on 127.0.0.1)."""
from __future__ import annotations

import io
import json
import os
import re

import httpx
import pytest

from conftest import FakeImage, registry_app, sha256
from layerwise.errors import UserError
from layerwise.oci.mediatypes import DOCKER_MANIFEST
from layerwise.oci.registry import (
    TIMEOUT_VARIABLE,
    LinkBroken,
    Registry,
    backoff_delay,
    link_problem,
    registry_answer,
    registry_timeout,
)

BIG = os.urandom(3 << 20)                # incompressible: a 3 MiB layer blob crosses the link as is


def test_backoff_doubles_from_the_first_delay_up_to_a_cap():
    assert [backoff_delay(i, 0.5, cap=3.0) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(0, 0.2) == 0.2 and backoff_delay(20, 0.2) == 30.0     # the default cap


def test_timeout_comes_from_the_environment_or_is_one_clear_error(monkeypatch):
    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert registry_timeout() == 30.0
    monkeypatch.setenv(TIMEOUT_VARIABLE, "2.5")
    assert registry_timeout() == 2.5
    assert Registry("127.0.0.1:9").timeout == 2.5
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        with pytest.raises(UserError, match=rf"{TIMEOUT_VARIABLE}='{re.escape(bad)}': give the seconds"):
            registry_timeout()


def test_link_problem_says_which_way_the_link_stalled():
    assert link_problem(httpx.ReadTimeout("x"), 2) == f"it sent nothing for 2 s ({TIMEOUT_VARIABLE})"
    assert link_problem(httpx.WriteTimeout("x"), 0.5) == f"it took nothing for 0.5 s ({TIMEOUT_VARIABLE})"
    assert link_problem(httpx.RemoteProtocolError("x"), 2) == "the connection broke (RemoteProtocolError)"


def ranged_registry_app(blobs: dict[str, bytes]):
    """Blobs by digest, honouring `Range: bytes=N-` with a 206, as the distribution registry does."""
    plain = registry_app({}, blobs)

    def handle(method, path, query, headers):
        digest = path.rsplit("/", 1)[-1]
        wanted = re.fullmatch(r"bytes=(\d+)-", headers.get("Range", ""))
        if "/blobs/" in path and digest in blobs and wanted:
            start = int(wanted.group(1))
            return 206, {"Content-Range": f"bytes {start}-{len(blobs[digest]) - 1}/{len(blobs[digest])}"}, \
                blobs[digest][start:]
        return plain(method, path, query, headers)

    return handle


@pytest.mark.parametrize("honours_range", [True, False])
def test_a_blob_stalled_once_resumes_where_it_stopped(serve, stalling_proxy, honours_range):
    blobs = {sha256(BIG): BIG}
    server = serve(ranged_registry_app(blobs) if honours_range else registry_app({}, blobs))
    proxy = stalling_proxy(server.httpd.server_address[1], down_after=1 << 20, stalls=1)
    with Registry(proxy.host, timeout=0.3, backoff=0.01) as reg:
        with reg.open_blob("team/app", sha256(BIG), size=len(BIG)) as f:
            assert f.read() == BIG                     # verified against its digest on the way
    assert proxy.stalled == 1
    ranges = [h.get("Range") for m, p, q, h in server.requests if "/blobs/" in p]
    assert ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1])
    assert 0 < int(ranges[1][6:-1]) <= 1 << 20      # asked again from the byte it got to


def test_a_blob_that_stalls_every_time_is_one_error_naming_registry_blob_and_bytes(serve, stalling_proxy):
    """Every connection stalls after 1 MiB and the registry ignores Range: no try gets further
    than the first, so the retries run out (a try that gets further starts a fresh set)."""
    blobs = {sha256(BIG): BIG}
    server = serve(registry_app({}, blobs))
    proxy = stalling_proxy(server.httpd.server_address[1], down_after=1 << 20)
    with Registry(proxy.host, timeout=0.3, backoff=0.01) as reg:
        with pytest.raises(LinkBroken) as failure:
            with reg.open_blob("team/app", sha256(BIG), size=len(BIG)) as f:
                f.read()
    message = str(failure.value)
    assert "\n" not in message
    assert re.search(rf"registry {proxy.host} failed sending blob {proxy.host}/team/app@{sha256(BIG)}: "
                     rf"\d+ of {len(BIG)} bytes received, then it sent nothing for 0.3 s \({TIMEOUT_VARIABLE}\)",
                     message), message
    assert "tried 4 times" in message                 # one try and the registry's three retries
    assert proxy.stalled == 4


def test_a_manifest_that_stalls_is_retried_then_one_error(serve, stalling_proxy):
    image = FakeImage({"a.txt": b"alpha"})
    server = serve(registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, image.blobs))
    proxy = stalling_proxy(server.httpd.server_address[1], down_after=10)
    with Registry(proxy.host, timeout=0.2, backoff=0.01) as reg:
        with pytest.raises(LinkBroken, match=rf"registry {proxy.host} failed .*team/app:v1: it sent nothing for "
                                             r"0.2 s .*\(tried 4 times\)"):
            reg.manifest("team/app", "v1")


def upload_app(server_ref: list):
    """A registry that takes blob uploads (POST, then PUT ?digest=) and keeps what arrived whole."""
    stored: dict[str, bytes] = {}

    def handle(method, path, query, headers):
        if method == "POST" and path.endswith("/blobs/uploads/"):
            return 202, {"Location": path + "u1?_state=s"}, b""
        if method == "PUT" and "/blobs/uploads/" in path:
            body, digest = server_ref[0].bodies[-1], query["digest"][0]
            if sha256(body) != digest:
                return 400, {}, b'{"errors":[{"code":"DIGEST_INVALID"}]}'
            stored[digest] = body
            return 201, {}, b""
        return 404, {}, b"{}"

    return handle, stored


def test_an_upload_stalled_once_is_sent_again_from_a_file(serve, stalling_proxy):
    ref: list = []
    handle, stored = upload_app(ref)
    ref.append(server := serve(handle))
    proxy = stalling_proxy(server.httpd.server_address[1], up_after=256 << 10, stalls=1)
    seen = []
    with Registry(proxy.host, timeout=0.3, backoff=0.01) as reg:
        reg.upload_blob("team/app", sha256(BIG), io.BytesIO(BIG), len(BIG), progress=lambda d, t: seen.append(d))
    assert stored == {sha256(BIG): BIG} and proxy.stalled == 1
    assert seen[-1] == len(BIG)


def test_an_upload_from_a_stream_that_stalls_is_one_error_with_the_bytes_sent(serve, stalling_proxy):
    class Stream:                                      # readable once, like a blob copied from another registry
        def __init__(self):
            self.f = io.BytesIO(BIG)

        def read(self, n=-1):
            return self.f.read(n)

    ref: list = []
    handle, stored = upload_app(ref)
    ref.append(server := serve(handle))
    proxy = stalling_proxy(server.httpd.server_address[1], up_after=256 << 10)
    with Registry(proxy.host, timeout=0.3, backoff=0.01) as reg:
        with pytest.raises(LinkBroken) as failure:
            reg.upload_blob("team/app", sha256(BIG), Stream(), len(BIG))
    message = str(failure.value)
    assert re.search(rf"registry {proxy.host} failed the upload of blob {proxy.host}/team/app@{sha256(BIG)}: "
                     rf"\d+ of {len(BIG)} bytes sent, then it (took|sent) nothing for 0.3 s", message), message
    assert "nothing was tagged" in message and "\n" not in message
    assert stored == {} and proxy.stalled == 1


def test_a_registry_answer_is_one_line_that_keeps_its_end():
    body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "unknown error",
                                   "detail": "write /var/lib/registry/" + "x/" * 200 + "data: no space left on device"}]})
    answer = registry_answer(body)
    assert answer.startswith("UNKNOWN: unknown error: write /var/lib/registry/x/")
    assert answer.endswith("data: no space left on device") and " … " in answer and len(answer) < 260
    assert registry_answer('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}') == "BLOB_UNKNOWN: blob unknown"
    assert registry_answer("<html>\n  <b>Bad  gateway</b>\n</html>") == "<html> <b>Bad gateway</b> </html>"


def test_an_upload_sent_to_another_host_carries_no_credentials(serve, tmp_path, monkeypatch):
    """A registry may hand out an upload URL on another host (a storage front): the user's
    credentials stay with the registry they belong to."""
    import base64
    storage = serve(lambda method, path, query, headers: (201, {}, b""))
    auth = "Basic " + base64.b64encode(b"lw-user:lw-secret").decode()

    def front(method, path, query, headers):
        if headers.get("Authorization") != auth:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        return 202, {"Location": f"http://{storage.host}/upload/u1?_state=s"}, b""

    registry = serve(front)
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry.host: {
        "auth": base64.b64encode(b"lw-user:lw-secret").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with Registry(registry.host, backoff=0.01) as reg:
        reg.upload_blob("team/app", sha256(b"data"), b"data", 4)
    assert storage.bodies == [b"data"]
    assert [h.get("Authorization") for m, p, q, h in storage.requests] == [None]
