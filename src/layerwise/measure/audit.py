"""`layerwise audit`: what a family of existing images shares, and what hosts download twice.

Reads each image through `images` (registry, `docker save` archive, OCI layout or engine), indexes
every distinct layer once (`layerindex`, cached per diff_id), and computes findings as plain data:
- the sharing matrix: layers and bytes each pair of images shares (same blob);
- recompressed layers: the same diff_id under different blob digests (hosts of both kinds pull each);
- the same files under different diff_ids (e.g. the same step built twice: timestamps differ),
  which every host downloads again;
- near-identical layers (most file bytes equal) and files duplicated across images outside any
  shared layer, by directory;
- cold-pull bytes of a host holding all the images, by the Docker Engine's and containerd's rules,
  and what they would be if identical content were one layer;
- waste inside each image, as dive computes it;
- a recommended tree: the layers fed to the planner, and what it saves a host by the cost model's
  rules (cost.py), on a cold pull and on an update of each shared base;
- per image, the entries that were reported instead of indexed (hostile paths, ...).
Rendering is in `report`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import UserError
from ..oci.images import LayerRef, open_image
from ..oci.layerindex import Cache, LayerIndex, dive_efficiency, effective_tree, index_layers, layer_jobs
from ..plan.cost import DOCKER, HOST_KINDS, PLANNED, HostLayer, Ids, as_built, chained, host_key, next_chain, pulled
from ..plan.model import Step
from ..plan.planner import TreeNode, image_runs, prefix_tree


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
        own = layer_jobs(image, entry.name)
        jobs += own
        owners += [entry] * len(own)
    if progress is not None:
        progress(None, len(jobs))      # announce the total before the first layer is done
    results = index_layers(jobs, processes=processes, cache=cache,
                           progress=(lambda r: progress(r, len(jobs))) if progress else None)
    for entry, result in zip(owners, results):
        entry.indexes.append(result.index)
        if result.error and not entry.error:
            # A layer shared by several images is read once: its error may name another image.
            message = str(result.error)
            entry.error = message if entry.name in message else f"image {entry.name}: {message}"
    return audited


def layer_problems(img: AuditedImage) -> list[dict]:
    """Entries of the image's layers that were reported instead of indexed (hostile paths such as
    `../x` or `/etc/x`, unsupported types, ...), each naming its layer: the findings leave them out."""
    return [{"layer": i + 1, "digest": img.layers[i].digest, "problem": problem}
            for i, index in enumerate(img.indexes) if index is not None for problem in index.problems]


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
    for by_diff in groups.values():
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
    files = {d: {e.path: (e.sha256, e.size) for e in ix.entries if e.type == "file"}
             for d, (ix, _, _) in layers.items()}
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


# -- pulls, by the cost model's rules (cost.py): Docker Engine = chain rule, containerd = blob rule ------

def _content(layer: LayerRef, index: LayerIndex | None) -> str:
    """What a layer holds whatever its digests: its file set (or its diff_id when it has no files)."""
    return file_set_key(index) if index is not None and index.entries else layer.diff_id


def _as_pulled(ids: Ids, img: AuditedImage, rebuilt_from: int | None = None) -> list[HostLayer]:
    """The image's layers as hosts see them (`cost.chained`: the chain of blob digests up to each
    layer, the blob, the content). `rebuilt_from`: the image rebuilt from that layer (0-based) up,
    as teams build today: every rebuilt layer is a new blob, one per layer (chain) it replaces, so
    images that shared a layer before still share its rebuild and the others each pull their own."""
    def blobs():
        old = None
        for i, (layer, index) in enumerate(zip(img.layers, img.indexes)):
            old = next_chain(ids, old, layer.digest)
            rebuilt = rebuilt_from is not None and i >= rebuilt_from
            yield (ids("rebuilt", old) if rebuilt else layer.digest), _content(layer, index), layer.size
    return chained(ids, blobs())


def _as_planned(ids: Ids, nodes: list[TreeNode], path: list[int], changed: int | None = None) -> list[HostLayer]:
    """An image's layers when built from the recommended tree by layerwise: the cost model's
    blob-as-built rule (`cost.as_built`, planned). `changed`: the node whose content changes."""
    return as_built(ids, ((nodes[i].step, i == changed) for i in path), PLANNED)[0]


def _pulled(held: list[HostLayer], wanted: list[HostLayer], host_kind: str) -> int:
    """Bytes a host holding `held` downloads to get `wanted`, by the host kind's rule (`cost.pulled`)."""
    key = host_key(host_kind)
    return pulled(wanted, host_kind, {key(h) for h in held}).bytes


