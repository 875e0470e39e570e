"""layerwise as a real tool on the real engine, all on loopback: BuildKit builds, a registry with TLS
and basic auth reached by a non-loopback name, a build that needs the network (a package index
served on loopback, --network host), and the registry policy refusing before the engine is asked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import run_cli
from layerwise.oci.engine import find_buildkit

pytestmark = pytest.mark.integration

BUSYBOX = "localhost:5000/os/busybox:latest"
PYTHON = "localhost:5000/os/python3:bookworm"


def family(root: Path, registry: str, project: str, base: str = BUSYBOX) -> Path:
    """Two apps on one shared base image: a parent and two children."""
    (root / "shared").mkdir(parents=True, exist_ok=True)
    (root / "shared" / "tool.sh").write_text("echo tool\n")
    stack = root / "layerwise.yaml"
    stack.write_text(f"""\
registry: {registry}
project: {project}
base: {base}
categories:
  - {{name: tools, owner: platform}}
  - {{name: code, owner: app-team}}
apps:
  a:
    tools: [COPY shared/ /opt/shared/, "RUN mkdir -p /opt/data && echo shared > /opt/data/x"]
    code: RUN echo a > /opt/app.txt
  b:
    tools: [COPY shared/ /opt/shared/, "RUN mkdir -p /opt/data && echo shared > /opt/data/x"]
    code: RUN echo b > /opt/app.txt
""")
    return stack


def build(stack: Path, *extra: str, env: dict | None = None):
    result = run_cli("build", str(stack), "--json", *extra, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, doc


needs_buildkit = pytest.mark.skipif(find_buildkit() is None, reason="no docker CLI here offers BuildKit")


@needs_buildkit
def test_buildkit_builds_and_pushes_the_family_and_says_so(services, tmp_path, namespace):
    stack = family(tmp_path, services, namespace)
    result, doc = build(stack, "--push", "--builder", "buildkit")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {i["status"] for i in doc["images"]} == {"built"}
    assert all(i["builder"].startswith("BuildKit") for i in doc["images"])
    again, doc = build(stack, "--push", "--builder", "buildkit")
    assert again.returncode == 0 and {i["status"] for i in doc["images"]} == {"skipped"}


@needs_buildkit
def test_tls_registry_with_basic_auth_build_push_audit(services, tls_registry, tmp_path, namespace):
    """Push to registry.test:PORT over verified HTTPS with the user's Docker credentials; the OS
    base comes from another registry (localhost:5000) and its layers are copied over."""
    stack = family(tmp_path / "fam", tls_registry.host, namespace)
    config = tls_registry.docker_config(tmp_path / "docker")
    env = {"DOCKER_CONFIG": str(config), "LAYERWISE_CA_CERT": str(tls_registry.ca_pem)}

    untrusted, _ = build(stack, "--push", env={"DOCKER_CONFIG": str(config), "LAYERWISE_CA_CERT": ""})
    assert untrusted.returncode == 2 and "certificate verify failed" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1

    # Trusted from here on, also by Docker's certs.d (children build on what the registry holds:
    # the engine pulls from it).
    tls_registry.trust_in_engine()

    wrong = tls_registry.docker_config(tmp_path / "wrong", "not-the-password")
    refused, _ = build(stack, "--push", env={**env, "DOCKER_CONFIG": str(wrong)})
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "were not accepted" in lines[0] and f"docker login {tls_registry.host}" in lines[0]
    assert "not-the-password" not in refused.stderr

    result, doc = build(stack, "--push", "--builder", "buildkit", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {i["status"] for i in doc["images"]} == {"built"}

    audit = run_cli("audit", f"{tls_registry.host}/{namespace}/a:latest", f"{tls_registry.host}/{namespace}/b:latest",
                    "--json", env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert len(report["images"]) == 2
    assert "Traceback" not in audit.stderr


def make_wheel(folder: Path, name: str = "lwnetpkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, with its RECORD hashes."""
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: layerwise-test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items())
    record += f"{name}-{version}.dist-info/RECORD,,\n"
    files[f"{name}-{version}.dist-info/RECORD"] = record.encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as whl:
        for member, data in files.items():
            whl.writestr(member, data)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def package_index(tmp_path):
    """A folder of wheels over HTTP on a free loopback port (python's http.server)."""
    folder = tmp_path / "index"
    folder.mkdir()
    make_wheel(folder)
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_build_that_needs_the_network_gets_it_with_network_host(services, tmp_path, namespace, package_index):
    stack = tmp_path / "layerwise.yaml"
    stack.write_text(f"""\
registry: {services}
project: {namespace}
base: {PYTHON}
categories: [{{name: tools, owner: platform}}, {{name: library, owner: ml}}]
apps:
  net:
    tools: RUN python3 -m venv /opt/v
    library: RUN /opt/v/bin/pip install --no-index --find-links {package_index} lwnetpkg && /opt/v/bin/python -c "import lwnetpkg; assert lwnetpkg.VALUE == 42"
""")
    closed, doc = build(stack, "--network", "none")
    assert closed.returncode == 1, closed.stdout + closed.stderr          # no network: pip cannot reach it
    net = next(i for i in doc["images"] if i["key"].endswith("/net"))   # the pip install's image
    assert net["status"] == "failed"
    result, doc = build(stack, "--network", "host")
    assert result.returncode == 0, result.stdout + result.stderr
    assert next(i for i in doc["images"] if i["key"].endswith("/net"))["status"] == "built"


