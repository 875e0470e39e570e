"""Registry passwords and tokens never appear in what layerwise writes: its output, errors, --json,
the state file, reports, generated files, caches and temporary files. Each test runs the commands
(successful and failing: a wrong password, a link that dies mid-push, the registry gone), then greps
everything the runs wrote for the password, `user:password` and its base64, and the bearer token."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import FakeImage, registry_app, write_file
from layerwise.oci.mediatypes import DOCKER_MANIFEST

BUSYBOX = "localhost:5000/os/busybox:latest"


def secrets_of(user: str, password: str, *others: str) -> dict[str, bytes]:
    """What must never show: the password, user:password and its base64 (the Basic header), and
    any other secret (a token, a wrong password)."""
    pair = f"{user}:{password}"
    return {"password": password.encode(), "user:password": pair.encode(),
            "base64(user:password)": base64.b64encode(pair.encode()),
            **{f"secret {i + 1}": other.encode() for i, other in enumerate(others)}}


class Runs:
    """Runs `layerwise` with one environment, keeping every stdout and stderr for the grep."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.cache, self.tmp = tmp_path / "cache", tmp_path / "tmp"      # XDG cache, TMPDIR: grepped too
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "XDG_CACHE_HOME": str(self.cache), "TMPDIR": str(self.tmp),
                    "LAYERWISE_REGISTRY_TIMEOUT": "2", **env}
        self.outputs: list[tuple[str, str]] = []

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "layerwise", *map(str, args)], capture_output=True, text=True,
                                env={**self.env, **(env or {})}, timeout=300)
        self.outputs.append((" ".join(map(str, args[:2])), result.stdout + result.stderr))
        assert "Traceback" not in result.stderr, result.stderr
        return result


def leaks(secrets: dict[str, bytes], runs: Runs, *folders: Path) -> list[str]:
    """Where any secret shows: in an output of the runs or in a file under the folders."""
    found = [f"{name} in the output of `layerwise {what}`" for what, text in runs.outputs
             for name, secret in secrets.items() if secret in text.encode()]
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            found += [f"{name} in {path}" for name, secret in secrets.items() if secret in data]
    return found


STACK = """\
registry: {host}
project: {project}
base: {base}
categories:
  - {{name: tools, owner: platform}}
  - {{name: code, owner: app-team}}
apps:
  a: {{tools: [COPY blob.bin /opt/blob.bin, "RUN echo shared > /opt/x"], code: RUN echo a > /opt/app.txt}}
  b: {{tools: [COPY blob.bin /opt/blob.bin, "RUN echo shared > /opt/x"], code: RUN echo b > /opt/app.txt}}
"""


