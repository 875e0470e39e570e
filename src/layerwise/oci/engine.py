"""The Docker Engine, through its API (the `docker` package): build, tag, push, pull, inspect.

Builds get the engine's default network unless BuildOptions says otherwise, and images are pulled
from wherever they live. What may be fetched is the user's registry policy (policy.py), checked here
before the engine is asked for anything. BuildKit builds go through the docker CLI (the API client
speaks only the legacy builder); `auto` picks BuildKit where the installed Docker offers it.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions

from ..dockerfiles import unbuildable_reason
from ..errors import ServiceDown, UserError
from .policy import RegistryPolicy

Event = Callable[[dict], None]

# What the Docker SDK raises when the daemon goes away under a call or a stream (requests' errors for a
# call, urllib3's for a stream read; not an APIError: that is the daemon answering with an error).
ENGINE_LOST = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
               requests.exceptions.Timeout, urllib3.exceptions.HTTPError)

# The name an explicit Dockerfile travels under inside the context tar (see _context_with_dockerfile).
INJECTED_DOCKERFILE = ".dockerfile.layerwise"
BUILDERS = ("auto", "buildkit", "legacy")
NETWORKS = ("default", "none", "host")
# Where docker CLIs live besides PATH: a newer CLI without the buildx plugin earlier on PATH refuses
# DOCKER_BUILDKIT=1, while Debian's docker.io CLI (20.10) has BuildKit built in.
_CLI_PLACES = ("/usr/bin/docker", "/usr/local/bin/docker", "/bin/docker")
# BuildKit's plain progress names a step once: "#7 [app 2/5] RUN pip install ..."
_BUILDKIT_STEP = re.compile(r"^#\d+ \[(?:[^\]]*? )?(\d+)/(\d+)\] (.+)$")


@dataclass(frozen=True)
class BuildOptions:
    """How images are built: `builder` auto|buildkit|legacy, `network` default|none|host."""
    builder: str = "auto"
    network: str = "default"

    def __post_init__(self):
        if self.builder not in BUILDERS:
            raise UserError(f"--builder {self.builder}: choose one of {', '.join(BUILDERS)}")
        if self.network not in NETWORKS:
            raise UserError(f"--network {self.network}: choose one of {', '.join(NETWORKS)}")


@dataclass(frozen=True)
class ChosenBuilder:
    kind: str                 # "buildx" | "buildkit" (the CLI's built-in) | "legacy"
    cli: str | None = None    # the docker CLI that builds (BuildKit kinds)
    note: str = ""            # why this one, said once

    @property
    def name(self) -> str:
        return {"buildx": "BuildKit (docker buildx)", "buildkit": "BuildKit (DOCKER_BUILDKIT=1)",
                "legacy": "the legacy builder"}[self.kind] + (f" via {self.cli}" if self.cli else "")


def docker_clis() -> list[str]:
    """Every docker CLI on this machine, PATH order first, each binary once."""
    found: list[str] = []
    seen: set[str] = set()
    candidates = [os.path.join(d, "docker") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for path in [*candidates, *_CLI_PLACES]:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                found.append(path)
    return found


def _quiet(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              env={**os.environ, **(env or {})})
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.lru_cache(maxsize=1)
def find_buildkit() -> ChosenBuilder | None:
    """The first docker CLI that offers BuildKit, by what it can do, not by PATH order: the buildx
    plugin, else BuildKit built into the CLI (its build command then has --secret)."""
    clis = docker_clis()
    for cli in clis:
        done = _quiet([cli, "buildx", "version"])
        if done and done.returncode == 0:
            return ChosenBuilder("buildx", cli)
    for cli in clis:
        done = _quiet([cli, "build", "--help"], {"DOCKER_BUILDKIT": "1"})
        if done and done.returncode == 0 and "--secret" in done.stdout:
            return ChosenBuilder("buildkit", cli)
    return None


class BuildFailed(Exception):
    """A Dockerfile step failed: the image's own failure, not the tool's."""

    def __init__(self, message: str, log: list[str]):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class LocalImage:
    id: str
    repo_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]
    labels: dict
    history: tuple[dict, ...]


def choose_builder(wanted: str) -> ChosenBuilder:
    """What `--builder wanted` means on this machine (no daemon needed to find out)."""
    if wanted == "legacy":
        return ChosenBuilder("legacy", note="--builder legacy")
    found = find_buildkit()
    if found:
        return found
    if wanted == "buildkit":
        raise UserError("--builder buildkit: no docker CLI here offers BuildKit (neither the buildx "
                        "plugin nor a CLI with BuildKit built in, such as Debian's docker.io); install "
                        "one or use --builder legacy")
    return ChosenBuilder("legacy", note="no docker CLI here offers BuildKit")


def check_dockerfile(text: str, what: str, source: Path | str | None, chosen: ChosenBuilder,
                     policy: RegistryPolicy) -> None:
    """Refuse, before the engine is asked, what the chosen builder must not get (the legacy
    builder: `# syntax=`, heredocs) and any image the registry policy does not allow."""
    if chosen.kind == "legacy":
        reason = unbuildable_reason(text)
        if reason:
            raise UserError(f"refusing to build {what} with the legacy builder: {reason}; "
                            "build with --builder buildkit", source)
    policy.check_dockerfile(text, f"the Dockerfile of {what}", source)


class Engine:
    def __init__(self, timeout: int = 900, *, policy: RegistryPolicy | None = None,
                 options: BuildOptions | None = None):
        self.policy = policy or RegistryPolicy.resolve()
        self.options = options or BuildOptions()     # for builds that pass no options of their own
        self._chosen: dict[str, ChosenBuilder] = {}
        self._has_bridge: bool | None = None
        self._choosing = threading.Lock()
        self.where = where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            self.client = docker.from_env(version="auto", timeout=timeout)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise ServiceDown(f"the Docker Engine at {where} is not answering ({type(e).__name__}); "
                            "start it with: scripts/services start (as root)") from None
        self.api = self.client.api
        # What cancel() cuts: builds through the CLI (processes) and the API's streamed builds and pulls.
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._cancelled = False
        self.api.hooks["response"].append(self._track)

    def _track(self, response, *args, **kwargs):
        if response.request.method == "POST" and re.search(r"/(build|images/create)\b", response.url or ""):
            self._live.add(response)

    def cancel(self) -> None:
        """Cut every build and pull under way (an interrupted run): CLI builds are stopped, the API's
        streams closed; the daemon then cancels them and removes their containers."""
        self._cancelled = True
        for item in list(self._live):
            try:
                if isinstance(item, subprocess.Popen):
                    if item.poll() is None:
                        item.terminate()
                else:      # wake the worker blocked reading the stream: its read ends at once
                    item.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
            except (AttributeError, OSError):
                pass       # already finished

    def answers(self) -> bool:
        """Whether the daemon answers a ping now."""
        try:
            return bool(self.api.ping())
        except Exception:   # noqa: BLE001 - any failure means no
            return False

    def lost(self, what: str) -> ServiceDown:
        """The error for a daemon that went away in the middle of the work."""
        return ServiceDown(f"lost the Docker Engine at {self.where} while {what}; start it again and rerun: "
                           "images already built (and pushed) are kept, only the rest is built")

    def close(self) -> None:
        self.client.close()

    def inspect(self, ref: str) -> LocalImage | None:
        try:
            attrs = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            if e.status_code == 404:
                return None
            raise UserError(f"the Docker Engine could not inspect {ref}: {e.explanation}") from None
        try:
            history = tuple(self.api.history(attrs["Id"]))[::-1]   # oldest first
        except docker.errors.APIError:
            history = ()
        return LocalImage(
            id=attrs["Id"], repo_digests=tuple(attrs.get("RepoDigests") or ()),
            diff_ids=tuple(attrs.get("RootFS", {}).get("Layers") or ()),
            labels=dict((attrs.get("Config") or {}).get("Labels") or {}), history=history,
        )

    def builder(self, options: BuildOptions | None = None) -> ChosenBuilder:
        """The builder `options.builder` resolves to on this machine (found once per engine)."""
        options = options or self.options
        with self._choosing:
            if options.builder not in self._chosen:
                self._chosen[options.builder] = choose_builder(options.builder)
            return self._chosen[options.builder]

    def network(self, options: BuildOptions | None = None) -> tuple[str, str]:
        """The network mode builds get, and a note when `default` cannot be what it says: an engine
        started without a bridge (dockerd --bridge=none) has no default network to give."""
        wanted = (options or self.options).network
        if wanted != "default":
            return wanted, ""
        with self._choosing:
            if self._has_bridge is None:
                try:
                    self._has_bridge = bool(self.api.networks(names=["bridge"]))
                except docker.errors.APIError:
                    self._has_bridge = True
        if self._has_bridge:
            return "default", ""
        return "none", "network none: the engine has no bridge (dockerd --bridge=none); --network host gives one"

    def check_dockerfile(self, text: str, tag: str, source: Path,
                         options: BuildOptions | None = None) -> ChosenBuilder:
        """check_dockerfile with this engine's builder and policy; returns the builder."""
        chosen = self.builder(options)
        check_dockerfile(text, tag, source, chosen, self.policy)
        return chosen

    def build(self, context: Path, tag: str, labels: dict[str, str], on_event: Event | None = None,
              nocache: bool = False, dockerfile: Path | None = None, target: str | None = None,
              options: BuildOptions | None = None) -> str:
        """Build with the builder and network `options` choose; returns the image ID.

        The Dockerfile is context/Dockerfile, or `dockerfile` (anywhere, inside the context or not).
        `target` builds only up to that stage. The Dockerfile actually used is checked first (see
        check_dockerfile)."""
        options = options or self.options
        source = dockerfile or context / "Dockerfile"
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the Dockerfile to build {tag} ({e})", source) from None
        chosen = self.check_dockerfile(text, tag, source, options)
        if chosen.kind != "legacy":
            return self._build_cli(chosen, context, tag, labels, on_event, nocache, dockerfile, target, options)
        if dockerfile is None:
            return self._build(tag, {"path": str(context)}, labels, on_event, nocache, target, options)
        archive = _context_with_dockerfile(context, text)
        try:
            return self._build(tag, {"fileobj": archive, "custom_context": True, "dockerfile": INJECTED_DOCKERFILE},
                               labels, on_event, nocache, target, options)
        finally:
            archive.close()

    def _build(self, tag: str, source: dict, labels: dict[str, str], on_event: Event | None, nocache: bool,
               target: str | None, options: BuildOptions) -> str:
        log: list[str] = []
        image_id = None
        mode, _ = self.network(options)
        network = None if mode == "default" else mode
        try:
            stream = self.api.build(**source, tag=tag, labels=labels, network_mode=network, rm=True,
                                    forcerm=True, pull=False, decode=True, nocache=nocache, target=target)
            for event in stream:
                if on_event:
                    on_event(event)
                if "stream" in event:
                    log.append(event["stream"].rstrip("\n"))
                if "error" in event:
                    raise BuildFailed(event["error"].strip(), log)
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
        except docker.errors.APIError as e:
            raise BuildFailed(str(e.explanation), log) from None
        except (*ENGINE_LOST, docker.errors.DockerException) as e:
            raise self.lost(f"building {tag} ({type(e).__name__})") from None
        if not image_id:
            raise BuildFailed("the engine reported no image", log)
        return image_id

    def _build_cli(self, chosen: ChosenBuilder, context: Path, tag: str, labels: dict[str, str],
                   on_event: Event | None, nocache: bool, dockerfile: Path | None, target: str | None,
                   options: BuildOptions) -> str:
        """`docker build` with BuildKit, its plain progress lines passed on as build events."""
        with tempfile.TemporaryDirectory(prefix="layerwise-buildkit-") as tmp:
            iidfile = Path(tmp) / "iid"
            cmd = [chosen.cli, *(["buildx", "build", "--load"] if chosen.kind == "buildx" else ["build"]),
                   "--progress=plain", "--iidfile", str(iidfile), "-t", tag]
            for key, value in sorted(labels.items()):
                cmd += ["--label", f"{key}={value}"]
            mode, _ = self.network(options)
            if mode != "default":
                cmd += ["--network", mode]
            if nocache:
                cmd.append("--no-cache")
            if target:
                cmd += ["--target", target]
            if dockerfile is not None:
                cmd += ["-f", str(dockerfile)]
            cmd.append(str(context))
            # The CLI builds on the engine the SDK talks to (DOCKER_HOST, else the default socket),
            # never on another one a `docker context` of the user's would choose.
            env = {**os.environ, "DOCKER_HOST": self.where, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
            log: list[str] = []
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", env=env, stdin=subprocess.DEVNULL)
            except OSError as e:
                raise UserError(f"cannot run {chosen.cli} to build {tag}: {e}") from None
            self._live.add(proc)
            if self._cancelled:
                proc.terminate()
            with proc:
                for line in proc.stdout:
                    log.append(line.rstrip("\n"))
                    if on_event:   # a step's first line, shaped as the legacy builder's, for the progress views
                        step = _BUILDKIT_STEP.match(line.strip())
                        on_event({"stream": f"Step {step.group(1)}/{step.group(2)} : {step.group(3)}\n"
                                  if step else line})
            if proc.returncode != 0:
                raise BuildFailed(_buildkit_error(log), log)
            try:
                return iidfile.read_text().strip()
            except OSError:
                raise BuildFailed("BuildKit reported no image", log) from None

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.api.tag(image, repository, tag=tag)

    def _follow(self, verb: str, ref: str, events, on_event: Event | None) -> dict:
        """Consume a push/pull event stream; the first error ends it as one clear UserError.
        Returns the last `aux` payload (a push's digest is there)."""
        aux: dict = {}
        try:
            for event in events:
                if on_event:
                    on_event(event)
                if "error" in event:
                    outcome = "was rejected" if verb == "push" else "failed"
                    raise UserError(f"{verb} of {ref} {outcome}: {event['error'].strip()}")
                aux = event.get("aux") or aux
        except docker.errors.APIError as e:
            raise UserError(f"{verb} of {ref} failed: {e.explanation}") from None
        return aux

    def push(self, repository: str, tag: str, on_event: Event | None = None) -> str:
        """Push repository:tag; returns the manifest digest the registry stored."""
        ref = f"{repository}:{tag}"
        digest = self._follow("push", ref, self.api.push(repository, tag=tag, stream=True, decode=True),
                              on_event).get("Digest")
        if not digest:
            raise UserError(f"push of {ref} reported no digest")
        return digest

    def pull(self, repository: str, tag: str, on_event: Event | None = None) -> None:
        """Pull from wherever the image lives, if the registry policy allows it (`tag` may be a digest)."""
        ref = self.policy.check(f"{repository}@{tag}" if tag.startswith("sha") else f"{repository}:{tag}",
                                "a pull")
        self._follow("pull", str(ref), self.api.pull(ref.name, tag=ref.reference, stream=True, decode=True),
                     on_event)

    def run(self, ref: str, command: list[str] | None = None) -> str:
        """Run a container with no network and return what it printed."""
        try:
            out = self.client.containers.run(ref, command, network_mode="none", remove=True,
                                             stdout=True, stderr=True)
        except docker.errors.ContainerError as e:
            raise UserError(f"{ref} exited with {e.exit_status}: {(e.stderr or b'').decode()[-300:]}") from None
        return out.decode(errors="replace")

    def remove(self, ref: str) -> None:
        try:
            self.api.remove_image(ref, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            pass


def _buildkit_error(log: list[str]) -> str:
    """The line that says why a BuildKit build failed (its plain output ends with it)."""
    for line in reversed(log):
        text = line.strip()
        if text.lower().startswith(("error:", "error ", "failed to solve")) or " ERROR:" in text:
            return text
    return next((l.strip() for l in reversed(log) if l.strip()), "the BuildKit build failed")


def _context_with_dockerfile(context: Path, text: str):
    """The context as a tar (a temporary file) holding the Dockerfile text under a fixed name, with
    `.dockerignore` rewritten to drop it again: docker-py's (and the docker CLI's) way to send a
    Dockerfile from outside the context. Done for every explicit Dockerfile, inside the context or
    not, so two builds of one context with different Dockerfiles see exactly the same files — the
    rewritten `.dockerignore` included, which a `COPY . .` would otherwise show as a difference."""
    ignore = context / ".dockerignore"
    exclude = None
    if ignore.exists():   # parsed as docker-py's api.build parses it
        exclude = [line.strip() for line in ignore.read_text().splitlines()
                   if line.strip() and not line.strip().startswith("#")]
    return docker.utils.tar(str(context), exclude=exclude, dockerfile=(INJECTED_DOCKERFILE, text))

