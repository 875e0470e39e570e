import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from layerwise.oci.mediatypes import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"
# Third-party Dockerfiles: CI has shared/ beside the checkout; LAYERWISE_CORPORA points elsewhere.
CORPORA = Path(os.environ.get("LAYERWISE_CORPORA") or ROOT.parent / "shared" / "corpora")

# The suite's registry policy: images only from the loopback registry and the TLS test registry
# (reached as registry.test, an /etc/hosts alias of 127.0.0.1). Child `layerwise` processes inherit it.
LOOPBACK_POLICY = "localhost:*,127.0.0.1:*,registry.test:*"
os.environ.setdefault("LAYERWISE_ALLOWED_REGISTRIES", LOOPBACK_POLICY)


@pytest.fixture
def write_stack(tmp_path):
    """Write a stack file (and any context files) into a temporary folder; return its path."""

    def write(text: str, files: dict[str, str] | None = None) -> Path:
        for rel, content in (files or {}).items():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        path = tmp_path / "layerwise.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`layerwise ARGS` in a child process; `env` adds to (or overrides) the environment."""
    import os
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **env} if env else None)


def two_app_stack(project: str, tools, code1, code2, base: str = "localhost:5000/os/busybox:latest") -> str:
    """A stack file of two apps on one base, the shape most engine tests need: a `tools` category
    both share, then each app's own `code` (each a step, a list of steps or a mapping)."""
    import yaml
    return yaml.safe_dump({
        "registry": REGISTRY, "project": project, "base": base,
        "categories": [{"name": "tools", "owner": "platform"}, {"name": "code", "owner": "apps"}],
        "apps": {"app1": {"tools": tools, "code": code1}, "app2": {"tools": tools, "code": code2}},
    }, sort_keys=False)


def write_file(path: Path, text: str) -> Path:
    """Write text to path, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def verify_cli(*args, cache: Path | None = None) -> subprocess.CompletedProcess:
    """`layerwise verify ARGS`; `cache`: a layer-index cache of the test's own."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache)) if cache else None
    return subprocess.run([sys.executable, "-m", "layerwise", "verify", *map(str, args)], capture_output=True,
                          text=True, env=env)


@pytest.fixture
def small_seed(tmp_path):
    """A copy of the seed example with a 1 MiB model and no wheels (fast to digest and copy)."""
    import shutil

    dest = tmp_path / "seed"
    shutil.copytree(SEED, dest, ignore=shutil.ignore_patterns("*.model", "*.tmp", "layerwise.state.json"))
    subprocess.run([sys.executable, str(dest / "prepare.py"), str(dest), "--model-mb", "1", "--skip-wheels"],
                   check=True, capture_output=True)
    return dest / "layerwise.yaml"


REGISTRY = "localhost:5000"


def services_problem() -> str | None:
    """Why the real engine and registry cannot be used, or None when both answer."""
    import httpx
    try:
        import docker
        docker.from_env(version="auto", timeout=5).ping()
    except Exception as e:   # noqa: BLE001 - any failure means "not available"
        return f"Docker Engine not answering ({type(e).__name__}); run: scripts/services start (as root)"
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except Exception as e:   # noqa: BLE001
        return f"registry on {REGISTRY} not answering ({type(e).__name__}); run: scripts/services start (as root)"
    return None


def pytest_collection_modifyitems(items):
    """The tiers are folders: tests/integration/ uses the real engine and registry (and is marked
    `integration`, so `-m "not integration"` selects the rest too); tests/faults/ breaks things on
    purpose (marked `faults`, and `integration` too where it uses the services), so `-m faults` runs it
    alone; tests/unit/ must never need the services."""
    misplaced = []
    for item in items:
        if "faults" in item.path.parts:
            item.add_marker(pytest.mark.faults)
            if "services" in item.fixturenames:
                item.add_marker(pytest.mark.integration)
        elif "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        elif "services" in item.fixturenames or item.get_closest_marker("integration") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError("these tests use the real engine and registry but are not in "
                                "tests/integration/: " + ", ".join(misplaced))


