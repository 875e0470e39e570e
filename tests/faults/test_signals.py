"""Ctrl-C (SIGINT) and SIGTERM in the middle of `build`, `generate`, `import --refactor-to`, `audit` and
`bench pull`, on the real engine and registry: exit 130 or 143 with one line and no traceback, no
half-written output, no temporary file, no bench host or proxy left, the main engine untouched; then
the rerun, which finishes the work with nothing lost."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import REGISTRY, run_cli, two_app_stack, write_file
from layerwise.family.state import STATE_FILE, load_state
from layerwise.oci.registry import Registry

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
BUSYBOX = f"{REGISTRY}/os/busybox:latest"


# -- the harness ----------------------------------------------------------------------------------

class Run:
    """`layerwise ARGS` as a child process whose output goes to files, with TMPDIR and the layer
    cache of the test's own, so that whatever it leaves behind can be seen."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        self.out_path, self.err_path = tmp_path / f"out-{uuid.uuid4().hex[:6]}", tmp_path / "err"
        self.tmpdir = tmp_path / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)
        self.env = {**os.environ, "TMPDIR": str(self.tmpdir), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "layerwise", *args], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=self.env)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def until(self, ready, timeout: float = 120) -> None:
        """Wait until ready() holds while the command still runs."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"ended before the signal: {self.stdout}\n{self.stderr}"
            assert time.monotonic() < deadline, f"never got there: {self.stdout}\n{self.stderr}"
            time.sleep(0.005)

    def children(self) -> set[int]:
        found = set()
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                found |= {int(p) for p in (task / "children").read_text().split()}
            except OSError:
                pass
        return found

    def interrupt(self, sig: int) -> int:
        sent = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=120)
        print(f"{signal.Signals(sig).name}: exit {code} after {time.monotonic() - sent:.2f} s")   # a figure, with -s
        assert code == 128 + sig, f"exit {code}: {self.stdout}\n{self.stderr}"
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        assert "Traceback" not in self.stderr, self.stderr
        assert lines == [f"layerwise: interrupted by {signal.Signals(sig).name}; a rerun goes on from what "
                         "was finished"], self.stderr
        assert not list(self.tmpdir.iterdir()), f"temporary files left: {list(self.tmpdir.iterdir())}"
        return code


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tree_digest(folder: Path) -> str:
    """Names, modes and contents of everything below folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(f"{p.relative_to(folder)} {p.lstat().st_mode:o}\n".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary names of atomic.py's (files and folders) below folder."""
    return [str(p) for p in folder.rglob("*") if re.match(r"^\..*(\.tmp|\.tmp-\d+|\.old-\d+)$", p.name)]


@pytest.fixture
def main_engine(services):
    """The shared main engine's daemon pid, before; after the test it must be the same daemon."""
    import docker
    pid = Path("/var/run/docker.pid").read_text().strip()
    yield docker.from_env()
    assert Path("/var/run/docker.pid").read_text().strip() == pid, "the main engine was restarted"


def no_containers_with(engine, marker: str, timeout: float = 30) -> bool:
    """No container of the main engine runs a command holding marker (the daemon drops a cancelled
    build's container shortly after the client leaves)."""
    deadline = time.monotonic() + timeout
    while True:
        ours = [c for c in engine.api.containers(all=True) if marker in (c.get("Command") or "")]
        if not ours or time.monotonic() > deadline:
            return not ours
        time.sleep(0.2)


# -- build ----------------------------------------------------------------------------------------



@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("builder", ["auto", "legacy"])
def test_build(main_engine, tmp_path, namespace, sig, builder):
    marker = f"faults-process-{uuid.uuid4().hex[:8]}"
    ns = f"faults-process/{namespace}"
    stack = write_file(tmp_path / "stack" / "layerwise.yaml", two_app_stack(ns, "RUN echo tools > /t", f"RUN sleep 10 && echo {marker}-1 > /app",
                                     f"RUN sleep 10 && echo {marker}-2 > /app", BUSYBOX))
    run = Run(tmp_path, "build", str(stack), "--push", "--builder", builder)
    run.until(lambda: "sleep 10" in run.stdout)         # the base is pushed, the apps are in their long step
    time.sleep(0.5)
    run.interrupt(sig)

    state = load_state(stack)                          # complete and valid: it names the base it pushed
    assert [k.rsplit("/", 1)[-1] for k in state.images] == [next(k for k in state.images).rsplit("/", 1)[-1]]
    with Registry(REGISTRY) as reg:                    # no app tag moved
        assert reg.manifest_digest(f"{ns}/app1", "latest") is None
        assert reg.manifest_digest(f"{ns}/app2", "latest") is None
    assert no_containers_with(main_engine, marker), "a build container of the interrupted build is left"
    assert not leftovers(stack.parent)

    result = run_cli("build", str(stack), "--push", "--json", "--builder", builder)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = {i["key"].rsplit("/", 1)[-1]: i["status"] for i in json.loads(result.stdout)["images"]}
    assert sorted(statuses.values()) == ["built", "built", "skipped"], statuses   # only what was left
    assert statuses["app1"] == statuses["app2"] == "built"
    with Registry(REGISTRY) as reg:
        for key, rec in load_state(stack).images.items():
            name = key.removeprefix(REGISTRY + "/")
            assert reg.manifest_digest(name, "lw-" + rec.fingerprint[:16]) == rec.digest


# -- generate -------------------------------------------------------------------------------------

GEN_STACK = """\
registry: localhost:5000
project: fp-gen
base: {base}
categories:
  - {{name: data, owner: platform}}
  - {{name: code, owner: apps}}
apps:
  app1: {{data: "COPY data/ /data/", code: "COPY {code} /app"}}
  app2: {{data: "COPY data/ /data/", code: "COPY three.txt /app"}}
"""


def many_files(folder: Path, n: int = 4000) -> None:
    for i in range(n):
        write_file(folder / f"d{i % 40}" / f"f{i}.txt", f"file {i}\n" * 20)
    (folder / "big.bin").write_bytes(os.urandom(1 << 20) * 64)     # 64 MiB to copy


@pytest.mark.parametrize("sig", SIGNALS)
def test_generate(tmp_path, sig):
    src = tmp_path / "src"
    many_files(src / "data")
    write_file(src / "one.txt", "one\n")
    write_file(src / "two.txt", "two\n")
    write_file(src / "three.txt", "three\n")
    stack = write_file(src / "layerwise.yaml", GEN_STACK.format(base=BUSYBOX, code="one.txt"))
    out = tmp_path / "gen"
    assert run_cli("generate", str(stack), "-o", str(out)).returncode == 0
    before = tree_digest(out)

    stack.write_text(GEN_STACK.format(base=BUSYBOX, code="two.txt"))   # a new output, interrupted
    run = Run(tmp_path, "generate", str(stack), "-o", str(out))
    run.until(lambda: any(p.name.startswith(".gen.tmp-") for p in tmp_path.iterdir()))
    run.interrupt(sig)
    assert tree_digest(out) == before, "the previous output changed"
    assert not leftovers(tmp_path)

    assert run_cli("generate", str(stack), "-o", str(out)).returncode == 0
    assert run_cli("generate", str(stack), "-o", str(tmp_path / "whole")).returncode == 0
    assert tree_digest(out) == tree_digest(tmp_path / "whole") != before


# -- import --refactor-to ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", SIGNALS)
def test_import_refactor(tmp_path, sig):
    src = tmp_path / "src"
    many_files(src / "data")
    for app in ("svc-a", "svc-b"):
        write_file(src / app / "Dockerfile", f"FROM {BUSYBOX}\nCOPY data/ /data/\nRUN echo {app} > /name\n")
    out = tmp_path / "refactored"
    args = ("import", str(src / "svc-a" / "Dockerfile"), str(src / "svc-b" / "Dockerfile"), "--context", str(src),
            "--refactor-to", str(out))
    run = Run(tmp_path, *args)
    run.until(lambda: any(p.name.startswith(".refactored.tmp-") for p in tmp_path.iterdir()))
    run.interrupt(sig)
    assert not out.exists(), "a half-written refactored folder"
    assert not leftovers(tmp_path)

    assert run_cli(*args).returncode == 0
    first = tree_digest(out)
    assert (out / "import.json").is_file() and list((out / "bases").iterdir())
    assert run_cli(*args).returncode == 0 and tree_digest(out) == first     # the same as an uninterrupted run


# -- audit ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_image(services):
    """An image of four 48 MiB random layers in the registry (indexing takes a few seconds)."""
    import docker
    ref = f"{REGISTRY}/faults-process/audit-big:{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(f"FROM {BUSYBOX}\n" + "".join(
            f"RUN head -c 50331648 /dev/urandom > /r{i}\n" for i in range(4)))
        client = docker.from_env()
        client.images.build(path=ctx, tag=ref, network_mode="none", rm=True, forcerm=True)
        repo, tag = ref.rsplit(":", 1)
        for line in client.api.push(repo, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        client.images.remove(ref, force=True)
    return ref


def cache_entries(cache: Path) -> list[Path]:
    return sorted((cache / "layerwise" / "layers" / "sha256").glob("*.json"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_audit(tmp_path, big_image, sig):
    cache = tmp_path / "cache"
    run = Run(tmp_path, "audit", big_image, "--processes", "2", "--json")
    run.until(lambda: len(run.children()) >= 2)          # the indexing workers are at work
    time.sleep(0.3)
    workers = run.children()
    run.interrupt(sig)
    time.sleep(0.2)
    assert not [p for p in workers if alive(p)], "an indexing worker outlived the audit"
    assert not leftovers(cache) if cache.exists() else True
    for entry in cache_entries(cache):                    # whatever was cached is whole
        assert json.loads(entry.read_text())["v"]

    again = run_cli("audit", big_image, "--json", env={"XDG_CACHE_HOME": str(cache)})
    fresh = run_cli("audit", big_image, "--json", env={"XDG_CACHE_HOME": str(tmp_path / "fresh")})
    assert again.returncode == fresh.returncode == 0, again.stderr + fresh.stderr
    assert json.loads(again.stdout) == json.loads(fresh.stdout)
    assert len(cache_entries(cache)) == 5


# -- bench pull -----------------------------------------------------------------------------------



def processes_using(folder: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(folder) in cmd and alive(int(proc.name)):
                found.append(f"{proc.name}: {cmd[:120]}")
    return found


def mounts_below(folder: Path) -> list[str]:
    return [l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()
            if l.split()[4].startswith(str(folder))]


@pytest.mark.parametrize("sig, kind", [pytest.param(signal.SIGINT, "docker", id="SIGINT-docker-host"),
                                       pytest.param(signal.SIGTERM, "containerd", id="SIGTERM-containerd-host")])
def test_bench_pull(main_engine, tmp_path, namespace, sig, kind):
    if os.geteuid() != 0:
        pytest.skip("the bench hosts need root")
    bench_dir = Path(tempfile.mkdtemp(prefix="lwb-", dir="/tmp"))    # short: unix socket paths
    try:
        stack = write_file(tmp_path / "stack" / "layerwise.yaml",
                           two_app_stack(f"faults-process/{namespace}", "RUN echo tools > /t", "RUN echo one > /app",
                                         "RUN echo two > /app", BUSYBOX))
        args = ("bench", "pull", str(stack), "--no-updates", "--bandwidth", "1Gbit")
        env = {"LAYERWISE_BENCH_DIR": str(bench_dir)}
        run = Run(tmp_path, *args, env=env)
        pulling = re.compile(rf"^{kind} +layered ", re.MULTILINE)     # a case measured: its host is up and pulling
        run.until(lambda: pulling.search(run.stdout) is not None, timeout=300)
        run.interrupt(sig)
        assert not processes_using(bench_dir), processes_using(bench_dir)
        assert not mounts_below(bench_dir), mounts_below(bench_dir)
        left = [str(p.relative_to(bench_dir)) for p in bench_dir.rglob("*")
                if p.is_file() and p.name != ".layerwise-bench" and p.suffix != ".log"]   # logs stay, for a post-mortem
        assert not left, f"the bench hosts left {left[:10]}"
        assert not (stack.parent / "bench-pull").exists(), "a report of an interrupted bench"

        result = run_cli(*args, "--json", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        cases = json.loads(result.stdout)["cases"]
        assert {c["host_kind"] for c in cases} == {"docker", "containerd"}
        assert json.loads((stack.parent / "bench-pull" / "bench-pull.json").read_text())["cases"] == cases
        assert not processes_using(bench_dir) and not mounts_below(bench_dir)
        assert load_state(stack).pull_costs.keys() == {"docker", "containerd"}
        assert (stack.parent / STATE_FILE).is_file()
    finally:
        import shutil
        shutil.rmtree(bench_dir, ignore_errors=True)
