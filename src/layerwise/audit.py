"""`layerwise audit`: what a family of existing images shares, and what hosts download twice.

Reads each image through `images` (registry, `docker save` archive, OCI layout or engine), indexes
every distinct layer once (`layerindex`, cached per diff_id), and computes findings as plain data:
- the sharing matrix: layers and bytes each pair of images shares (same blob);
- recompressed layers: the same diff_id under different blob digests (containerd pulls each);
- the same files under different diff_ids (e.g. the same step built twice: timestamps differ),
  which every host downloads again;
- near-identical layers (most file bytes equal) and files duplicated across images outside any
  shared layer, by directory;
- cold-pull bytes of a host holding all the images, by the Docker Engine's and containerd's rules,
  and what they would be if identical content were one layer;
- waste inside each image, as dive computes it;
- a recommended tree: the layers fed to the planner, and what a host would pull with it.
Rendering is in `report`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from .errors import UserError
from .images import LayerRef, open_image
from .layerindex import Cache, LayerIndex, LayerJob, dive_efficiency, effective_tree, index_layers
from .model import Step
from .planner import image_runs, prefix_tree


@dataclass
class AuditedImage:
    name: str
    layers: list[LayerRef] = field(default_factory=list)
    indexes: list[LayerIndex | None] = field(default_factory=list)
    error: str | None = None
    made_by: list[str] = field(default_factory=list)   # the instruction behind each layer (history)


def load(specs: list[str], *, platform: str | None = None, cache: Cache | None = None,
         processes: int | None = None, progress=None) -> list[AuditedImage]:
    """Open every image and index its layers; an image that fails keeps its error, the rest go on."""
    audited, opened = [], []
    for spec in specs:
        try:
            image = open_image(spec, platform=platform)
        except UserError as e:
            audited.append(AuditedImage(spec, error=str(e)))
            continue
        history = [h.get("created_by", "") for h in image.config.get("history", []) if not h.get("empty_layer")]
        layers = list(image.layers)
        made_by = history if len(history) == len(layers) else [""] * len(layers)
        audited.append(AuditedImage(spec, layers, made_by=made_by))
        opened.append((audited[-1], image))
    jobs, owners = [], []
    for entry, image in opened:
        for i, layer in enumerate(entry.layers):
            jobs.append(LayerJob(functools.partial(image.open_layer, i), digest=layer.digest,
                                 diff_id=layer.diff_id, name=f"{entry.name} layer {i + 1} ({layer.digest[:19]})"))
            owners.append(entry)
    if progress is not None:
        progress(None, len(jobs))      # announce the total before the first layer is done
    results = index_layers(jobs, processes=processes, cache=cache,
                           progress=(lambda r: progress(r, len(jobs))) if progress else None)
    for entry, result in zip(owners, results):
        entry.indexes.append(result.index)
        if result.error and not entry.error:
            entry.error = str(result.error)
    return audited


def sharing_matrix(images: list[AuditedImage]) -> list[dict]:
    rows = []
    for i, a in enumerate(images):
        for b in images[i + 1:]:
            size = {l.digest: l.size for l in a.layers}
            shared = size.keys() & {l.digest for l in b.layers}
            rows.append({"a": a.name, "b": b.name, "layers": len(shared), "bytes": sum(size[d] for d in shared)})
    return rows


def recompressed(images: list[AuditedImage]) -> list[dict]:
    """Same uncompressed layer under several blob digests; `extra_bytes`: all blobs but the smallest."""
    by_diff: dict[str, dict[str, int]] = {}
    for img in images:
        for l in img.layers:
            by_diff.setdefault(l.diff_id, {})[l.digest] = l.size
    out = []
    for diff_id, blobs in sorted(by_diff.items()):
        if len(blobs) > 1:
            out.append({"diff_id": diff_id, "digests": sorted(blobs),
                        "extra_bytes": sum(blobs.values()) - min(blobs.values())})
    return out


def file_set_key(index: LayerIndex) -> str:
    """Identity of a layer's files whatever their timestamps: paths, types, modes, owners, contents."""
    h = hashlib.sha256()
    for e in sorted(index.entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.type}\0{e.mode}\0{e.uid}\0{e.gid}\0{e.size}\0{e.sha256}\0{e.link}\n".encode())
    return h.hexdigest()