def corpus_parametrize(argnames, values, ids=None):
    """pytest.mark.parametrize over cases read from CORPORA. Without the corpora the list is empty: one
    placeholder case then stands for it, so the `corpora` rule below skips (or, in CI, fails) it with the
    reason instead of pytest's bare "got empty parameter set"."""
    if CORPORA.is_dir():
        return pytest.mark.parametrize(argnames, values, ids=ids)
    arity = 1 if isinstance(argnames, str) and "," not in argnames else len(
        argnames if not isinstance(argnames, str) else argnames.split(","))
    return pytest.mark.parametrize(argnames, [pytest.param(*[None] * arity, id="corpora-missing")])


def pytest_runtest_setup(item):
    """Tests marked `corpora` read CORPORA: outside CI a missing folder skips them (a plain clone has no
    shared/ beside it); in CI it fails them, as a missing service does."""
    if item.get_closest_marker("corpora") is not None and not CORPORA.is_dir():
        problem = (f"the third-party Dockerfile corpora are not at {CORPORA} (CI has shared/ beside the "
                   "checkout; set LAYERWISE_CORPORA to their folder)")
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


# -- the package as users install it: wheel and sdist, installed in fresh virtual environments --------

SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")   # pyproject.toml's requires-python and classifiers


def _python_path(version: str) -> Path | None:
    """An interpreter of this minor version: pyenv's (its shims only work for the active version), else PATH."""
    import glob
    import shutil
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for found in sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")), reverse=True):
        return Path(found)
    on_path = shutil.which(f"python{version}")
    return Path(on_path) if on_path and ".pyenv/shims" not in on_path else None


def oldest_and_newest_pythons() -> list[tuple[str, Path]]:
    """The oldest and the newest supported Python this machine has (one entry if they are the same)."""
    found = [(v, p) for v in SUPPORTED_PYTHONS if (p := _python_path(v))]
    return list(dict.fromkeys([found[0], found[-1]])) if found else []


@pytest.fixture(scope="session")
def built_package(tmp_path_factory) -> Path:
    """`python -m build` of this checkout (the sdist, then the wheel built from it): the folder of both."""
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return dist


def install_in_fresh_venv(python: Path, wheel: Path, folder: Path) -> Path:
    """A new virtual environment made by `python` with only `wheel` (and its dependencies, from PyPI)
    installed; its bin folder."""
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "bin"


@pytest.fixture(scope="session")
def services():
    """The real Docker Engine and registry. Outside CI a missing service skips; in CI it fails."""
    import os
    problem = services_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return REGISTRY


@pytest.fixture
def namespace():
    """A registry namespace of its own for one test, so tests never see each other's tags."""
    import uuid
    return "t" + uuid.uuid4().hex[:10]


# -- hand-made images, archives, layouts and a loopback server posing as a registry -------------------
# Shared by test_images.py (the readers, unit by unit) and test_audit.py (bad input end to end).



def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class FakeImage:
    """A hand-made image: plain layer tars, their gzip blobs, a config and a Docker v2 manifest.
    `blob` turns a layer's tar into the blob stored (default gzip): a broken one (cut, bytes
    flipped) gets a manifest that names it by its own digest, so only reading the layer finds it."""

    def __init__(self, *layers: dict[str, bytes], blob=None):
        self.tars = [layer_tar(files) for files in layers]
        self.gz = [(blob or (lambda t: gzip.compress(t, mtime=0)))(t) for t in self.tars]
        self.config = {"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in self.tars]}}
        self.config_raw = json.dumps(self.config).encode()
        self.manifest = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(self.config_raw), "digest": sha256(self.config_raw)},
            "layers": [{"mediaType": DOCKER_LAYER, "size": len(g), "digest": sha256(g)} for g in self.gz],
        }
        self.manifest_raw = json.dumps(self.manifest).encode()
        self.blobs = {sha256(self.config_raw): self.config_raw, **{sha256(g): g for g in self.gz}}


# -- a small HTTP server on loopback posing as a registry (or a token server) ------------------------

class Server:
    """ThreadingHTTPServer on 127.0.0.1:0; `handle(method, path, query, headers)` → (status, headers, body).
    Every request is recorded as (method, path, query, headers), its body in `bodies`."""

    def __init__(self, handle):
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = dict(self.headers.items())
                length = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append(self.rfile.read(length) if length else b"")   # an upload's bytes
                outer.requests.append((self.command, parts.path, query, headers))
                status, extra, body = handle(self.command, parts.path, query, headers)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = _serve

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(handle) -> Server:
        server = Server(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def registry_app(manifests: dict[str, tuple[bytes, str]], blobs: dict[str, bytes]):
    """A read-only registry: manifests by tag or digest → (raw, content type); blobs by digest."""
    for raw, media_type in list(manifests.values()):
        manifests.setdefault(sha256(raw), (raw, media_type))

    def handle(method, path, query, headers):
        if path == "/v2/":
            return 200, {}, b"{}"
        parts = path.split("/")
        if len(parts) >= 5 and parts[-2] == "manifests" and parts[-1] in manifests:
            raw, media_type = manifests[parts[-1]]
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)}, raw
        if len(parts) >= 5 and parts[-2] == "blobs" and parts[-1] in blobs:
            return 200, {"Content-Type": "application/octet-stream"}, blobs[parts[-1]]
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}'

    return handle


