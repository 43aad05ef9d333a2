"""A search engine over a folder of images: build once, query by text or by image, add later.

An index is a folder:

    index/
      manifest.json      model, adapter checksum, embedding dim, dtype, paths, scenes, skipped files,
                         and for GeoTIFF scenes the tiling and each tile's window and coordinates
      embeddings.npy     [n, dim] unit vectors (float16 or float32), row i = manifest path i
      ann.faiss          the FAISS index (IVF-Flat or IVF-PQ), trained once when the archive is large
      ann.json           how it was built, and for which embeddings (a stale or damaged one is refused)
      parts/             while building: encoded chunks, so an interrupted build resumes

A GeoTIFF scene (georeferenced, multi-band or not 8-bit: :func:`~rsretrieval.search.geotiff.is_scene`)
is indexed tile by tile; a tile's path is ``<file>#col,row,width,height``. Other images are indexed
whole, as always.

Loading checks the manifest against the model that will encode the queries and refuses a
mismatch: vectors of two different models live in different spaces and their dot products mean
nothing, which no error would otherwise reveal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rsretrieval.search.vectors import EXACT_LIMIT, SearchParams, VectorSearch, build, choose_backend, load_search, \
    save_search
from tqdm.auto import tqdm

from rsretrieval import __version__, defaults
from rsretrieval.data.dataset import open_image
from rsretrieval.errors import CheckpointError, DatasetFormatError, QueryImageError, SearchIndexError
from rsretrieval.files import atomic_write_json, sha256_file
from rsretrieval.search.geotiff import TIFF_SUFFIXES, Raster, Tiling, is_scene, split_key, tile_key

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ANN, ANN_META = "ann.faiss", "ann.json"
_REBUILD = "rebuild it with `python -m rsretrieval index build` (or delete the folder)"
_REBUILD_ANN = "rebuild it with `python -m rsretrieval index ann {folder}`"


def find_images(folder: str | Path) -> list[Path]:
    """Every image below ``folder`` (recursive; .tif .tiff .jpg .jpeg .png, any case), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class Encoder:
    """A model (plus optional method file) that turns images and texts into unit vectors.

    Args:
        model: architecture name (``mini``, ``ViT-B-32``...).
        pretrained: weights tag or file.
        adapter: a file written by :func:`rsretrieval.methods.save_method`, or None.
        device: ``auto``, ``cpu``, ``cuda``...
    """

    def __init__(self, model: str = "mini", pretrained: str | None = defaults.MINICLIP_TAG,
                 adapter: str | Path | None = None, device: str = "auto") -> None:
        from rsretrieval.methods import load_method, wrap_tokenizer
        from rsretrieval.models import create_model, local_pretrained_path, select_device, trims_text_exactly

        self.device = select_device(device)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(0)  # without weights, the random init is the identity: the same every time
            bundle = create_model(model, pretrained)
        weights_file = None
        if pretrained:
            weights_file = local_pretrained_path(model, str(pretrained)) or (
                Path(pretrained) if Path(pretrained).is_file() else None)
        # weights are identified by content: the same file under two names agrees, a replaced file does not
        self.weights = f"sha256:{sha256_file(weights_file)}" if weights_file else (pretrained or None)
        net = bundle.model
        self.adapter_sha256 = None
        self.adapter_path = str(Path(adapter).resolve()) if adapter is not None else None
        if adapter is not None:
            net = load_method(net, adapter, base_name=bundle.name)
            self.adapter_sha256 = sha256_file(adapter)
        self.model = net.to(self.device).eval()
        self.transform = bundle.transform
        self.tokenizer = wrap_tokenizer(net, bundle.tokenizer)
        self.name, self.pretrained = bundle.name, pretrained
        self.trims_text = trims_text_exactly(self.model, self.tokenizer)  # queries are short: skip the padding

    def identity(self) -> dict[str, Any]:
        """What a query encoder must match to search an index built with this one (weights by content)."""
        return {"model": self.name, "weights": None if self.weights is None else str(self.weights),
                "adapter_sha256": self.adapter_sha256}

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from rsretrieval.models import autocast

        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        with autocast(self.device):
            f = self.model.encode_image(x, normalize=True)
        return f.float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from rsretrieval.models import autocast, encode_text_trimmed

        if not texts or any(not t.strip() for t in texts):
            raise ValueError("empty query: type what you are looking for, e.g. 'two white planes beside the terminal'")
        tokens = self.tokenizer(list(texts)).to(self.device)
        with autocast(self.device):
            f = (encode_text_trimmed(self.model, tokens, normalize=True) if self.trims_text
                 else self.model.encode_text(tokens, normalize=True))
        return f.float().cpu().numpy()


