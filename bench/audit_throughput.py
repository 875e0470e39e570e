#!/usr/bin/env python3
"""How fast layerwise indexes layers, beside the practical floor `gzip -dc FILE | sha256sum`.

    .venv/bin/python bench/audit_throughput.py                  # generate ~300 MB of test layers
    .venv/bin/python bench/audit_throughput.py BLOB.tar.gz ...  # or measure real blobs (gzip/zstd/tar)

Prints, in MB/s (10^6 bytes) of compressed layer input:
  - the floor, `gzip -dc FILE | sha256sum` layer after layer, pinned to one core and free (the two
    processes of the pipe then use two cores), and one pipe per core at once;
  - layerwise's index (digest + diff_id + every file's sha256) on one core, and on all cores (one
    process per layer, each reading and decompressing in a second thread when it may use 2+ CPUs);
  - Python's `tarfile` (stream mode) doing the same work on one core, for comparison;
  - a first audit into an empty cache, and the second one answered from the cache.
The issue's targets: one core at >= 70% of the floor, the second (cached) run >= 20x faster.
Nothing is asserted: figures depend on the machine. The layers are read from the page cache (they
are read once before measuring), so the figures are CPU throughput, not disk throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from layerwise.oci.layerindex import Cache, LayerJob, index_layer, index_layers  # noqa: E402

GEN_VERSION = 2
MB = 1e6

# name, small text files, small binary files, [(kind, MiB)] large files
LAYERS = [
    ("base-os", 22000, 4000, [("text", 24)]),
    ("runtime", 6000, 3000, [("text", 40), ("text", 40), ("random", 16)]),
    ("model", 200, 0, [("random", 48), ("random", 40)]),
    ("app", 5000, 1500, [("random", 24), ("text", 24), ("zeros", 8)]),
]


# ------------------------------------------------------------------------------------------ layers

def _text_pool(rng: random.Random, size: int) -> bytes:
    """Word soup with a Zipf-like vocabulary: compresses about as well as source code and docs."""
    letters = "etaoinshrdlcumwfgypbvkjxqz_"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(6000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    seps = [" ", " ", " ", " ", "\n", "(", ") ", ", ", ".", " = ", "    ", ":\n"]
    words = rng.choices(vocab, weights, k=size // 6)
    out, n = [], 0
    for w in words:
        s = w + rng.choice(seps)
        out.append(s)
        n += len(s)
        if n >= size:
            break
    return "".join(out).encode()


def _make_layer(args: tuple[str, int, int, list, Path, int]) -> str:
    name, n_text, n_bin, large, path, seed = args
    rng = random.Random(seed)
    pool = _text_pool(rng, 8 << 20)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as raw:
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)       # gzip level 6, as Docker and Go write layers

        class Sink:
            def write(self, data):
                raw.write(gz.compress(data))
                return len(data)

        with tarfile.open(fileobj=Sink(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            def add(member_name: str, data: bytes | None, kind=tarfile.REGTYPE, mode=0o644):
                info = tarfile.TarInfo(member_name)
                info.type, info.mode, info.mtime = kind, mode, 1700000000
                if data is not None:
                    info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if data is not None else None)

            dirs = [f"{name}/d{i:03d}" for i in range(max(1, (n_text + n_bin) // 150))]
            add(name, None, tarfile.DIRTYPE, 0o755)
            for d in dirs:
                add(d, None, tarfile.DIRTYPE, 0o755)
            for i in range(n_text):
                size = min(int(rng.lognormvariate(8.3, 1.0)), 200_000)
                start = rng.randrange(len(pool) - size)
                add(f"{rng.choice(dirs)}/f{i:05d}.txt", pool[start:start + size])
            for i in range(n_bin):
                size = min(int(rng.lognormvariate(8.8, 1.1)), 400_000)
                part = rng.randint(0, size)
                add(f"{rng.choice(dirs)}/lib{i:05d}.so", rng.randbytes(part) + bytes(size - part), mode=0o755)
            for j, (kind, mib) in enumerate(large):
                size = mib << 20
                if kind == "random":
                    data = rng.randbytes(size)
                elif kind == "zeros":
                    data = bytes(size)
                else:
                    parts, n = [], 0
                    while n < size:
                        k = rng.randint(4096, 65536)
                        s = rng.randrange(len(pool) - k)
                        parts.append(pool[s:s + k])
                        n += k
                    data = b"".join(parts)[:size]
                add(f"{name}/big{j}.{kind}", data)
                del data
        raw.write(gz.flush())
    os.replace(tmp, path)
    return str(path)


def generate(workdir: Path, scale: float) -> list[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = workdir / "layers.json"
    spec = {"v": GEN_VERSION, "scale": scale, "layers": LAYERS}
    paths = [workdir / f"layer-{i}-{name}.tar.gz" for i, (name, *_rest) in enumerate(LAYERS)]
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(spec)) \
            and all(p.exists() for p in paths):
        return paths
    jobs = []
    for i, (name, n_text, n_bin, large) in enumerate(LAYERS):
        jobs.append((name, int(n_text * scale), int(n_bin * scale),
                     [(k, max(1, int(m * scale))) for k, m in large], paths[i], 1000 + i))
    print(f"generating {len(jobs)} test layers in {workdir} ...", flush=True)
    t = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_layer, jobs))
    stamp.write_text(json.dumps(spec))
    print(f"  done in {time.perf_counter() - t:.1f} s", flush=True)
    return paths


# ------------------------------------------------------------------------------------------ measures

def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _best(fn, repeat: int) -> float:
    return min(_timed(fn) for _ in range(repeat))


def _decompressor(path: Path) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return ["gzip", "-dc"]
    if head == b"\x28\xb5\x2f\xfd":
        return ["zstd", "-dcq"]
    return ["cat"]


def _floor_pipe(path: Path, cpu: int | None) -> None:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    cmd = " ".join(_decompressor(path)) + f" '{path}' | sha256sum > /dev/null"
    subprocess.run([*pin, "sh", "-c", cmd], check=True)


def floor_sequential(paths: list[Path], cpu: int | None) -> None:
    for p in paths:
        _floor_pipe(p, cpu)


def floor_parallel(paths: list[Path], workers: int) -> None:
    running: list[subprocess.Popen] = []
    for p in paths:
        if len(running) >= workers:
            running.pop(0).wait()
        cmd = " ".join(_decompressor(p)) + f" '{p}' | sha256sum > /dev/null"
        running.append(subprocess.Popen(["sh", "-c", cmd]))
    for proc in running:
        proc.wait()


def ours_sequential(paths: list[Path]) -> None:
    for p in paths:
        index_layer(p)


def tarfile_sequential(paths: list[Path]) -> None:
    """The same index with the standard library: tarfile in stream mode, hashing each member."""
    from isal.igzip import IGzipFile

    class Hashing(io.RawIOBase):
        def __init__(self, f):
            self.f, self.sha = f, hashlib.sha256()

        def readable(self):
            return True

        def readinto(self, b):
            n = self.f.readinto(b)
            self.sha.update(memoryview(b)[:n])
            return n

    for p in paths:
        with open(p, "rb") as raw:
            blob = Hashing(raw)
            tar_stream = Hashing(IGzipFile(fileobj=io.BufferedReader(blob, 1 << 20)))
            with tarfile.open(fileobj=io.BufferedReader(tar_stream, 1 << 20), mode="r|") as tar:
                for m in tar:
                    if m.isreg():
                        h, f = hashlib.sha256(), tar.extractfile(m)
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
            while tar_stream.read(1 << 20):
                pass


def one_core(fn, cpu: int = 0):
    """Run fn with this process pinned to one CPU (restored after)."""
    if not hasattr(os, "sched_setaffinity"):
        return fn()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("blobs", nargs="*", type=Path, help="layer blobs to measure (default: generated)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "layerwise-bench",
                    help="where generated layers are kept between runs")
    ap.add_argument("--scale", type=float, default=1.0, help="size of the generated layers (1 = ~300 MB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    ap.add_argument("--skip-tarfile", action="store_true", help="do not measure the tarfile variant")
    args = ap.parse_args()

    paths = args.blobs or generate(args.workdir, args.scale)
    total = sum(p.stat().st_size for p in paths)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rep = args.repeat
    for p in paths:            # into the page cache
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass

    indexes = [index_layer(p) for p in paths]
    kinds = ", ".join(sorted({ix.compression for ix in indexes}))
    print(f"layers: {len(paths)} ({kinds}), {total / MB:.0f} MB compressed, "
          f"{sum(ix.size for ix in indexes) / MB:.0f} MB of tar, {sum(len(ix.entries) for ix in indexes)} "
          f"entries; {cpus} CPUs; load average before: {os.getloadavg()[0]:.2f}")

    rate = lambda seconds: total / MB / seconds  # noqa: E731
    fl1 = _best(lambda: floor_sequential(paths, cpu=0), rep)
    flf = _best(lambda: floor_sequential(paths, cpu=None), rep)
    fln = _best(lambda: floor_parallel(paths, cpus), rep)
    us1 = _best(lambda: one_core(lambda: ours_sequential(paths)), rep)
    usn = _best(lambda: index_layers([LayerJob(p) for p in paths], processes=cpus), rep)
    tf1 = None
    if not args.skip_tarfile and kinds == "gzip":
        tf1 = _best(lambda: one_core(lambda: tarfile_sequential(paths)), max(1, rep - 1))

    jobs = [LayerJob(p, diff_id=ix.diff_id) for p, ix in zip(paths, indexes)]   # as image configs name them
    colds, warms = [], []
    for _ in range(rep):
        with tempfile.TemporaryDirectory() as cdir:
            cache = Cache(cdir)
            colds.append(_timed(lambda c=cache: index_layers(jobs, processes=cpus, cache=c)))
            warms.append(_best(lambda c=cache: index_layers(jobs, processes=cpus, cache=c), 3))
    cold, warm = min(colds), min(warms)

    print()
    print(f"{'':44s}{'MB/s':>9s}{'seconds':>9s}")
    row = lambda label, s: print(f"{label:44s}{rate(s):9.0f}{s:9.2f}")  # noqa: E731
    row("floor: gzip -dc | sha256sum, one core", fl1)
    row("floor: gzip -dc | sha256sum, pipe free", flf)
    row(f"floor: one pipe per core ({cpus} cores)", fln)
    row("layerwise index, one core", us1)
    row(f"layerwise index, all cores ({cpus} processes)", usn)
    if tf1 is not None:
        row("tarfile (stream mode) + hashlib, one core", tf1)
    row("first audit, empty cache (all cores)", cold)
    row("second audit, from the cache", warm)
    print()
    print(f"one core vs floor (one core): {fl1 / us1:.0%}   (target >= 70%)")
    print(f"one core vs floor (pipe free, two processes): {flf / us1:.0%}")
    print(f"all cores vs floor (one pipe per core): {fln / usn:.0%}")
    print(f"per core, all cores: {rate(usn) / cpus:.0f} MB/s")
    if tf1 is not None:
        print(f"own tar parser vs tarfile, one core: {tf1 / us1:.1f}x faster")
    print(f"cache speed-up, second audit vs first: {cold / warm:.0f}x   (target >= 20x)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine lowers every figure)")
    try:
        import resource
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