def legacy_archive(path: Path, images: list[tuple[list[str], FakeImage]], drop: set[str] = frozenset(),
                   link_same: bool = False) -> Path:
    """A Docker 20.10 `docker save` tar: manifest.json, <id>/layer.tar, <config>.json."""
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        entries, written = [], {}
        for tags, image in images:
            config_name = sha256(image.config_raw)[7:] + ".json"
            layers = []
            for i, data in enumerate(image.tars):
                layer_id = hashlib.sha256(image.config_raw + bytes([i])).hexdigest()
                name = f"{layer_id}/layer.tar"
                layers.append(name)
                if name in drop:
                    continue
                if link_same and sha256(data) in written:      # as Docker links a layer it wrote
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.SYMTYPE
                    info.linkname = f"../{written[sha256(data)]}"
                    tar.addfile(info)
                else:
                    add(name, data)
                    written[sha256(data)] = name
            add(config_name, image.config_raw)
            entries.append({"Config": config_name, "RepoTags": tags, "Layers": layers})
        add("manifest.json", json.dumps(entries).encode())
    return path


def write_blob(root: Path, data: bytes) -> str:
    digest = sha256(data)
    path = root / "blobs" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


# -- registries of a test's own: plain HTTP (the faults tier kills it, fills its disk, restarts it), and
#    with TLS and basic auth, reached as registry.test (not loopback by name) --------------------------

