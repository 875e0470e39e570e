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
    Every request is recorded as (method, path, query, headers)."""

    def __init__(self, handle):
        self.requests: list[tuple[str, str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = dict(self.headers.items())
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


# -- a registry with TLS and basic auth, reached as registry.test (not loopback by name) -------------

TEST_ALIAS = "registry.test"
CERTS_D = Path("/etc/docker/certs.d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TLSRegistry:
    """The distribution registry on 127.0.0.1:PORT with TLS (a trustme CA) and htpasswd auth, named
    registry.test:PORT so layerwise takes its HTTPS path. `docker_config(dir, password)` writes a
    Docker config.json with credentials for it."""

    user = "lw-user"
    password = "lw-pass-" + "7f3e9a"

    def __init__(self, root: Path):
        import bcrypt
        import trustme

        self.root = root
        self.port = free_port()
        self.host = f"{TEST_ALIAS}:{self.port}"
        ca = trustme.CA()
        cert = ca.issue_cert(TEST_ALIAS)
        self.ca_pem = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{self.user}:{hashed}\n")
        (root / "config.yml").write_text(textwrap.dedent(f"""\
            version: 0.1
            log: {{level: warn}}
            storage:
              filesystem: {{rootdirectory: {root / "data"}}}
              delete: {{enabled: true}}
            http:
              addr: 127.0.0.1:{self.port}
              tls: {{certificate: {root / "cert.pem"}, key: {root / "key.pem"}}}
            auth:
              htpasswd: {{realm: layerwise-test, path: {root / "htpasswd"}}}
            """))
        self.log = open(root / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._engine_ca: Path | None = None
        self._wait()

    def _wait(self) -> None:
        import time
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


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
