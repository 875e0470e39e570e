"""Throw-away pull hosts for `layerwise bench pull`: a Docker Engine and a containerd of their own.

Each host is a fresh daemon that the bench starts, pulls into, wipes and stops. It never touches the
project's main Docker Engine (/var/run/docker.sock) nor a system containerd:

* `DockerHost` runs a second `dockerd` with its own data root, exec root, pidfile, socket and config
  file, no bridge, no iptables, no IP forwarding. Docker 20.10 starts a containerd it manages itself
  (under its exec root) unless a system containerd answers at /run/containerd/containerd.sock, in
  which case it would share that one: the bench dockerd therefore also gets containerd namespaces of
  its own, so two dockerds can never see each other's containers, leases or plugins.
* `ContainerdHost` runs a `containerd` of its own (own root, state, socket, minimal config file, no
  CRI plugin, content isolated per namespace), driven with `ctr -n layerwise-bench`.
* `DockerContainerdHost` is a `DockerHost` on the containerd image store: its dockerd has the
  `containerd-snapshotter` feature on and is pointed (`--containerd`) at a `ContainerdHost` of its
  own, started first and stopped last. A dockerd that has no such store (before Docker Engine 24)
  is stopped again and the host reports `HostUnsupported`.

Both only ever pull from a loopback registry, over plain HTTP.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from ..errors import ServiceDown, UserError
from ..oci.reference import Reference

DEFAULT_DATA = Path("/var/lib/layerwise/bench")
DEFAULT_RUN = Path("/run/layerwise/bench")
BENCH_DIR_ENV = "LAYERWISE_BENCH_DIR"    # a folder of one's own for the hosts (e.g. a test's) instead
NAMESPACE = "layerwise-bench"            # containerd namespace of the containerd host (and of dockerd)
PLUGINS_NAMESPACE = "layerwise-bench-plugins"
DEFAULT_PLATFORM = "linux/amd64"
MARKER = ".layerwise-bench"              # only directories carrying it are ever deleted
SYSTEM_CONTAINERD = Path("/run/containerd/containerd.sock")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1


def loopback_reference(ref: str) -> Reference:
    """The parsed ref, refusing any registry but a loopback one: the bench's hosts pull through a
    throttling proxy on loopback."""
    parsed = Reference.parse(ref)
    if not parsed.is_loopback():
        raise UserError(f"refusing to pull {ref}: the bench only pulls from a loopback registry "
                        "(localhost or 127.0.0.1)")
    return parsed


def normalized(ref: str) -> str:
    """'localhost:5000/a/b' → 'localhost:5000/a/b:latest'; digests stay digests (a tag beside one dropped)."""
    parsed = loopback_reference(ref)
    return f"{parsed.name}@{parsed.digest}" if parsed.digest else str(parsed)


# The bench's daemons only ever pull through the throttling proxy on loopback. Anything else they
# might try goes to a closed loopback port and fails at once: the same safety net as
# scripts/services gives the main engine.
CLOSED_PROXY = "http://127.0.0.1:9"
LOOPBACK_NAMES = "localhost,127.0.0.1,::1"


def _daemon_env() -> dict[str, str]:
    """The environment a bench daemon or client runs with: the closed proxy with loopback exempt, and
    no DOCKER_*/CONTAINERD_* of the caller's."""
    drop = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in drop and not k.startswith(("DOCKER_", "CONTAINERD_"))}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[key] = CLOSED_PROXY
    env["NO_PROXY"] = env["no_proxy"] = LOOPBACK_NAMES
    env["PATH"] = env.get("PATH", "") + ":" + _SYSTEM_PATH
    return env


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=_daemon_env()["PATH"])