TEST_ALIAS = "registry.test"
CERTS_D = Path("/etc/docker/certs.d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """The distribution registry on 127.0.0.1:PORT over `storage`, logging every request (level info)
    to `log_path`, so a test can count blob uploads. `htpasswd`: require basic auth. stop() and
    start() keep the port and storage: the same registry, restarted."""

    def __init__(self, root: Path, storage: Path | None = None, port: int | None = None,
                 htpasswd: Path | None = None):
        self.root = root
        self.storage = storage or root / "data"
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        (root / "config.yml").write_text(self._config(htpasswd))
        self.proc: subprocess.Popen | None = None
        self.start()

    def _config(self, htpasswd: Path | None, *, log: str = "{level: info, accesslog: {disabled: false}}",
                http: str = "") -> str:
        """The registry's config.yml; `http`: more keys under `http:` (TLS)."""
        auth = f"auth:\n  htpasswd: {{realm: layerwise-test, path: {htpasswd}}}\n" if htpasswd else ""
        return textwrap.dedent(f"""\
            version: 0.1
            log: {log}
            storage:
              filesystem: {{rootdirectory: {self.storage}}}
              delete: {{enabled: true}}
            http:
              addr: 127.0.0.1:{self.port}
            """) + (f"  {http}\n" if http else "") + auth

    def start(self) -> None:
        import time
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")],
                                         stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def kill(self) -> None:
        """SIGKILL, by its PID: no clean shutdown, as a crash or an OOM kill."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blob_uploads(self) -> list[str]:
        """Digests of the blobs uploaded so far (each completed PUT …/blobs/uploads/…?digest=…), in order."""
        import re
        text = self.log_path.read_text(errors="replace")
        return re.findall(r'"PUT /v2/[^ ]*/blobs/uploads/[^ "]*[?&]digest=(sha256(?::|%3A)[a-f0-9]{64})[^"]*" 201',
                          text.replace("%3A", ":"))


class TLSRegistry(LocalRegistry):
    """The distribution registry on 127.0.0.1:PORT with TLS (a trustme CA) and htpasswd auth, named
    registry.test:PORT so layerwise takes its HTTPS path. `docker_config(dir, password)` writes a
    Docker config.json with credentials for it."""

    user = "lw-user"
    password = "lw-pass-" + "7f3e9a"

    def __init__(self, root: Path):
        import bcrypt
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(TEST_ALIAS)
        self.ca_pem = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{self.user}:{hashed}\n")
        self._engine_ca: Path | None = None
        super().__init__(root, htpasswd=root / "htpasswd")
        self.host = f"{TEST_ALIAS}:{self.port}"

    def _config(self, htpasswd: Path | None, **_) -> str:
        return super()._config(htpasswd, log="{level: warn}",
                               http=f"tls: {{certificate: {self.root / 'cert.pem'}, key: {self.root / 'key.pem'}}}")

    def docker_config(self, folder: Path, password: str | None = None) -> Path:
        import base64
        folder.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(f"{self.user}:{password or self.password}".encode()).decode()
        (folder / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        return folder

    def trust_in_engine(self) -> None:
        """Let the Docker Engine pull from it: its CA under /etc/docker/certs.d/HOST:PORT/ (removed
        by stop())."""
        folder = CERTS_D / self.host
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.crt").write_bytes(self.ca_pem.read_bytes())
        self._engine_ca = folder

    def stop(self) -> None:
        import shutil
        if self._engine_ca:
            shutil.rmtree(self._engine_ca, ignore_errors=True)
        super().stop()


@pytest.fixture
def tls_registry(tmp_path):
    import shutil
    if not shutil.which("docker-registry"):
        pytest.skip("the docker-registry binary is not installed (scripts/setup installs it)")
    try:
        socket.gethostbyname(TEST_ALIAS)
    except OSError:
        pytest.skip(f"{TEST_ALIAS} does not resolve; scripts/services start adds it to /etc/hosts")
    folder = tmp_path / "tls-registry"
    folder.mkdir()
    registry = TLSRegistry(folder)
    yield registry
    registry.stop()


@pytest.fixture
def local_registry(tmp_path):
    """A registry of the test's own on a free loopback port (never the shared :5000 one)."""
    import shutil
    if not shutil.which("docker-registry"):
        pytest.skip("the docker-registry binary is not installed (scripts/setup installs it)")
    folder = tmp_path / "registry"
    folder.mkdir()
    registry = LocalRegistry(folder)
    yield registry
    registry.stop()


# -- a stalled link: a loopback TCP proxy that stops passing bytes mid-stream -----------------------

class StallingProxy:
    """A TCP proxy on 127.0.0.1:PORT in front of 127.0.0.1:`target_port`. A connection passes bytes
    until it has sent `down_after` bytes to the client (or taken `up_after` from it), then stalls:
    it stays open and passes nothing more, as a link that stops sending (or taking) mid-blob. After
    `stalls` stalls (None: never) connections pass everything. `dead`: after the first stall every
    connection stalls at once, as a link that went down for good; heal() lets everything through
    again. `stalled` counts the stalls; `bytes_up` counts what clients sent through."""

    def __init__(self, target_port: int, *, down_after: int | None = None, up_after: int | None = None,
                 stalls: int | None = None, dead: bool = False):
        self.target_port, self.down_after, self.up_after, self.stalls = target_port, down_after, up_after, stalls
        self.dead = dead
        self.stalled = 0
        self.healed = False
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            done = threading.Event()
            threading.Thread(target=self._pump, args=(upstream, client, self.down_after, done, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, self.up_after, done, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None, done: threading.Event,
              upward: bool) -> None:
        passed = 0
        try:
            while not done.is_set():
                want = 65536 if limit is None else min(65536, limit - passed)
                if self.dead and self.stalled and not self.healed:
                    want = 0
                if want <= 0:
                    with self._lock:
                        spent = self.healed or self.stalls is not None and self.stalled >= self.stalls
                        self.stalled += not spent
                    if spent:                          # enough stalls: pass the rest
                        limit = None
                        continue
                    # the stall: keep the connection, pass nothing
                    while not done.wait(0.1) and not self._closed.is_set():
                        pass
                    return
                data = source.recv(want)
                if not data:
                    break
                sink.sendall(data)
                passed += len(data)
                if upward:
                    with self._lock:
                        self.bytes_up += len(data)
        except OSError:
            pass
        done.set()
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def heal(self) -> None:
        """From now on pass everything (connections stalled already stay stalled)."""
        self.healed = True

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()


@pytest.fixture
def stalling_proxy():
    proxies = []

    def start(target_port: int, **kw) -> StallingProxy:
        proxy = StallingProxy(target_port, **kw)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