def test_policy_refuses_a_syntax_frontend_before_the_engine_is_asked(services, tmp_path, namespace):
    """verify builds Dockerfiles as they are: an off-list `# syntax=` frontend is refused by the
    policy (the engine would otherwise try to fetch docker/dockerfile from Docker Hub)."""
    src = tmp_path / "src"
    for app in ("a", "b"):
        (src / app).mkdir(parents=True)
        (src / app / "Dockerfile").write_text(f"# syntax=docker/dockerfile:1\nFROM {BUSYBOX}\n"
                                              f"RUN echo shared > /s\nRUN echo {app} > /{app}\n")
    out = tmp_path / "out"
    imported = run_cli("import", str(src), "--refactor-to", str(out), "--project", namespace)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    r = run_cli("verify", "--against", str(out), "--builder", "buildkit", "--json",
                "--allow-registry", "localhost:5000")
    doc = json.loads(r.stdout)
    reasons = [a["reason"] for a in doc["apps"]]
    assert r.returncode == 1 and len(reasons) == 2
    for reason in reasons:
        assert "docker/dockerfile:1" in reason and "registry policy does not allow" in reason
        assert "--allow-registry" in reason and "proxyconnect" not in reason


@needs_buildkit
def test_buildkit_builds_what_the_legacy_builder_cannot(services, tmp_path, namespace):
    """RUN --mount=type=bind,from=STAGE and type=cache, and COPY --chmod: BuildKit builds them. (A
    heredoc the legacy builder would misread is refused before the engine is asked.)"""
    from layerwise.errors import UserError
    from layerwise.oci.engine import BuildOptions, Engine

    (tmp_path / "tool.sh").write_text("echo tool\n")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BUSYBOX} AS tools\nRUN mkdir -p /t && echo from-stage > /t/marker\n"
        f"FROM {BUSYBOX}\n"
        "RUN --mount=type=bind,from=tools,source=/t,target=/mnt/t --mount=type=cache,target=/var/cache/x "
        "cp /mnt/t/marker /marker && echo cached > /var/cache/x/c\n"
        "COPY --chmod=0755 tool.sh /usr/local/bin/tool.sh\n")
    engine = Engine(options=BuildOptions(builder="buildkit"))
    try:
        tag = f"{services}/{namespace}/mounts:1"
        image_id = engine.build(tmp_path, tag, {})
        out = engine.run(image_id, ["sh", "-c", "cat /marker; stat -c %a /usr/local/bin/tool.sh; "
                                                "ls /var/cache/x 2>/dev/null | wc -l"])
        assert out.split() == ["from-stage", "755", "0"]     # the cache mount is not in the image
        heredoc = tmp_path / "heredoc" / "Dockerfile"
        heredoc.parent.mkdir()
        heredoc.write_text(f"FROM {BUSYBOX}\nRUN <<EOF\necho heredoc > /heredoc\nEOF\n")
        with pytest.raises(UserError, match="legacy builder: line .* heredoc"):
            engine.build(heredoc.parent, tag, {}, options=BuildOptions(builder="legacy"))
        engine.remove(tag)
    finally:
        engine.close()
