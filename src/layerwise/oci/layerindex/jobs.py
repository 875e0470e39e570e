"""Indexing one layer (checked against its expected digests, answered from the cache when it can), and
many layers in parallel processes, one layer's failure not stopping the others."""

from __future__ import annotations

import functools
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Sequence, Union

from ...atomic import remove_temporaries
from ...errors import UserError
from .cache import Cache, _hex
from .entries import LayerIndex
from .scanner import _CorruptLayer, _scan

BlobSource = Union[BinaryIO, str, os.PathLike, Callable[[], BinaryIO]]


def index_layer(blob: BlobSource, *, digest: str | None = None, diff_id: str | None = None,
                name: str | None = None, cache: Cache | None = None) -> LayerIndex:
    """Index one layer blob, streaming it once.

    `blob` is a binary file object positioned at the blob's start (left open), a path, or a callable
    that opens one (called only on a cache miss). `digest` / `diff_id`, when given, are checked against
    what was read. With a `cache`, a layer whose diff_id (or digest) is known up front and cached is
    answered without touching the blob. Any failure is a UserError naming the layer.
    """
    label = name or diff_id or digest or _describe(blob)
    for value in (digest, diff_id):
        if value is not None:
            _check_digest_form(value, label)
    if cache is not None and (diff_id or digest):
        hit = cache.get(diff_id=diff_id, digest=digest)
        if hit is not None:
            return hit
    try:
        if isinstance(blob, (str, os.PathLike)):
            with open(blob, "rb") as f:
                index = _scan(f)
        elif callable(blob) and not hasattr(blob, "read"):
            f = blob()
            try:
                index = _scan(f)
            finally:
                f.close()
        else:
            index = _scan(blob)
    except _CorruptLayer as e:
        raise UserError(f"layer {label}: {e}") from None
    except OSError as e:
        raise UserError(f"layer {label}: cannot read the blob ({e.strerror or e})") from None
    if digest is not None and index.digest != digest:
        raise UserError(f"layer {label}: blob digest is {index.digest}, expected {digest} "
                        "(corrupted or a different blob)")
    if diff_id is not None and index.diff_id != diff_id:
        raise UserError(f"layer {label}: uncompressed digest (diff_id) is {index.diff_id}, "
                        f"expected {diff_id}")
    if cache is not None:
        cache.put(index)
    return index


def _check_digest_form(value: str, label: str) -> None:
    try:
        _hex(value)
    except UserError:
        raise UserError(f"layer {label}: {value[:80]!r} is not a sha256 digest") from None


def _describe(blob: object) -> str:
    if isinstance(blob, (str, os.PathLike)):
        return str(blob)
    return str(getattr(blob, "name", None) or "(stream)")


@dataclass(frozen=True)
class LayerJob:
    """How to open one blob, in this process or another: a file path or a picklable callable returning
    a binary file object."""
    source: str | os.PathLike | Callable[[], BinaryIO]
    digest: str | None = None
    diff_id: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.diff_id or self.digest or _describe(self.source)

    def open(self) -> BinaryIO:
        if isinstance(self.source, (str, os.PathLike)):
            return open(self.source, "rb")
        return self.source()

    @property
    def key(self) -> str | None:
        """Jobs with the same key are the same layer, indexed once."""
        return self.digest or self.diff_id


def layer_jobs(image, name: str) -> list[LayerJob]:
    """One job per layer of an `images.Image`, read through the image's own reader and named
    "2/3 (sha256:…) of image NAME", the way the readers name a layer in their errors."""
    count = len(image.layers)
    return [LayerJob(functools.partial(image.open_layer, i), digest=layer.digest, diff_id=layer.diff_id,
                     name=f"{i + 1}/{count} ({layer.digest}) of image {name}")
            for i, layer in enumerate(image.layers)]


@dataclass(frozen=True)
class LayerResult:
    job: LayerJob
    index: LayerIndex | None = None
    error: UserError | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.index is not None


def _run_job(job: LayerJob, cache_dir: str | None) -> tuple[LayerIndex | None, str | None]:
    """Worker side: never raises, so one bad layer cannot break the pool."""
    try:
        cache = Cache(cache_dir) if cache_dir is not None else None
        return index_layer(job.open, digest=job.digest, diff_id=job.diff_id, name=job.label,
                           cache=cache), None
    except UserError as e:
        return None, str(e)
    except OSError as e:
        return None, f"layer {job.label}: cannot read the blob ({e.strerror or e})"
    except Exception as e:   # a bug must still name its layer and leave the others alone
        return None, f"layer {job.label}: {type(e).__name__}: {e}"


def index_layers(jobs: Sequence[LayerJob], processes: int | None = None, cache: Cache | None = None,
                 progress: Callable[[LayerResult], None] | None = None) -> list[LayerResult]:
    """Index many layers, each in its own process (`processes` at a time, default: all CPUs).

    Cached layers are answered first, without a worker; jobs naming the same digest (or diff_id) are
    indexed once. Returns one LayerResult per job, in the order given; a failed layer carries its
    UserError and does not stop the others. `progress` is called with each result as it is known.
    """
    results: list[LayerResult | None] = [None] * len(jobs)
    cache_dir = str(cache.dir) if cache is not None else None

    def done(i: int, result: LayerResult) -> None:
        results[i] = result
        if progress is not None:
            progress(result)

    todo: dict[Any, list[int]] = {}
    for i, job in enumerate(jobs):
        if cache is not None and job.key:
            hit = cache.get(diff_id=job.diff_id, digest=job.digest)
            if hit is not None:
                done(i, LayerResult(job, hit, cached=True))
                continue
        todo.setdefault(job.key if job.key else ("#", i), []).append(i)

    def settle(indexes: list[int], out: tuple[LayerIndex | None, str | None]) -> None:
        index, message = out
        for i in indexes:
            error = UserError(message) if message is not None else None
            done(i, LayerResult(jobs[i], index, error))

    groups = list(todo.values())
    workers = min(processes or os.cpu_count() or 1, len(groups))
    if workers <= 1:
        for group in groups:
            settle(group, _run_job(jobs[group[0]], cache_dir))
    elif groups:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_signals) as pool:
            try:
                futures = {pool.submit(_run_job, jobs[group[0]], cache_dir): group for group in groups}
                for future in as_completed(futures):
                    group = futures[future]
                    try:
                        out = future.result()
                    except Exception as e:   # the worker process died (killed, out of memory...)
                        out = (None, f"layer {jobs[group[0]].label}: indexing process failed ({e})")
                    settle(group, out)
            except BaseException:      # Ctrl-C, SIGTERM: stop the workers now, not after every queued layer
                _stop_workers(pool)
                raise
    return results   # type: ignore[return-value]


def _worker_signals() -> None:
    """In a worker: Ctrl-C is the parent's to handle (it stops the workers); SIGTERM, the parent's
    way to stop one, deletes the cache file it may be writing and ends it at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)


def _worker_stop(signum: int, frame) -> None:
    remove_temporaries()
    os._exit(128 + signum)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):   # no public way before 3.14
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