def family(folder: Path, host: str, project: str) -> Path:
    """Two apps on a shared base image holding 4 MiB of incompressible data (a blob worth stalling in)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blob.bin").write_bytes(os.urandom(4 << 20))
    return write_file(folder / "layerwise.yaml", STACK.format(host=host, project=project, base=BUSYBOX))


def docker_config(folder: Path, user: str, passwords: dict[str, str]) -> Path:
    """A Docker config.json with credentials per host (it holds the secret by design: not grepped)."""
    auths = {host: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()} for host, pw in passwords.items()}
    write_file(folder / "config.json", json.dumps({"auths": auths}))
    return folder


def test_basic_auth_password_never_written(services, tls_registry, stalling_proxy, tmp_path):
    """A registry with TLS and htpasswd (registry.test:PORT): build --push, a rerun, audit with
    --json and --html, then a wrong password, a link that dies mid-push, and the registry gone."""
    user, password = tls_registry.user, tls_registry.password
    project = "faults-registry-secrets-" + uuid.uuid4().hex[:6]
    work = tmp_path / "work"
    stack = family(work / "stack", tls_registry.host, project)
    # The same registry behind a link that dies after 1 MiB: registry.test:PROXY, the same certificate.
    proxy = stalling_proxy(tls_registry.port, up_after=1 << 20, dead=True)
    proxied = f"registry.test:{proxy.port}"
    stalled_stack = family(work / "stalled", proxied, project + "-stalled")
    good = docker_config(tmp_path / "docker", user, {tls_registry.host: password, proxied: password})
    wrong = docker_config(tmp_path / "docker-wrong", user, {tls_registry.host: "not-" + password})
    tls_registry.trust_in_engine()
    run = Runs(tmp_path, {"DOCKER_CONFIG": str(good), "LAYERWISE_CA_CERT": str(tls_registry.ca_pem)})

    built = run("build", stack, "--push")
    assert built.returncode == 0, built.stdout + built.stderr
    again = run("build", stack, "--push", "--json")
    assert again.returncode == 0 and {i["status"] for i in json.loads(again.stdout)["images"]} == {"skipped"}
    images = [f"{tls_registry.host}/{project}/{app}:latest" for app in ("a", "b")]
    audit = run("audit", *images, "--json", "--html", work / "report.html")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert [i["error"] for i in json.loads(audit.stdout)["images"]] == [None, None]

    refused = run("build", stack, "--push", env={"DOCKER_CONFIG": str(wrong)})
    assert refused.returncode == 2 and "were not accepted" in refused.stderr
    refused_audit = run("audit", *images, "--json", env={"DOCKER_CONFIG": str(wrong)})
    assert refused_audit.returncode == 1 and "HTTP 401" in refused_audit.stdout

    stalled = run("build", stalled_stack, "--push", "--json")
    assert stalled.returncode == 2 and f"registry {proxied} failed the upload of blob" in stalled.stderr
    tls_registry.proc.kill()                                   # the registry gone
    tls_registry.proc.wait()
    gone = run("audit", *images, "--json")
    assert gone.returncode == 1 and f"registry {tls_registry.host} is not answering" in gone.stdout
    gone_build = run("build", stack, "--push")
    assert gone_build.returncode == 2 and f"registry {tls_registry.host} is not answering" in gone_build.stderr

    assert (work / "stack" / "layerwise.state.json").is_file() and (work / "report.html").is_file()
    secrets = secrets_of(user, password, "not-" + password)
    assert leaks(secrets, run, work, run.cache, run.tmp) == []
    assert leaks(secrets, Runs(tmp_path, {}), good, wrong)        # the grep finds them where they are kept


def token_registry(serve, image: FakeImage, user: str, password: str):
    """A registry that answers only with the bearer token its token server issued (for the user's
    basic credentials); `fail_blobs` makes it answer 500 for blobs, echoing the Authorization header
    it was sent, as a careless registry might."""
    token = "tok-" + uuid.uuid4().hex
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    state = {"fail_blobs": False}

    def token_server(method, path, query, headers):
        if headers.get("Authorization") != expected:
            return 401, {"Content-Type": "application/json"}, b'{"details":"bad credentials"}'
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()

    tokens = serve(token_server)
    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))

    def front(method, path, query, headers):
        sent = headers.get("Authorization", "")
        if sent != f"Bearer {token}":
            challenge = f'Bearer realm="http://{tokens.host}/token",service="fake"'
            return 401, {"WWW-Authenticate": challenge}, json.dumps({"errors": [{"detail": sent}]}).encode()
        if state["fail_blobs"] and "/blobs/" in path:
            return 500, {}, json.dumps({"errors": [{"code": "UNKNOWN", "detail": f"bad header {sent}"}]}).encode()
        return inner(method, path, query, headers)

    return serve(front), token, state


def test_bearer_token_never_written(serve, tmp_path):
    """A token-protected registry: audit with --json and --html, a wrong password, a registry that
    echoes the token in its error, and the token server gone."""
    user, password = "lw-user", "lw-pass-" + uuid.uuid4().hex[:8]
    image = FakeImage({"a.txt": os.urandom(1 << 16)}, {"b.txt": b"beta"})
    front, token, state = token_registry(serve, image, user, password)
    work = tmp_path / "work"
    work.mkdir()
    good = docker_config(tmp_path / "docker", user, {front.host: password})
    wrong = docker_config(tmp_path / "docker-wrong", user, {front.host: "not-" + password})
    run = Runs(tmp_path, {"DOCKER_CONFIG": str(good)})
    ref = f"{front.host}/team/app:v1"

    audit = run("audit", ref, "--json", "--html", work / "report.html")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert any(h.get("Authorization") == f"Bearer {token}" for _, _, _, h in front.requests)   # the token was used
    refused = run("audit", ref, "--json", env={"DOCKER_CONFIG": str(wrong)})
    assert refused.returncode == 1 and "HTTP 401" in refused.stdout
    state["fail_blobs"] = True
    echoed = run("audit", ref, "--json", env={"XDG_CACHE_HOME": str(tmp_path / "cache-2")})
    assert echoed.returncode == 1 and "bad header Bearer ***" in echoed.stdout

    assert (work / "report.html").is_file()
    secrets = secrets_of(user, password, token, "not-" + password)
    assert leaks(secrets, run, work, run.cache, run.tmp, tmp_path / "cache-2") == []
    assert leaks(secrets, Runs(tmp_path, {}), good, wrong)        # the grep finds them where they are kept