def same_files(images: list[AuditedImage]) -> list[dict]:
    """Layers with other diff_ids but the same files (e.g. the same step built twice).
    `extra_bytes`: compressed bytes of all those layers but one, which a host downloads again."""
    groups: dict[str, dict[str, tuple[int, set[str]]]] = {}
    for img in images:
        for layer, index in zip(img.layers, img.indexes):
            if index is None or not index.entries:
                continue
            size, names = groups.setdefault(file_set_key(index), {}).get(layer.diff_id, (layer.size, set()))
            names.add(img.name)
            groups[file_set_key(index)][layer.diff_id] = (size, names)
    out = []
    for key, by_diff in groups.items():
        if len(by_diff) > 1:
            sizes = [s for s, _ in by_diff.values()]
            index = next(i for img in images for l, i in zip(img.layers, img.indexes)
                         if i is not None and l.diff_id in by_diff)
            out.append({"files": len(index.entries), "file_bytes": index.file_bytes,
                        "diff_ids": sorted(by_diff), "images": sorted({n for _, ns in by_diff.values() for n in ns}),
                        "extra_bytes": sum(sizes) - min(sizes)})
    return sorted(out, key=lambda g: -g["extra_bytes"])


def near_identical(images: list[AuditedImage], threshold: float = 0.5) -> list[dict]:
    """Pairs of layers with other file sets where most (by default over half) of the file bytes are
    the same path with the same content:
    a step built twice whose output differs in a few files (timestamps in .pyc files, logs, ...)."""
    layers: dict[str, tuple[LayerIndex, int, set[str]]] = {}
    for img in images:
        for layer, index in zip(img.layers, img.indexes):
            if index is not None and index.file_bytes:
                layers.setdefault(layer.diff_id, (index, layer.size, set()))[2].add(img.name)
    files = {d: {e.path: (e.sha256, e.size) for e in ix.entries if e.type == "file"} for d, (ix, _, _) in layers.items()}
    keys = {d: file_set_key(ix) for d, (ix, _, _) in layers.items()}
    out = []
    ids = sorted(layers)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if keys[a] == keys[b]:
                continue   # the same files: reported by same_files
            fa, fb = files[a], files[b]
            common = sum(size for path, (sha, size) in fa.items() if fb.get(path, (None,))[0] == sha)
            total = max(layers[a][0].file_bytes, layers[b][0].file_bytes)
            if total and common / total >= threshold:
                differing = sorted(p for p in fa.keys() | fb.keys() if fa.get(p) != fb.get(p))
                out.append({"diff_ids": [a, b], "images": sorted(layers[a][2] | layers[b][2]),
                            "same_bytes": common, "similarity": round(common / total, 4),
                            "differing_files": len(differing), "examples": differing[:5],
                            "extra_bytes": min(layers[a][1], layers[b][1])})
    return sorted(out, key=lambda g: -g["extra_bytes"])


def duplicated_files(images: list[AuditedImage], top: int = 20) -> list[dict]:
    """Files with the same content in several images outside any layer those images share, by
    directory: bytes each host holding them all stores and pulls more than once."""
    where: dict[str, dict[str, tuple[str, int, str]]] = {}   # sha -> image -> (path, size, layer digest)
    for img in images:
        if any(ix is None for ix in img.indexes):
            continue
        tree = effective_tree(img.indexes)
        for path, te in tree.items():
            e = te.entry
            if e.type == "file" and e.sha256 and e.size:
                where.setdefault(e.sha256, {}).setdefault(img.name, (path, e.size, img.layers[te.layer].digest))
    by_dir: dict[str, dict] = {}
    for copies in where.values():
        if len(copies) < 2 or len({digest for _, _, digest in copies.values()}) < 2:
            continue   # in one image, or every copy comes from one shared layer
        path, size, _ = next(iter(copies.values()))
        extra = size * (len({d for _, _, d in copies.values()}) - 1)
        entry = by_dir.setdefault(path.rsplit("/", 1)[0] if "/" in path else "/",
                                  {"files": 0, "extra_bytes": 0, "images": set()})
        entry["files"] += 1
        entry["extra_bytes"] += extra
        entry["images"] |= set(copies)
    rows = [{"directory": d, "files": v["files"], "extra_bytes": v["extra_bytes"], "images": sorted(v["images"])}
            for d, v in by_dir.items()]
    return sorted(rows, key=lambda r: -r["extra_bytes"])[:top]