def cold_pull(images: list[AuditedImage]) -> dict[str, int]:
    """Layer bytes a host holding all the images downloaded, by each host kind's rule (the Docker
    Engine pulls a recompressed layer again: it cannot know the blob holds a layer it has), and the
    floor if identical files were one layer (its smallest blob)."""
    ids = Ids()
    layers = [h for img in images for h in _as_pulled(ids, img)]
    floor: dict[str, int] = {}
    for h in layers:
        floor[h.content] = min(h.size, floor.get(h.content, h.size))
    return {**{kind: _pulled([], layers, kind) for kind in HOST_KINDS}, "floor": sum(floor.values())}


# -- the recommended tree ---------------------------------------------------------------------------

def _steps(img: AuditedImage) -> list[Step]:
    """The image's layers as planner steps. A step is its instruction (from the history) plus, for
    COPY/ADD and layers without history, its file set: identical content under other digests is then
    the same step, which is what lets the tree share it. COPY/ADD keep their keyword, so the cost
    model knows their blob depends only on their files."""
    steps = []
    made_by_all = img.made_by or [""] * len(img.layers)
    for i, (layer, index, made_by) in enumerate(zip(img.layers, img.indexes, made_by_all)):
        copies = " COPY " in f" {made_by} " or " ADD " in f" {made_by} "
        content = file_set_key(index) if index is not None and (copies or not made_by) else None
        text = (made_by or f"layer {i + 1}").replace("\n", " ")
        steps.append(Step(instruction=("COPY " if copies else "RUN ") + text, category="layer",
                          context_digest=content, size=layer.size, size_source="measured"))
    return steps


def recommended_tree(images: list[AuditedImage]) -> dict:
    """Feed the images' layers to the planner: equal steps under equal parents become shared base
    images; then what the tree saves a host holding all the images, by the cost model. Returns
    - `bases`: per shared base image, `layers`, `bytes` (its layers), `used_by` (image names),
      `from_layer` (1-based position of its first layer in those images) and `update`: the bytes
      such a host downloads when the base's content changes (its first layer changes, so everything
      from there up is new), `{host kind: {"today": …, "tree": …}}`; today every image rebuilds its
      own copy (layers the images share now are rebuilt once), with the tree the base's layers once
      and each image's layers above it;
    - `cold_pull`: the tree's cold pull bytes (Docker Engine; kept for older readers);
    - `cold_pull_by_host`: `{host kind: {"today": …, "tree": …}}` for the cold pull.
    Host kinds: "docker" (chain rule) and "containerd" (blob rule), as in cost.py."""
    chains = {img.name: _steps(img) for img in images}
    nodes, paths = prefix_tree(chains)
    ids = Ids()       # one for every layer compared below
    today = {img.name: _as_pulled(ids, img) for img in images}
    tree = {name: _as_planned(ids, nodes, path) for name, path in paths.items()}
    held_today = [h for layers in today.values() for h in layers]
    held_tree = [h for layers in tree.values() for h in layers]
    bases = []
    for run in image_runs(nodes, {}, {"layer": "-"}):
        users = sorted(set(nodes[run[-1]].apps))
        if len(users) < 2:
            continue
        depth = paths[users[0]].index(run[0])          # the same in every image through it
        rebuilt = [h for img in images if img.name in users for h in _as_pulled(ids, img, depth)]
        changed = [h for name in users for h in _as_planned(ids, nodes, paths[name], run[0])]
        bases.append({"layers": len(run), "bytes": sum(nodes[i].step.size or 0 for i in run),
                      "used_by": users, "from_layer": depth + 1,
                      "update": {kind: {"today": _pulled(held_today, rebuilt, kind),
                                        "tree": _pulled(held_tree, changed, kind)} for kind in HOST_KINDS}})
    by_host = {kind: {"today": _pulled([], held_today, kind), "tree": _pulled([], held_tree, kind)}
               for kind in HOST_KINDS}
    return {"bases": bases, "cold_pull": by_host[DOCKER]["tree"], "cold_pull_by_host": by_host}


def findings(images: list[AuditedImage]) -> dict:
    """Everything `layerwise audit --json` prints (plus `gates_failed`), as plain data:
    - `images`: per image as given, `name`, `layers`, `bytes` (blobs as stored), `error` (why it
      could not be audited, naming the layer when one is at fault; null when it was), `efficiency`
      (dive's `score` and `wasted_bytes`; null on error) and `problems` (entries that were reported,
      not indexed, e.g. hostile paths: `layer` 1-based, `digest`, `problem`);
    - the findings over the images without error: `sharing`, `recompressed`,
      `same_files_other_digests`, `near_identical`, `duplicated_files`, `cold_pull` and
      `recommended_tree` (see the functions of the same names)."""
    ok = [img for img in images if not img.error]
    return {
        "images": [
            {"name": img.name, "layers": len(img.layers), "bytes": sum(l.size for l in img.layers),
             "error": img.error,
             "efficiency": (lambda e: {"score": round(e.score, 6), "wasted_bytes": e.wasted_bytes})(
                 dive_efficiency(img.indexes)) if not img.error else None,
             "problems": layer_problems(img)}
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