@dataclass
class Manifest:
    """Everything needed to trust and use ``embeddings.npy``."""

    encoder: dict[str, Any]  # must equal the query encoder's identity()
    dim: int
    dtype: str
    normalized: bool = True
    root: str = ""
    paths: list[str] = field(default_factory=list)  # relative to root
    scenes: list[str | None] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    adapter_path: str | None = None  # where the adapter was, to rebuild the encoder from the manifest
    pretrained: str | None = None  # the weights tag or file the index was built with, likewise
    tiling: dict[str, Any] = field(default_factory=lambda: Tiling().to_dict())  # how GeoTIFF scenes are cut
    tiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> window, crs, bounds, lonlat
    library_version: str = __version__
    created: float = field(default_factory=time.time)
    embeddings_id: str = ""  # new with every write of embeddings.npy: what ann.json must name


_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "encoder": (dict,), "dim": (int,), "dtype": (str,), "normalized": (bool,), "root": (str,), "paths": (list,),
    "scenes": (list,), "skipped": (list,), "adapter_path": (str, type(None)), "pretrained": (str, type(None)),
    "tiling": (dict,), "tiles": (dict,), "library_version": (str,), "created": (int, float),
    "embeddings_id": (str,)}


def _manifest_problem(m: Manifest) -> str | None:
    """What is wrong with a manifest's fields (a type, a length, a value), or None."""
    for name, kinds in _MANIFEST_TYPES.items():
        value = getattr(m, name)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            want = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            return f"field {name!r} is {type(value).__name__} {str(value)[:40]!r}, not {want}"
    if m.dtype not in ("float16", "float32") or m.dim < 1:
        return f"dtype {m.dtype!r} / dim {m.dim} (expected float16 or float32 and a positive dim)"
    if not all(isinstance(p, str) for p in m.paths) or len(m.scenes) != len(m.paths):
        return f"{len(m.paths)} paths (all text) need as many scenes, not {len(m.scenes)}"
    if not all(isinstance(t, dict) for t in [*m.skipped, *m.tiles.values()]):
        return "'skipped' and 'tiles' hold records ({...}) only"
    try:
        Tiling.from_dict(m.tiling)
    except (TypeError, ValueError) as exc:
        return f"its tiling {m.tiling} is not one ({str(exc)[:80]})"
    return None


@dataclass
class Hit:
    rank: int
    score: float
    path: Path  # the image file (a GeoTIFF scene's file for a tile)
    scene: str | None
    id: int = -1  # the row in the index
    tile: dict[str, Any] | None = None  # a tile's window, crs, bounds, lonlat and footprint