def _unescape_mount(path: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts_under(*dirs: Path) -> list[str]:
    """Every mount point at or below one of dirs, deepest first."""
    roots = [str(Path(d).resolve()) if Path(d).exists() else str(d) for d in dirs]
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mount(line.split()[4])
            if any(point == r or point.startswith(r.rstrip("/") + "/") for r in roots):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _umount(point: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(point.encode(), 0) != 0:
        libc.umount2(point.encode(), _MNT_DETACH)   # busy: detach it lazily


def _die_with_parent() -> None:
    """In the daemon, between fork and exec: SIGTERM me when the bench process dies, however it dies
    (SIGKILL, an unhandled SIGTERM...), so that no bench daemon outlives the bench."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _alive(pid: int) -> bool:
    """True when pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def _ctr_error(result: subprocess.CompletedProcess) -> str:
    """The line of ctr's output that says what went wrong (its debug lines come before it)."""
    lines = [l.strip() for l in (result.stderr or result.stdout or "").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("ctr: ") or "level=error" in l or "level=fatal" in l]
    return (errors[-1] if errors else " / ".join(lines[-3:]))[-500:] or f"exit code {result.returncode}"


class HostUnsupported(UserError):
    """This machine cannot run a host of this kind (its engine lacks what the kind needs)."""


def _pull_failed(ref: str, kind: str, why: str) -> UserError:
    """A registry that does not answer is a ServiceDown; anything else (no such image...) a UserError."""
    if "connection refused" in why or "no such host" in why or "i/o timeout" in why:
        return ServiceDown(f"pull of {ref} on the bench {kind} host failed: the registry is not answering "
                           f"({why}); start it: scripts/services start (as root)")
    return UserError(f"pull of {ref} on the bench {kind} host failed: {why}")


class _Host:
    """What both hosts share: their directories, their one process, its start and its stop."""

    kind = ""
    binary = ""
    package = ""

    def __init__(self, base: str | Path | None = None, *, run_dir: str | Path | None = None,
                 platform: str = DEFAULT_PLATFORM, start_timeout: float = 60.0,
                 stop_timeout: float = 30.0, pull_timeout: float = 3600.0):
        """base: the host keeps everything under base/data and base/run; by default under
        $LAYERWISE_BENCH_DIR/<kind>, else /var/lib/layerwise/bench/<kind> and /run/layerwise/bench/<kind>."""
        if base is None and os.environ.get(BENCH_DIR_ENV):
            base = Path(os.environ[BENCH_DIR_ENV]) / self.kind
        if base is None:
            self.data_dir = DEFAULT_DATA / self.kind
            self.run_dir = Path(run_dir) if run_dir else DEFAULT_RUN / self.kind
        else:
            self.data_dir = Path(base) / "data"
            self.run_dir = Path(run_dir) if run_dir else Path(base) / "run"
        self.data_dir = self.data_dir.absolute()
        self.run_dir = self.run_dir.absolute()
        self.platform = platform
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.pull_timeout = pull_timeout
        self.log_path = self.data_dir / f"{self.kind}.log"
        self.pid: int | None = None
        self.start_seconds: float | None = None   # how long the last start() took to answer
        self._proc: subprocess.Popen | None = None
        self._atexit = False

    # -- the parts each kind fills in -------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files into fresh directories, before the daemon starts."""

    def _answers(self) -> bool:
        raise NotImplementedError

    def _connected(self) -> None:
        """Called once the daemon answers."""

    def _disconnect(self) -> None:
        """Drop clients, before the daemon stops."""

    def _after_stop(self) -> None:
        """Clean up what the daemon itself started, once it is gone."""

    @property
    def _own_pidfile(self) -> Path:
        return self.run_dir / "layerwise-host.pid"

    def _pidfiles(self) -> list[Path]:
        """Where the PIDs of this host's processes are written (to spot leftovers of a killed run)."""
        return [self._own_pidfile]

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the daemon on fresh, empty directories and wait until it answers (idempotent)."""
        if self.running:
            return
        if self._proc is not None:          # it died on its own: clean up before starting anew
            self.stop()
        if os.geteuid() != 0:
            raise UserError(f"the bench {self.kind} host needs root (it starts its own {self.binary})")
        binary = _which(self.binary)
        if not binary:
            raise UserError(f"{self.binary} is not installed; install the Debian package {self.package}")
        self._refuse_leftover_daemon()
        self._clean_dirs()
        for d in (self.data_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
            (d / MARKER).write_text("created by layerwise bench; deleted when the bench host stops\n")
        self._prepare()
        command = self._command()
        command[0] = binary
        began = time.perf_counter()
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            # A session of its own: a Ctrl-C in the terminal reaches the bench, which stops the
            # daemon itself (in its finally path), not the daemon directly. The parent-death signal
            # covers a bench that dies without a finally path; it fires when the thread that forked
            # exits, hence only from the main thread.
            main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=_daemon_env(),
                                          start_new_session=True, close_fds=True,
                                          preexec_fn=_die_with_parent if main else None)
        self.pid = self._proc.pid
        self._own_pidfile.write_text(f"{self.pid}\n")
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self._wait_until_answering(began)
        except (KeyboardInterrupt, HostUnsupported):   # Ctrl-C, SIGTERM, a kind this machine lacks: nothing left
            self.stop()                                 # behind (but the log)
            raise
        except BaseException:
            self.stop(remove=False)   # keep the log for the error message
            raise

    def _wait_until_answering(self, began: float) -> None:
        deadline = began + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServiceDown(f"the bench {self.kind} host ({self.binary}) exited with code {code} "
                                  f"while starting; its log ({self.log_path}) ends with:\n"
                                  f"{_tail(self.log_path)}")
            if self._answers():
                break
            if time.perf_counter() > deadline:
                raise ServiceDown(f"the bench {self.kind} host ({self.binary}, pid {self.pid}) did not "
                                  f"answer within {self.start_timeout:.0f} s; its log ({self.log_path}) "
                                  f"ends with:\n{_tail(self.log_path)}")
            time.sleep(0.05)
        self.start_seconds = time.perf_counter() - began
        self._connected()

    def stop(self, remove: bool = True) -> None:
        """Stop the daemon this object started (by its PID: SIGTERM, then SIGKILL), unmount what it
        left mounted, and (remove=True) delete its directories. Idempotent; safe in a finally path."""
        interrupted = None
        try:
            self._disconnect()
        except Exception:   # noqa: BLE001 - a dead client must not keep the daemon alive
            pass
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)   # Popen knows whether the PID is still its child
                    proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            except KeyboardInterrupt as e:    # a second Ctrl-C: no more patience, but no orphan either
                interrupted = e
                proc.kill()
                proc.wait(timeout=30)
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        self._after_stop()
        self._unmount_all()
        if remove:
            self._clean_dirs()
        self.pid = None
        if interrupted is not None:
            raise interrupted

    def _refuse_leftover_daemon(self) -> None:
        """A daemon of an earlier, killed bench run still using these directories is not ours to
        stop: say so instead of starting a second one on top of it."""
        for pidfile in self._pidfiles():
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if _alive(pid) and any(str(self.data_dir) in a or str(self.run_dir) in a for a in _cmdline(pid)):
                raise UserError(f"a bench {self.kind} host from an earlier run still runs on {self.run_dir} "
                                f"(pid {pid}: {' '.join(_cmdline(pid))[:120]}); stop it first: kill {pid}")

    def _unmount_all(self) -> None:
        for point in mounts_under(self.data_dir, self.run_dir):
            _umount(point)

    def _clean_dirs(self) -> None:
        """Delete this host's directories, only when no mount is left below them (deleting through a
        mount would delete what it shows) and only when they carry the bench marker."""
        self._unmount_all()
        left = mounts_under(self.data_dir, self.run_dir)
        if left:
            raise UserError(f"refusing to delete the bench {self.kind} host's directories: still mounted "
                            f"below them: {', '.join(left[:5])}; unmount them (umount -R) first")
        for d in (self.run_dir, self.data_dir):
            if not d.exists():
                continue
            if not (d / MARKER).exists():
                if any(d.iterdir()):
                    raise UserError(f"{d} exists and was not made by layerwise bench; refusing to use it "
                                    "for a bench host: choose another directory")
                continue
            for child in d.iterdir():
                if child == self.log_path or child.name == MARKER:
                    continue        # keep the last log (small) for a post-mortem
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


class DockerHost(_Host):
    """A second Docker Engine of its own, reached through its own socket only.

    blobs() returns the diff_ids (uncompressed layer digests) of every layer in its layer store, read
    from <data-root>/image/<driver>/layerdb: dockerd keeps no compressed blobs, so these are not the
    digests the registry serves (compare them with the image configs' rootfs.diff_ids)."""

    kind = "docker"
    binary = "dockerd"
    package = "docker.io"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.root = self.data_dir / "root"
        self.exec_root = self.run_dir / "exec"
        self.socket = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "docker.pid"
        self.config_file = self.data_dir / "daemon.json"
        self.client: docker.DockerClient | None = None
        self.containerd_address: str | None = None   # which containerd it ended up using
        if len(str(self.exec_root / "containerd" / "containerd.sock.ttrpc")) > 100:
            raise UserError(f"{self.run_dir} is too long a path for the unix sockets the bench docker "
                            "host creates below it; choose a shorter run directory")

    def _prepare(self) -> None:
        # An empty config of its own: /etc/docker/daemon.json (mirrors, hosts...) must not leak in.
        self.config_file.write_text("{}\n")

    def _command(self) -> list[str]:
        return ["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                f"--data-root={self.root}", f"--exec-root={self.exec_root}", f"--pidfile={self.pidfile}",
                f"--host=unix://{self.socket}", f"--config-file={self.config_file}",
                f"--containerd-namespace={NAMESPACE}", f"--containerd-plugins-namespace={PLUGINS_NAMESPACE}"]

    def _new_client(self, timeout: float) -> docker.DockerClient:
        return docker.DockerClient(base_url=f"unix://{self.socket}", version="auto", timeout=timeout)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = self._new_client(timeout=5)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        finally:
            client.close()

    def _connected(self) -> None:
        self.client = self._new_client(timeout=int(self.pull_timeout))
        managed = self.exec_root / "containerd" / "containerd.sock"
        self.containerd_address = str(managed if managed.exists() else SYSTEM_CONTAINERD)

    def _disconnect(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.close()

    def _pidfiles(self) -> list[Path]:
        return [self._own_pidfile, self.exec_root / "containerd" / "containerd.pid"]

    def _after_stop(self) -> None:
        """dockerd stops the containerd it manages when it exits on SIGTERM; after a SIGKILL that
        containerd would live on, and so would the shims of the containers it ran (a build's RUN).
        Stop them: they are ours (started by our dockerd, on our exec root)."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _alive(pid) and any(str(self.exec_root) in a for a in _cmdline(pid)):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid) and any(str(self.exec_root) in a for a in _cmdline(pid)):
                os.kill(pid, signal.SIGKILL)
        address = str(self.exec_root / "containerd" / "containerd.sock")
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _alive(int(proc.name)):
                command = _cmdline(int(proc.name))
                if command and "containerd-shim" in command[0] and address in command:
                    os.kill(int(proc.name), signal.SIGKILL)

    def _api(self):
        if self.client is None:
            raise ServiceDown("the bench docker host is not running (start() it first)")
        return self.client.api

    def pull(self, ref: str) -> float:
        """Pull ref through the engine API; returns the wall seconds of the whole pull."""
        parsed = loopback_reference(ref)
        api = self._api()
        began = time.perf_counter()
        try:
            for event in api.pull(parsed.name, tag=parsed.reference, platform=self.platform, stream=True,
                                  decode=True):
                if "error" in event:
                    raise _pull_failed(ref, "docker", event["error"].strip())
        except docker.errors.APIError as e:
            raise _pull_failed(ref, "docker", str(e.explanation)) from None
        except requests.exceptions.RequestException as e:
            raise ServiceDown(f"lost the bench docker host while pulling {ref}: {e}") from None
        return time.perf_counter() - began

    def has_image(self, ref: str) -> bool:
        try:
            self._api().inspect_image(normalized(ref))
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as e:
            if e.status_code == 404:
                return False
            raise
        return True

    def _driver(self) -> str:
        return self._api().info().get("Driver") or "overlay2"

    def _layerdb(self) -> Path:
        return self.root / "image" / self._driver() / "layerdb" / "sha256"

    def blobs(self) -> set[str]:
        """The diff_ids of every layer in the layer store (see the class docstring)."""
        layerdb = self._layerdb()
        found = set()
        if layerdb.is_dir():
            for chain in layerdb.iterdir():
                diff = chain / "diff"
                found.add(diff.read_text().strip() if diff.is_file() else f"(incomplete layer {chain.name})")
        return found

    def images(self) -> list[str]:
        return [img["Id"] for img in self._api().images(all=True)]

    def _remove_all(self):
        """Remove every container and image through the engine API; the API client, for more."""
        api = self._api()
        for c in api.containers(all=True):
            api.remove_container(c["Id"], force=True, v=True)
        for image_id in self.images():
            try:
                api.remove_image(image_id, force=True, noprune=False)
            except docker.errors.NotFound:
                pass        # went with the image it was the parent of
        api.prune_images(filters={"dangling": False})
        return api

    def wipe(self) -> None:
        """Remove every container, image and layer it holds, then check nothing is left."""
        api = self._remove_all()
        try:
            api.prune_builds()
        except docker.errors.APIError:
            pass
        left_images, left_layers = self.images(), self.blobs()
        driver_dir = self.root / self._driver()
        left_dirs = [p.name for p in driver_dir.iterdir() if p.name != "l"] if driver_dir.is_dir() else []
        if left_images or left_layers or left_dirs:
            raise UserError(f"wiping the bench docker host left {len(left_images)} image(s), "
                            f"{len(left_layers)} layer(s) and {len(left_dirs)} layer directories in "
                            f"{driver_dir}")


class ContainerdHost(_Host):
    """A containerd of its own, driven with `ctr --address SOCK -n layerwise-bench`.

    Its config disables the CRI plugin and makes content `isolated` per namespace: with containerd's
    default (`shared`), a pull into one namespace downloads nothing that another namespace of the
    same daemon already holds. blobs() returns the digests of every content blob of the namespace
    (layers, and also manifests and configs), from `ctr content ls`."""

    kind = "containerd"
    binary = "containerd"
    package = "containerd"

    def __init__(self, *args, namespace: str = NAMESPACE, **kw):
        super().__init__(*args, **kw)
        self.namespace = namespace
        self.root = self.data_dir / "root"
        self.state = self.run_dir / "state"
        self.socket = self.run_dir / "containerd.sock"
        self.config_file = self.data_dir / "containerd.toml"
        if len(str(self.socket) + ".ttrpc") > 100:
            raise UserError(f"{self.run_dir} is too long a path for a unix socket; choose a shorter one")

    def _prepare(self) -> None:
        self.config_file.write_text(f"""\
version = 2
root = {json.dumps(str(self.root))}
state = {json.dumps(str(self.state))}
oom_score = 0
# No CRI (it would want CNI and /etc/cni), no snapshotters that only log errors here.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {json.dumps(str(self.socket))}

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {json.dumps(str(self.root / "opt"))}
  [plugins."io.containerd.metadata.v1.bolt"]
    content_sharing_policy = "isolated"
""")

    def _command(self) -> list[str]:
        return ["containerd", "--config", str(self.config_file), "--log-level", "info"]

    def _ctr_base(self, namespace: str | None = None, debug: bool = False) -> list[str]:
        return [_which("ctr") or "ctr", "--address", str(self.socket), "--namespace", namespace or self.namespace,
                *(["--debug"] if debug else [])]

    def ctr(self, *args: str, namespace: str | None = None, timeout: float = 120.0,
            check: bool = True, debug: bool = False) -> subprocess.CompletedProcess:
        """Run `ctr --address SOCK -n NAMESPACE args...` against this host."""
        try:
            result = subprocess.run(self._ctr_base(namespace, debug) + list(args), capture_output=True, text=True,
                                    env=_daemon_env(), timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ServiceDown(f"ctr {' '.join(args[:3])} on the bench containerd host did not finish "
                              f"within {timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise UserError(f"ctr {' '.join(args)} failed on the bench containerd host: {_ctr_error(result)}")
        return result

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        return self.ctr("version", timeout=10, check=False).returncode == 0

    def _lines(self, *args: str, namespace: str | None = None) -> list[str]:
        return [l.strip() for l in self.ctr(*args, namespace=namespace).stdout.splitlines() if l.strip()]

    def _require_running(self) -> None:
        if not self.running:
            raise ServiceDown("the bench containerd host is not running (start() it first)")

    def pull(self, ref: str) -> float:
        """`ctr --debug images pull --plain-http --platform P ref` (fetch, then unpack into the
        snapshotter as a node does); returns the wall seconds of the ctr command, ~10 ms of which is
        ctr itself starting. --debug is not for the logs: without it ctr draws a progress display on
        a 100 ms ticker and only returns on the tick after the pull is done, adding 0-100 ms."""
        ref = normalized(ref)
        self._require_running()
        began = time.perf_counter()
        result = self.ctr("images", "pull", "--plain-http", "--platform", self.platform, ref,
                          timeout=self.pull_timeout, check=False, debug=True)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise _pull_failed(ref, "containerd", _ctr_error(result))
        return seconds

    def has_image(self, ref: str) -> bool:
        self._require_running()
        return normalized(ref) in self._lines("images", "ls", "-q")

    def blobs(self) -> set[str]:
        self._require_running()
        return set(self._lines("content", "ls", "-q"))

    def namespaces(self) -> list[str]:
        return self._lines("namespaces", "ls", "-q")

    def _snapshots(self, namespace: str, snapshotter: str) -> list[tuple[str, str]]:
        """(key, parent) of every snapshot; parent is '' for a bottom layer."""
        out = []
        for line in self._lines("snapshots", "--snapshotter", snapshotter, "ls", namespace=namespace)[1:]:
            fields = line.split()
            out.append((fields[0], fields[1] if len(fields) >= 3 else ""))
        return out

    @property
    def _content_dir(self) -> Path:
        return self.root / "io.containerd.content.v1.content"

    def _on_disk(self) -> dict[str, list[str]]:
        """What the daemon still keeps on disk: blobs, partial downloads, snapshots."""
        def entries(d: Path) -> list[str]:
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        return {"blobs": entries(self._content_dir / "blobs" / "sha256"),
                "ingests": entries(self._content_dir / "ingest"),
                "snapshots": entries(self.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots")
                + entries(self.root / "io.containerd.snapshotter.v1.native" / "snapshots")}

    def wipe(self) -> None:
        """Make the host cold: in every namespace of this daemon (they are all ours), drop leases,
        images (`ctr images rm --sync`, which garbage-collects their content and snapshots), any
        content and snapshot left, and partial downloads; then check nothing is left, on disk too."""
        self._require_running()
        snapshotters = ("overlayfs", "native")
        for ns in self.namespaces():
            for lease in self._lines("leases", "ls", "-q", namespace=ns):
                self.ctr("leases", "rm", lease, namespace=ns, check=False)
            for container in self._lines("containers", "ls", "-q", namespace=ns):
                self.ctr("containers", "rm", container, namespace=ns, check=False)
            images = self._lines("images", "ls", "-q", namespace=ns)
            if images:
                self.ctr("images", "rm", "--sync", *images, namespace=ns)
            blobs = self._lines("content", "ls", "-q", namespace=ns)
            if blobs:
                self.ctr("content", "rm", *blobs, namespace=ns, check=False)
            for snapshotter in snapshotters:
                for _ in range(1000):          # leaves first: a parent cannot go before its children
                    snaps = self._snapshots(ns, snapshotter)
                    if not snaps:
                        break
                    parents = {p for _, p in snaps}
                    leaves = [k for k, _ in snaps if k not in parents]
                    self.ctr("snapshots", "--snapshotter", snapshotter, "rm", *leaves, namespace=ns,
                             check=False)
        # Interrupted pulls leave partial downloads ("ingests") that a later pull would resume from.
        ingest = self._content_dir / "ingest"
        if ingest.is_dir():
            for child in ingest.iterdir():
                shutil.rmtree(child, ignore_errors=True)
        # The metadata goes at once; the files go with the next garbage collection (scheduled right
        # after a deletion): give it a moment.
        deadline = time.monotonic() + 10
        while True:
            left = self._left_after_wipe()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            raise UserError(f"wiping the bench containerd host left: {'; '.join(left)}")

    def _left_after_wipe(self) -> list[str]:
        left = []
        for ns in self.namespaces():
            for what, args in (("image", ("images", "ls", "-q")), ("blob", ("content", "ls", "-q")),
                               ("lease", ("leases", "ls", "-q"))):
                n = len(self._lines(*args, namespace=ns))
                if n:
                    left.append(f"{n} {what}(s) in namespace {ns}")
            n = sum(len(self._snapshots(ns, s)) for s in ("overlayfs", "native"))
            if n:
                left.append(f"{n} snapshot(s) in namespace {ns}")
        for what, names in self._on_disk().items():
            if names:
                left.append(f"{len(names)} {what} on disk under {self.root}")
        return left


class DockerContainerdHost(DockerHost):
    """A Docker Engine on the containerd image store (the default of fresh Docker Engine 29+
    installs): images and layers live in its containerd's content store and snapshotter, not in
    dockerd's own layer store. Pulls and wipes go through the engine API as on `DockerHost`; what is
    left after a wipe is checked in the containerd."""

    kind = "docker-containerd"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.containerd = ContainerdHost(self.data_dir / "containerd", run_dir=self.run_dir / "ctd",
                                         start_timeout=self.start_timeout, stop_timeout=self.stop_timeout)

    def _prepare(self) -> None:
        self.config_file.write_text(json.dumps({"features": {"containerd-snapshotter": True}}) + "\n")
        self.containerd.start()

    def _command(self) -> list[str]:
        return super()._command() + [f"--containerd={self.containerd.socket}"]

    def _connected(self) -> None:
        super()._connected()
        info = self._api().info()
        status = dict(tuple(pair) for pair in info.get("DriverStatus") or [] if len(pair) == 2)
        if "snapshotter" not in str(status.get("driver-type", "")):
            raise HostUnsupported(
                f"dockerd {info.get('ServerVersion', '?')} does not run on the containerd image store "
                "(its containerd-snapshotter feature needs Docker Engine 24 or later): no "
                "docker-containerd host here")
        self.containerd_address = str(self.containerd.socket)

    def _pidfiles(self) -> list[Path]:
        return [self._own_pidfile]

    def _after_stop(self) -> None:
        self.containerd.stop()

    def blobs(self) -> set[str]:
        return self.containerd.blobs()

    def wipe(self) -> None:
        self._remove_all()
        self.containerd.wipe()
        if self.images():
            raise UserError(f"wiping the bench {self.kind} host left {len(self.images())} image(s)")