def cold_pull(images: list[AuditedImage]) -> dict[str, int]:
    """Layer bytes a host holding all the images downloaded, by each host kind's rule, and the
    floor if identical files were one layer."""
    chains: dict[str, int] = {}
    blobs: dict[str, int] = {}
    contents: dict[str, int] = {}
    for img in images:
        chain = ""
        for layer, index in zip(img.layers, img.indexes):
            chain = hashlib.sha256(f"{chain}{layer.diff_id}".encode()).hexdigest()   # like a ChainID
            chains.setdefault(chain, layer.size)     # the first image pulled brings it
            blobs.setdefault(layer.digest, layer.size)
            key = file_set_key(index) if index is not None and index.entries else layer.diff_id
            contents[key] = min(layer.size, contents.get(key, layer.size))
    return {"docker": sum(chains.values()), "containerd": sum(blobs.values()), "floor": sum(contents.values())}


def recommended_tree(images: list[AuditedImage]) -> dict:
    """Feed the images' layers to the planner: equal steps under equal parents become shared base
    images. A step is its instruction (from the history) plus, for COPY/ADD, its file set."""
    chains = {}
    for img in images:
        steps = []
        made_by_all = img.made_by or [""] * len(img.layers)
        for i, (layer, index, made_by) in enumerate(zip(img.layers, img.indexes, made_by_all)):
            copies = " COPY " in f" {made_by} " or " ADD " in f" {made_by} "
            content = file_set_key(index) if index is not None and (copies or not made_by) else None
            steps.append(Step(instruction="RUN " + (made_by or f"layer {i + 1}").replace("\n", " "),
                              category="layer", context_digest=content, size=layer.size,
                              size_source="measured"))
        chains[img.name] = steps
    nodes, _ = prefix_tree(chains)
    runs = image_runs(nodes, {}, {"layer": "-"})
    bases = [{"layers": len(run), "bytes": sum(nodes[i].step.size or 0 for i in run),
              "used_by": sorted(nodes[run[-1]].apps)}
             for run in runs if len(nodes[run[-1]].apps) > 1]
    return {"bases": bases, "cold_pull": sum(n.step.size or 0 for n in nodes)}


def findings(images: list[AuditedImage]) -> dict:
    ok = [img for img in images if not img.error]
    return {
        "images": [
            {"name": img.name, "layers": len(img.layers), "bytes": sum(l.size for l in img.layers),
             "error": img.error,
             "efficiency": (lambda e: {"score": round(e.score, 6), "wasted_bytes": e.wasted_bytes})(
                 dive_efficiency(img.indexes)) if not img.error else None}
            for img in images
        ],
        "sharing": sharing_matrix(ok),
        "recompressed": recompressed(ok),
        "same_files_other_digests": same_files(ok),
        "near_identical": near_identical(ok),
        "duplicated_files": duplicated_files(ok),
        "cold_pull": cold_pull(ok),
        "recommended_tree": recommended_tree(ok),
    }


GATES = ("efficiency", "sharing")


def parse_gates(gates) -> dict[str, float]:
    """`--fail-under` thresholds: METRIC=VALUE, VALUE a fraction (0.9) or a percentage (90%)."""
    out = {}
    for gate in gates:
        metric, _, value = gate.partition("=")
        try:
            number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            number = None
        if metric not in GATES or number is None or not 0 <= number <= 1:
            raise UserError(f"--fail-under {gate!r}: write METRIC=VALUE with METRIC one of "
                            f"{', '.join(GATES)} and VALUE a fraction (0.9) or a percentage (90%)")
        out[metric] = number
    return out


def sharing(doc: dict) -> float:
    """Share of the images' bytes that a host holding them all does not download (Docker Engine)."""
    total = sum(i["bytes"] for i in doc["images"] if not i["error"])
    return 1 - doc["cold_pull"]["docker"] / total if total else 1.0


def check_gates(doc: dict, thresholds: dict[str, float]) -> list[str]:
    failed = []
    if "efficiency" in thresholds:
        for img in doc["images"]:
            if img["efficiency"] and img["efficiency"]["score"] < thresholds["efficiency"]:
                failed.append(f"efficiency of {img['name']} is {img['efficiency']['score']:.1%}, "
                              f"under {thresholds['efficiency']:.1%}")
    if "sharing" in thresholds and sharing(doc) < thresholds["sharing"]:
        failed.append(f"sharing is {sharing(doc):.1%}, under {thresholds['sharing']:.1%}")
    return failed