class ImageIndex:
    """Embeddings of an image archive with their manifest, and search over them."""

    def __init__(self, folder: Path, manifest: Manifest, embeddings: np.ndarray, encoder: Encoder | None = None,
                 backend: str = "auto") -> None:
        self.folder, self.manifest, self.embeddings = folder, manifest, embeddings
        self.encoder, self.backend = encoder, backend
        self._search: VectorSearch | None = None
        self._stretches: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per scene, read once

    def __len__(self) -> int:
        return len(self.manifest.paths)

    def __repr__(self) -> str:
        return (f"ImageIndex({self.folder}, images={len(self)}, dim={self.manifest.dim}, "
                f"model={self.manifest.encoder['model']}, skipped={len(self.manifest.skipped)})")

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, images: str | Path, out: str | Path, encoder: Encoder, *, batch_size: int = 64,
              dtype: str = "float16", scenes: dict[str, str] | None = None, tiling: Tiling | None = None,
              chunk: int = 1024, ann: str = "auto", progress: bool = True) -> ImageIndex:
        """Encode every image below ``images`` (GeoTIFF scenes tile by tile, cut by ``tiling``) into an
        index at ``out``; resumes an interrupted build.

        Unreadable images and tiles that are mostly nodata are skipped and listed in the manifest.
        ``scenes`` optionally maps a path relative to ``images`` to a scene label (used by scene filters).
        ``ann``: the FAISS index trained once and written beside the embeddings (:meth:`build_ann`).
        The parts are merged into ``embeddings.npy`` on disk, part by part: no copy of the whole archive.
        """
        root = Path(images).resolve()
        out = Path(out)
        files = find_images(root)
        if not files:
            raise SearchIndexError(f"no images (.tif .tiff .jpg .jpeg .png) below {root}")
        if (out / MANIFEST).exists():
            raise FileExistsError(f"{out} already holds an index: add images with `add`, or choose another folder")
        tiling = tiling or Tiling()
        from rsretrieval.training.loop import init_distributed

        rank, world = init_distributed()  # under torchrun: each rank encodes its share of the parts
        parts = out / "parts"
        if rank == 0:
            parts.mkdir(parents=True, exist_ok=True)
            _check_parts_identity(parts, encoder, root, tiling)
        _barrier(world)
        if rank:
            _check_parts_identity(parts, encoder, root, tiling, write=False)
        done = _encoded_paths(parts)
        stretches: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        items = _items(files, root, tiling, stretches)
        todo = [item for item in items if item[0] not in done]
        _barrier(world)  # every rank listed the same finished parts before any writes a new one
        chunks = [todo[start:start + chunk] for start in range(0, len(todo), chunk)][rank::world]
        bar = tqdm(total=sum(map(len, chunks)), desc=f"indexing (rank {rank} of {world})" if world > 1 else "indexing",
                   disable=not progress or rank != 0)
        for part in chunks:
            _encode_part(part, parts, encoder, tiling, batch_size, bar, stretches)
        bar.close()
        _barrier(world)
        if rank == 0:  # one rank merges the parts into the index a single process would have built
            finished, skipped, tiles = _gather_parts(parts)
            rel = [p for _, paths in finished for p in paths]
            if not rel:
                raise SearchIndexError(f"none of the {len(files)} images below {root} could be read; first: "
                                       f"{skipped[0]['path']}: {skipped[0]['error']}")
            rel = sorted(rel)
            manifest = Manifest(encoder.identity(), 0, dtype, root=str(root), paths=rel,
                                scenes=[(scenes or {}).get(split_key(r)[0]) for r in rel], skipped=skipped,
                                adapter_path=encoder.adapter_path,
                                pretrained=None if encoder.pretrained is None else str(encoder.pretrained),
                                tiling=tiling.to_dict(), tiles={r: tiles[r] for r in rel if r in tiles})
            _merge_parts(finished, out, manifest)
            shutil.rmtree(parts)
            cls.load(out, encoder, backend="exact").build_ann(ann)
        _barrier(world)
        return cls.load(out, encoder, backend="exact" if ann == "exact" else "auto")

    def add(self, images: Iterable[str | Path], *, batch_size: int = 64, scenes: dict[str, str] | None = None) -> int:
        """Encode and append new images (paths below the index root); returns how many were added."""
        if self.encoder is None:
            raise SearchIndexError("this index was loaded without an encoder: load it with one to add images")
        root = Path(self.manifest.root)
        known = set(self.manifest.paths)
        new = [Path(p).resolve() for p in images]
        outside = [p for p in new if not p.is_relative_to(root)]
        if outside:
            raise SearchIndexError(f"{outside[0]} is not below the index root {root}: an index holds one folder's "
                                   "images; copy the image there first, or build another index")
        tiling = Tiling.from_dict(self.manifest.tiling)
        stretches: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        new = [item for item in _items(new, root, tiling, stretches) if item[0] not in known]
        if not new:
            return 0
        vecs, rel, skipped = [], [], []
        open_rasters: dict[Path, Raster] = {}
        try:
            for start in range(0, len(new), batch_size):
                ok, bad, tiles = _read_items(new[start:start + batch_size], tiling, open_rasters, stretches)
                skipped += bad
                self.manifest.tiles.update(tiles)
                if ok:
                    vecs.append(self.encoder.encode_images([im for _, im in ok]))
                    rel += [r for r, _ in ok]
        finally:
            for scene in open_rasters.values():
                scene.close()
        stored = None
        if vecs:
            block = np.concatenate(vecs).astype(self.manifest.dtype)
            if (self.folder / ANN).exists():  # the new vectors join the trained cells: no retraining
                stored = self._read_ann(mmap=False)  # checked against the embeddings it was built for
                stored.add(block.astype(np.float32))
            self.embeddings = np.concatenate([np.asarray(self.embeddings), block])
            self.manifest.paths += rel
            self.manifest.scenes += [(scenes or {}).get(split_key(r)[0]) for r in rel]
        self.manifest.skipped += skipped
        _write_index(self.folder, self.manifest, np.asarray(self.embeddings))
        self.embeddings = np.load(self.folder / EMBEDDINGS, mmap_mode="r")
        if stored is not None:
            self._write_ann(stored)
        self._search = None  # read again (memory-mapped) on the next query
        return len(rel)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def read_manifest(folder: str | Path) -> Manifest:
        """An index's manifest alone (what built it, which files), with the errors :meth:`load` gives."""
        folder = Path(folder)
        if not (folder / MANIFEST).exists():
            hint = " (an interrupted build: run `index build` again to resume)" if (folder / "parts").exists() else ""
            raise FileNotFoundError(f"no index at {folder}: {MANIFEST} is missing{hint}")
        try:
            manifest = Manifest(**json.loads((folder / MANIFEST).read_text()))
        except (ValueError, TypeError) as exc:  # truncated or edited json, or fields of another version
            raise SearchIndexError(f"{folder / MANIFEST} is damaged ({str(exc)[:120]}): {_REBUILD}") from None
        wrong = _manifest_problem(manifest)
        if wrong:
            raise SearchIndexError(f"{folder / MANIFEST} is damaged: {wrong}: {_REBUILD}")
        return manifest

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None, *, backend: str = "auto") -> ImageIndex:
        """Open an index; with ``encoder``, refuse it if it was built by another model or adapter."""
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        try:
            embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise SearchIndexError(f"{folder / EMBEDDINGS} is missing or damaged ({str(exc)[:120]}): {_REBUILD}") \
                from None
        if embeddings.shape != (len(manifest.paths), manifest.dim):
            raise SearchIndexError(f"{folder}: {embeddings.shape} embeddings for {len(manifest.paths)} paths of dim "
                              f"{manifest.dim}; the index is damaged, rebuild it")
        if encoder is not None and encoder.identity() != manifest.encoder:
            raise CheckpointError(
                f"index {folder} was built with {manifest.encoder}, but the query encoder is {encoder.identity()}. "
                "Queries must be encoded by the same model (and adapter) as the images: load the matching "
                "model, or rebuild the index."
            )
        return cls(folder, manifest, embeddings, encoder, backend)

    # ------------------------------------------------------------------ searching
    @property
    def searcher(self) -> VectorSearch:
        """The search structure: the FAISS index written by :meth:`build_ann` (``backend="auto"``), exact
        search over the embeddings on disk (``"exact"``, or ``"auto"`` below EXACT_LIMIT without one), or one
        built now in memory for an explicit ``"ivf"`` / ``"ivfpq"`` that the folder does not hold."""
        if self._search is None:
            if len(self) == 0:
                raise SearchIndexError(f"index {self.folder} is empty")
            stored = self._ann_meta()
            if self.backend == "exact" or (self.backend == "auto" and stored is None and len(self) < EXACT_LIMIT):
                self._search = VectorSearch(self.embeddings, SearchParams("exact"))
            elif stored is not None and self.backend in ("auto", stored["params"]["backend"]):
                self._search = self._read_ann(meta=stored)
            elif self.backend == "auto":
                raise SearchIndexError(f"{self.folder} holds {len(self):,} vectors and no FAISS index ({ANN}): "
                                       f"train it once with `python -m rsretrieval index ann {self.folder}`")
            else:
                self._search = build(self.embeddings, self.backend)
        return self._search

    def build_ann(self, backend: str = "auto", **build_kwargs: Any) -> VectorSearch:
        """Train the FAISS index over the embeddings once and write it (``ann.faiss``, ``ann.json``).

        ``auto``: exact search below EXACT_LIMIT vectors (nothing written), IVF-Flat, or IVF-PQ when
        IVF-Flat's float32 lists would pass 2 GB (:func:`~rsretrieval.search.vectors.choose_backend`).
        Training reads a sample; vectors are added in chunks from the file on disk."""
        backend = choose_backend(len(self), self.manifest.dim) if backend == "auto" else backend
        for f in (ANN, ANN_META):
            (self.folder / f).unlink(missing_ok=True)
        self._search = None
        if backend == "exact":
            return VectorSearch(self.embeddings, SearchParams("exact"))
        search = build(self.embeddings, backend, **build_kwargs)
        self._write_ann(search)
        return search

    def _ann_meta(self) -> dict[str, Any] | None:
        """``ann.json`` when the folder holds a FAISS index that belongs to these embeddings; None without
        one. A stale, damaged or half-written one is refused, naming the file and the fix."""
        meta_file, ann_file = self.folder / ANN_META, self.folder / ANN
        if not meta_file.exists() and not ann_file.exists():
            return None
        fix = _REBUILD_ANN.format(folder=self.folder)
        try:
            meta = json.loads(meta_file.read_text())
            SearchParams(**meta["params"])
            wanted = {k: meta[k] for k in ("embeddings_id", "n", "dim", "encoder", "faiss_bytes", "faiss_sha256")}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise SearchIndexError(f"{meta_file} is missing or damaged ({str(exc)[:80]}): {fix}") from None
        ours = {"embeddings_id": self.manifest.embeddings_id, "n": len(self), "dim": self.manifest.dim,
                "encoder": self.manifest.encoder}
        stale = [k for k, v in ours.items() if wanted[k] != v]
        if stale:
            raise SearchIndexError(f"{ann_file} is stale: it was built for other embeddings ({', '.join(stale)} "
                                   f"differ from {MANIFEST}'s): {fix}")
        if not ann_file.exists() or ann_file.stat().st_size != wanted["faiss_bytes"] \
                or sha256_file(ann_file) != wanted["faiss_sha256"]:
            raise SearchIndexError(f"{ann_file} is missing or damaged (not the file {ANN_META} records): {fix}")
        return meta

    def _read_ann(self, mmap: bool = True, meta: dict[str, Any] | None = None) -> VectorSearch:
        meta = meta or self._ann_meta()
        try:
            return load_search(self.folder / ANN, SearchParams(**meta["params"]), self.embeddings, mmap=mmap)
        except RuntimeError as exc:  # FAISS cannot read it
            raise SearchIndexError(f"{self.folder / ANN} is damaged ({str(exc).splitlines()[0][:80]}): "
                                   f"{_REBUILD_ANN.format(folder=self.folder)}") from None

    def _write_ann(self, search: VectorSearch) -> None:
        save_search(search, self.folder / ANN)
        meta = {"params": asdict(search.params), "embeddings_id": self.manifest.embeddings_id, "n": len(self),
                "dim": self.manifest.dim, "encoder": self.manifest.encoder,
                "faiss_bytes": (self.folder / ANN).stat().st_size, "faiss_sha256": sha256_file(self.folder / ANN),
                "library_version": __version__}
        atomic_write_json(self.folder / ANN_META, meta)

    def search_vector(self, query: np.ndarray, k: int = 10, scene: str | None = None) -> list[Hit]:
        """Top-k images for a query vector; ``scene`` keeps only images of that scene."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if scene is None:
            scores, ids = self.searcher.search(query, k)
        else:
            keep = np.array([s == scene for s in self.manifest.scenes])
            if not keep.any():
                known = sorted({s for s in self.manifest.scenes if s})
                raise SearchIndexError(f"no image of scene {scene!r} in the index; scenes: {known or 'none recorded'}")
            sub = np.flatnonzero(keep)
            scores, local = VectorSearch(np.asarray(self.embeddings[sub], dtype=np.float32),
                                         self.searcher.params.__class__("exact")).search(query, k)
            ids = np.where(local >= 0, sub[np.clip(local, 0, None)], -1)
        root = Path(self.manifest.root)
        return [Hit(r + 1, float(s), root / split_key(self.manifest.paths[i])[0], self.manifest.scenes[i], int(i),
                    self.manifest.tiles.get(self.manifest.paths[i]))
                for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]

    def image(self, i: int) -> Image.Image:
        """The image of row ``i`` as it was encoded (a tile: read from its scene's window)."""
        if not 0 <= i < len(self):
            raise IndexError(f"no image {i} in index {self.folder} (it holds {len(self)})")
        rel, window = split_key(self.manifest.paths[i])
        path = Path(self.manifest.root) / rel
        if window is None and not is_scene(path):
            return open_image(path)
        with self.raster(rel) as scene:
            return scene.read(window or scene.windows()[0])[0]

    def raster(self, rel: str) -> Raster:
        """The GeoTIFF scene at ``rel`` (below the index root), opened with the index's tiling; its
        stretch is read once per index (use as a context manager)."""
        scene = Raster(Path(self.manifest.root) / rel, Tiling.from_dict(self.manifest.tiling),
                       stretch=self._stretches.get(rel))
        self._stretches[rel] = (scene.low, scene.high)
        return scene

    def search_text(self, query: str, k: int = 10, scene: str | None = None) -> list[Hit]:
        return self.search_vector(self._encoder().encode_texts([query]), k, scene)

    def search_image(self, image: str | Path | bytes | Image.Image, k: int = 10,
                     scene: str | None = None) -> list[Hit]:
        """Top-k images for an example image: a PIL image, a file, or a file's bytes (an upload), read
        as the index reads its images (:func:`open_query_image`)."""
        img = open_query_image(image, Tiling.from_dict(self.manifest.tiling))
        return self.search_vector(self._encoder().encode_images([img]), k, scene)

    def _encoder(self) -> Encoder:
        if self.encoder is None:
            raise SearchIndexError("load the index with an encoder to search by text or image")
        return self.encoder


# ---------------------------------------------------------------------- build helpers

# (index path, file, a scene's window or None, why it is skipped or None)
Item = tuple[str, Path, "tuple[int, int, int, int] | None", "str | None"]


def _items(files: Sequence[Path], root: Path, tiling: Tiling,
           stretches: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None) -> list[Item]:
    """What to encode: each plain image whole, each scene's tiles (a scene of one tile keeps its file's path).
    A scene that cannot be opened (damaged, too large, a band it lacks) is one item skipped with its reason.
    With bands asked for, every TIFF is read as a scene, so that its bands are the ones asked for."""
    items: list[Item] = []
    for p in files:
        rel = str(p.relative_to(root))
        scene_like = p.suffix.lower() in TIFF_SUFFIXES and tiling.bands is not None
        if not (scene_like or is_scene(p)):
            items.append((rel, p, None, None))
            continue
        try:
            with Raster(p, tiling, stretch=(stretches or {}).get(p)) as scene:
                windows = scene.windows()
                if stretches is not None:
                    stretches[p] = (scene.low, scene.high)
        except DatasetFormatError as exc:
            items.append((rel, p, None, str(exc)))
            continue
        items += [(rel if len(windows) == 1 else tile_key(rel, w), p, w, None) for w in windows]
    return items


def _read_items(items: Sequence[Item], tiling: Tiling, open_rasters: dict[Path, Raster],
                stretches: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None
                ) -> tuple[list[tuple[str, Image.Image]], list[dict[str, str]], dict[str, dict[str, Any]]]:
    ok, bad, tiles = [], [], {}
    for key, path, window, problem in items:
        if problem is not None:
            bad.append({"path": key, "error": problem})
            continue
        try:
            if window is None:  # a plain image (_items gives every scene's tiles their window)
                ok.append((key, open_image(path)))
                continue
            if path not in open_rasters:  # the scene's stretch is read once per build, not once per chunk
                open_rasters[path] = Raster(path, tiling, stretch=(stretches or {}).get(path))
            scene = open_rasters[path]
            img, valid = scene.read(window)
        except DatasetFormatError as exc:  # undecodable, truncated, or declaring too many pixels: skipped, listed
            bad.append({"path": key, "error": str(exc)})
            continue
        if valid < tiling.min_valid:
            bad.append({"path": key, "error": f"mostly nodata ({valid:.0%} valid, below min_valid "
                                               f"{tiling.min_valid:.0%})"})
            continue
        ok.append((key, img))
        tiles[key] = scene.georef(window)
    return ok, bad, tiles


def _encode_part(items: Sequence[Item], parts: Path, encoder: Encoder, tiling: Tiling, batch_size: int,
                 bar, stretches: dict[Path, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    vecs, rel, skipped, tiles = [], [], [], {}
    open_rasters: dict[Path, Raster] = {}
    try:
        for start in range(0, len(items), batch_size):
            ok, bad, geo = _read_items(items[start:start + batch_size], tiling, open_rasters, stretches)
            skipped += bad
            tiles.update(geo)
            if ok:
                vecs.append(encoder.encode_images([im for _, im in ok]))
                rel += [r for r, _ in ok]
            bar.update(len(ok) + len(bad))
    finally:
        for scene in open_rasters.values():
            scene.close()
    # named by its first item, which no finished part holds: unique across ranks and resumed builds
    k = hashlib.sha256(items[0][0].encode()).hexdigest()[:20]
    arr = np.concatenate(vecs) if vecs else np.zeros((0, 0), dtype=np.float32)
    tmp = parts / f".part-{k}.npy"
    np.save(tmp, arr)
    os.replace(tmp, parts / f"part-{k}.npy")
    meta = parts / f".part-{k}.json"
    meta.write_text(json.dumps({"paths": rel, "skipped": skipped, "tiles": tiles}))
    os.replace(meta, parts / f"part-{k}.json")  # the json marks the part complete


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _check_parts_identity(parts: Path, encoder: Encoder, root: Path, tiling: Tiling, write: bool = True) -> None:
    ident = {"encoder": encoder.identity(), "root": str(root), "tiling": tiling.to_dict(), "parts": 2}
    f = parts / "identity.json"
    if f.exists() and json.loads(f.read_text()) != ident:
        raise SearchIndexError(f"{parts} holds a partial build with another encoder, image folder, tiling or "
                               "library version; delete it to start over")
    if write:
        atomic_write_json(f, ident)


def _encoded_paths(parts: Path) -> set[str]:
    done: set[str] = set()
    for meta in parts.glob("part-*.json"):
        m = json.loads(meta.read_text())
        done.update(m["paths"])
        done.update(s["path"] for s in m["skipped"])
    return done


def _gather_parts(parts: Path) -> tuple[list[tuple[Path, list[str]]], list[dict[str, str]], dict[str, dict[str, Any]]]:
    """Every finished part (its file and encoded paths), the skipped files and the tiles; the vectors
    stay on disk."""
    finished, skipped, tiles = [], [], {}
    for meta in sorted(parts.glob("part-*.json")):
        m = json.loads(meta.read_text())
        finished.append((meta, m["paths"]))
        skipped += m["skipped"]
        tiles.update(m.get("tiles", {}))
    return finished, skipped, tiles


def _merge_parts(finished: list[tuple[Path, list[str]]], out: Path, manifest: Manifest) -> None:
    """Write the parts' vectors into ``out/embeddings.npy`` in ``manifest.paths`` order, a part at a time
    (a float16 file on disk: the archive is never held whole), then the manifest."""
    row = {p: i for i, p in enumerate(manifest.paths)}
    metas = [(m, paths) for m, paths in finished if paths]
    dim = np.load(metas[0][0].with_suffix(".npy"), mmap_mode="r").shape[1]
    manifest.dim = int(dim)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EMBEDDINGS}.tmp.npy"
    vecs = np.lib.format.open_memmap(tmp, mode="w+", dtype=manifest.dtype, shape=(len(manifest.paths), dim))
    for meta, paths in metas:
        vecs[[row[p] for p in paths]] = np.load(meta.with_suffix(".npy"))
    vecs.flush()
    del vecs
    os.replace(tmp, out / EMBEDDINGS)
    manifest.embeddings_id = uuid.uuid4().hex
    _write_manifest(out, manifest)


def _write_index(out: Path, manifest: Manifest, vecs: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EMBEDDINGS}.tmp.npy"
    np.save(tmp, vecs)
    os.replace(tmp, out / EMBEDDINGS)
    manifest.embeddings_id = uuid.uuid4().hex  # a FAISS index built before this write is now stale
    _write_manifest(out, manifest)


def _write_manifest(out: Path, manifest: Manifest) -> None:
    tmpm = out / f".{MANIFEST}.tmp"
    tmpm.write_text(json.dumps(asdict(manifest), indent=1))
    os.replace(tmpm, out / MANIFEST)


# A query image's limits: decoding and resizing it must stay cheap whatever its header says.
MAX_QUERY_PIXELS = 50_000_000
MAX_QUERY_SIDE = 20_000
MAX_QUERY_ASPECT = 20.0  # the encoder resizes the short side to its input: a 1x5000 strip would grow 224-fold
QUERY_SIDE = 1024  # a scene-like query (16-bit, many bands) is read whole, decimated to this longer side


def open_query_image(source: str | Path | bytes | Image.Image, tiling: Tiling | None = None) -> Image.Image:
    """An example image for search, as RGB: an 8-bit image as it is; a TIFF that is not 8-bit RGB (16-bit,
    float, many bands) stretched as the index stretches a scene (``tiling``'s bands and percentiles),
    so a query of the same pixels looks like the indexed tile.

    Raises:
        QueryImageError: unreadable (status 415), or over :data:`MAX_QUERY_PIXELS`, :data:`MAX_QUERY_SIDE`
            or :data:`MAX_QUERY_ASPECT` (status 413), checked from the header before decoding.
    """
    import io
    import tempfile

    if isinstance(source, Image.Image):
        _check_query_size(source.width, source.height, "the image")
        return source.convert("RGB")
    name = "the upload" if isinstance(source, (bytes, bytearray)) else str(source)
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else None
    if data is not None and not data:
        raise QueryImageError("empty upload: send an image (PNG, JPEG, TIFF)")
    try:
        with Image.open(io.BytesIO(data) if data is not None else source) as im:
            _check_query_size(im.width, im.height, name)
            if im.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise QueryImageError(f"{name} declares more pixels than is safe to decode ({str(exc)[:100]})", 413) from None
    except FileNotFoundError:
        raise QueryImageError(f"no image at {name}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL cannot read it: perhaps a TIFF only rasterio can
        if data is None and not is_scene(source):
            raise QueryImageError(f"{name} is not an image rsretrieval can read (PNG, JPEG, TIFF): {exc}") from None
    # a 16-bit, float or many-band TIFF: the scene reader's bands and stretch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(source) if data is None else Path(tmp) / "query.tif"
        if data is not None:
            path.write_bytes(data)
        try:
            with Raster(path, tiling or Tiling()) as scene:
                _check_query_size(scene.ds.width, scene.ds.height, name)
                return scene.quicklook(QUERY_SIDE)
        except DatasetFormatError as exc:
            raise QueryImageError(f"{name} is not an image rsretrieval can read (PNG, JPEG, TIFF): "
                                  f"{str(exc).splitlines()[0][:200]}") from None


def _check_query_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise QueryImageError(f"{name} has no pixels ({width}x{height})")
    if width * height > MAX_QUERY_PIXELS or max(width, height) > MAX_QUERY_SIDE:
        raise QueryImageError(f"{name} is {width}x{height} pixels: send one under {MAX_QUERY_PIXELS // 10**6} "
                              f"megapixels and {MAX_QUERY_SIDE:,} pixels a side", 413)
    if max(width, height) / min(width, height) > MAX_QUERY_ASPECT:
        raise QueryImageError(f"{name} is {width}x{height} pixels, an aspect ratio over {MAX_QUERY_ASPECT:g}:1 "
                              "(resized for the encoder it would cost far more memory than its size): crop it", 413)
