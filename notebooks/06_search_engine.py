# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · A search engine over an image archive
#
# **Learning goals.** After this notebook you can
# 1. turn a trained model into an index over a folder of images, and search it by text or by
#    example image;
# 2. say what an index must record so that a query is never compared with vectors of another
#    model;
# 3. explain what changes at a million images: exact search vs FAISS, latency, recall, memory;
# 4. index a georeferenced GeoTIFF scene tile by tile and say where each hit lies on Earth;
# 5. serve the index as a web page and a JSON API, and measure its latency under load.
#
# **Expected runtime.** CPU: about 2 minutes, the worked answers up to 3 more (indexing SynthRS twice,
# with the zoo's best model and zero-shot, and a GeoTIFF mosaic take seconds; the million-vector
# benchmark takes the rest).
# GPU: the same for the benchmark (FAISS runs on the CPU here).

# %%
# Run first: in a kernel without rsretrieval (Colab, a lab machine), say how to get it.
import importlib.util

if importlib.util.find_spec("rsretrieval") is None:
    raise ModuleNotFoundError(
        "rsretrieval is not installed in this kernel. In the course checkout: `make env` and choose the "
        ".venv kernel (or `pip install -e .`); elsewhere: `pip install rsretrieval-<version>-py3-none-any.whl` "
        "(built with `pip wheel --no-deps .` in the checkout). Then restart the kernel.")

# %% tags=["parameters"]
SMOKE = False
DEVICE = "auto"
DATASET = "synthrs"
DATA_DIR = ""
MODEL = "mini"
PRETRAINED = "synthrs"
RECIPE = "mini-synthrs"  # the zoo whose best model the index uses
ADAPTER = ""  # a method file of your own instead
BATCH_SIZE = 64
SEED = 0
OUTPUT_DIR = ""
IMAGES_DIR = ""
K = 10
BENCH_VECTORS = 1_000_000
BENCH_DIM = 512

# %%
# %matplotlib inline
import json
import statistics
import time
from pathlib import Path

import numpy as np
from IPython.display import display

from rsretrieval.search.vectors import bench_search, format_bench
from rsretrieval.search import Encoder, ImageIndex
from rsretrieval.notebook import load_splits, record, setup
from rsretrieval.plots import plot_search_results

cfg = setup(device=DEVICE, dataset=DATASET, data_dir=DATA_DIR, output_dir=OUTPUT_DIR, model=MODEL,
            pretrained=PRETRAINED, smoke=SMOKE, seed=SEED, notebook="06_search_engine")
bench_vectors = 20_000 if SMOKE else BENCH_VECTORS
bench_dim, pq_m = (128, 16) if SMOKE else (BENCH_DIM, 64)  # smoke runs check the plumbing, not the numbers
cfg

# %% [markdown]
# ## 1. Which model?
# The index is only as good as the encoder. The zoo (notebooks 02–05) trained every method to
# convergence; we take its best model **by validation mR** (the configuration with the best mean
# over seeds, and its best seed), never by test. Without a zoo for these settings, the best run
# notebook 02 left in this course folder is used, else the pretrained model alone. Set `ADAPTER` to
# a `method.pt` of your own to choose.

# %%
from rsretrieval.notebook import zoo_settings
from rsretrieval.zoo import best_entry, encoder_weights, find_zoo, zoo_dir


def best_course_run(course_dir: Path):
    best = None
    for results in sorted(course_dir.glob("*/runs/*/results.json")):
        r = json.loads(results.read_text())
        adapter = results.parent / "method.pt"
        if adapter.exists() and r["identity"]["model"] == MODEL and (best is None or r["val_mr"] > best[1]):
            best = (adapter, r["val_mr"], r["method"])
    return best


settings = zoo_settings(cfg, DATASET, DATA_DIR, RECIPE)
zoo = None if ADAPTER else find_zoo(settings)
weights, chosen, short = {"pretrained": cfg.pretrained, "adapter": Path(ADAPTER) if ADAPTER else None}, \
    "your ADAPTER", "your ADAPTER"
if zoo is not None:
    best = best_entry(zoo)
    weights = encoder_weights(best, zoo_dir(MODEL, DATASET), settings)
    short = f"the zoo's {best['label']}"
    chosen = (f"the zoo's best by validation: {best['label']} (seed {best['seed']}, val mR {best['val_mr']:.2f}, "
              f"recipe {best['recipe']})")
elif not ADAPTER and (found := best_course_run(cfg.output_dir.parent)):
    weights["adapter"], chosen, short = found[0], f"{found[2]} from {found[0]} (val mR {found[1]:.2f})", found[2]
elif not ADAPTER:
    chosen, short = "the pretrained model alone (no zoo and no course run found)", "the pretrained model"
print(f"indexing with {chosen}")
encoder = Encoder(MODEL, weights["pretrained"], weights["adapter"], device=str(cfg.device))
adapter = weights["adapter"]
encoder.identity()

# %% [markdown]
# ## 2. Build the index
# Any folder of images works (`IMAGES_DIR`, recursive: .tif .tiff .jpg .jpeg .png). By default we
# index SynthRS's whole image folder, with scenes read from the file names. Encoding is batched
# and written in chunks, so an interrupted build resumes where it stopped; unreadable files are
# skipped and listed in the manifest — we plant one to see it happen.

# %%
if IMAGES_DIR:
    images_root, scenes = Path(IMAGES_DIR).expanduser().resolve(), None
else:
    data = load_splits(cfg, DATASET, splits=("all",))["all"]
    images_root = data.image_paths[0].parent.resolve()
    scenes = {str(p.resolve().relative_to(images_root)): s for p, s in zip(data.image_paths, data.scenes)}
    planted = images_root / "zz_corrupt_download.png"
    planted.write_bytes(b"\x89PNG truncated")  # a damaged file, on purpose

index_dir = cfg.output_dir / "index"
try:
    if (index_dir / "manifest.json").exists():
        index = ImageIndex.load(index_dir, encoder)
    else:
        t = time.perf_counter()
        index = ImageIndex.build(images_root, index_dir, encoder, batch_size=BATCH_SIZE, scenes=scenes)
        print(f"indexed in {time.perf_counter() - t:.1f} s")
finally:
    if not IMAGES_DIR:
        planted.unlink()
print(index)
print("skipped:", index.manifest.skipped)
print("manifest:", {k: v for k, v in json.loads((index_dir / "manifest.json").read_text()).items()
                    if k not in ("paths", "scenes", "skipped", "tiles")})

# %% [markdown]
# The manifest records the encoder (model, weights, adapter checksum). Loading the index with any
# other encoder is refused, because its vectors would live in another space:

# %%
from rsretrieval.errors import CheckpointError

try:
    ImageIndex.load(index_dir, Encoder(MODEL, None, device="cpu"))
except CheckpointError as exc:
    print("refused:", str(exc)[:200], "...")

# %% [markdown]
# ## 3. Search
# In Jupyter, type a query in the box; executed headless, you see the example query's results.

# %%
from rsretrieval.widgets import search_box

widget, static = search_box(index, k=K, example="two white planes are parked beside the runway")
if widget is not None:
    display(widget)
static

# %% [markdown]
# A few queries, each with the scene we would expect (green frames: hits of that scene). Scene
# precision@10 is the share of the top 10 from that scene. Beside each, the same query over an
# index built with zero-shot MiniCLIP: what transfer bought. The index holds every image, but
# the trained model has seen the training images with their captions, so precision is scored on
# the **test** images only (the ranking with the others left out).

# %%
queries = {
    "two white planes are parked beside the terminal": "airport",
    "many cars are parked in rows in a parking lot": "parking",
    "three large storage tanks stand next to each other": "storagetanks",
    "boats are moored along the pier of a harbour": "port",
    "a bridge crosses the river": "bridge",
}
zero_shot_dir = cfg.output_dir / "index-zero-shot"
zero_shot_encoder = Encoder(MODEL, cfg.pretrained, device=str(cfg.device))
if (zero_shot_dir / "manifest.json").exists():
    zero_shot_index = ImageIndex.load(zero_shot_dir, zero_shot_encoder)
else:
    zero_shot_index = ImageIndex.build(images_root, zero_shot_dir, zero_shot_encoder, batch_size=BATCH_SIZE,
                                       scenes=scenes)


held_out = None if IMAGES_DIR else {p.resolve() for p in load_splits(cfg, DATASET, splits=("test",))["test"].image_paths}


def scene_precision(idx, query, expected):
    """The top K (shown) and the scene precision of the top K among held-out images."""
    ranked = idx.search_text(query, len(idx))
    scored = [h for h in ranked if held_out is None or h.path.resolve() in held_out][:K]
    return ranked[:K], sum(h.scene == expected for h in scored) / len(scored)


precision, precision_zero_shot = {}, {}
for query, expected in queries.items():
    hits, precision[query] = scene_precision(index, query, expected)
    _, precision_zero_shot[query] = scene_precision(zero_shot_index, query, expected)
    display(plot_search_results(f"{query}  (expected scene: {expected})", [h.path for h in hits],
                                [h.score for h in hits], [h.scene for h in hits],
                                highlight=[h.scene == expected for h in hits]))
print(f"scene precision@{K} among {'the test images' if held_out else 'all images'}")
print(f"{'query':52s} {'P@' + str(K) + ' trained':>12s} {'zero-shot':>10s}")
for query in queries:
    print(f"{query:52s} {precision[query]:12.2f} {precision_zero_shot[query]:10.2f}")
gain = statistics.mean(precision.values()) - statistics.mean(precision_zero_shot.values())
print(f"mean scene precision@{K}: {statistics.mean(precision.values()):.2f} with {short}, "
      f"{statistics.mean(precision_zero_shot.values()):.2f} zero-shot ({gain:+.2f})")
airport = "two white planes are parked beside the terminal"
print(f"'{airport}': {round(precision[airport] * K)} of the top {K} are airport scenes "
      f"(zero-shot: {round(precision_zero_shot[airport] * K)})")

# %% [markdown]
# **Search by example.** An image is a query too: the image encoder embeds it and the index
# returns its neighbours. The example itself comes back first, with a score of 1.

# %%
example = Path(index.manifest.root) / index.manifest.paths[len(index) // 2]
hits = index.search_image(example, K)
display(plot_search_results(f"images like {example.name}", [h.path for h in hits], [h.score for h in hits],
                            [h.scene for h in hits]))

# %% [markdown]
# A scene filter narrows the search to one scene when the index knows the scenes:

# %%
hits = index.search_text("white planes", K, scene="airport")
[(h.rank, round(h.score, 3), h.path.name) for h in hits]

# %% [markdown]
# **Build it yourself: exact search.** Under the index is one operation: the k rows of the
# embedding matrix `E` [n, d] (unit vectors) with the largest inner product with a query `q` [d],
# best first. Write `top_k(E, q, k)` returning `(scores, ids)`, both of length k, with NumPy; the
# next cell checks it against the index's own search for a few queries.

# %%
def top_k(E, q, k):
    ### BEGIN SOLUTION
    scores = E @ q
    ids = np.argpartition(-scores, k - 1)[:k]  # the k best, in any order
    ids = ids[np.argsort(-scores[ids], kind="stable")]
    return scores[ids], ids
    ### END SOLUTION


# %%
from rsretrieval.notebook import check
from rsretrieval.search.vectors import exact_topk

E = np.asarray(index.embeddings, dtype=np.float32)
query_vectors = encoder.encode_texts(["white planes", "a port with boats", "storage tanks"])
expected_scores, expected_ids = exact_topk(E, query_vectors, K)
mine = check("top_k (three queries)",
             lambda: [tuple(np.asarray(x) for x in top_k(E, q, K)) for q in query_vectors],
             [(expected_scores[i], expected_ids[i]) for i in range(len(query_vectors))], atol=1e-5)

# %% [markdown]
# ## 4. What changes at a million images
# The index above holds the few hundred to few thousand images of one dataset (its size is printed
# below): exact search (one matrix product) answers in well under a millisecond. A national archive
# holds millions. Exact search then reads every vector for every query: about
# 2 GB per query at 1M × 512 in float32. FAISS's IVF index clusters the vectors once and scans only
# the few clusters nearest the query; IVF-PQ also compresses each vector to a few dozen bytes.
#
# We measure both on synthetic unit vectors drawn from a mixture of clusters (real embeddings
# cluster by scene and content), then on a tenth as many uniform vectors (no structure: the worst
# case for any index, which shows at any size). This takes two to three minutes on a CPU.

# %%
print(f"the index above holds {len(index):,} images; the benchmark below, {bench_vectors:,} vectors")
clustered = bench_search(bench_vectors, bench_dim, 200 if SMOKE else 300, 10, pq_m=pq_m, seed=SEED)
print(format_bench(clustered))

# %%
uniform = bench_search(bench_vectors // (4 if SMOKE else 10), bench_dim, 100 if SMOKE else 300, 10, pq_m=pq_m,
                       uniform=True, seed=SEED)
print(format_bench(uniform))
for name, r in (("clustered", clustered), ("uniform", uniform)):
    scanned = r["faiss_params"]["nprobe"] / r["faiss_params"]["nlist"]
    pace = (f"x{r['speedup_p50']:.1f} faster than" if r["speedup_p50"] >= 1
            else f"x{1 / r['speedup_p50']:.1f} slower than")
    print(f"{name}, {r['n']:,} vectors: IVF scans {scanned:.1%} of its cells for recall@10 "
          f"{r['faiss_recall_at_k']:.3f}, {pace} exact search (median single-query latency)")

# %% [markdown]
# Reading the tables:
# - **Latency.** IVF scans a few clusters instead of every vector; whether that beats one matrix
#   product depends on the size (the lines above say which won here: at this size exact search
#   on a CPU is one fast BLAS call, and IVF's per-query overhead can outweigh what it skips).
# - **Recall.** The price is recall: a true neighbour in a cluster that was not scanned is missed.
#   `nprobe` (clusters scanned) was tuned at build time to reach 95% recall@10 on held-out queries.
# - **Uniform vectors** have no clusters to exploit: the same recall needs many more clusters
#   scanned, so IVF's advantage shrinks. Real embeddings sit between the two cases.
# - **Memory per million images** is the table below, from the formats' sizes at this notebook's
#   dimension: every index keeps its embeddings as float16 on disk; exact search and IVF-Flat want
#   all vectors in memory, IVF-PQ only its codes, and re-ranks its candidates from the float16
#   file on disk, so an archive larger than memory is served from a few bytes per vector.
# - **Ten million**: beside it, `bench-search --vectors 10000000 --index ivfpq --store DIR` as this
#   repository ran it (too long for a notebook: about 25 minutes on 2 CPU cores), read from the file
#   it wrote: the whole run's peak resident memory, latency and recall against exact search.

# %%
from rsretrieval.search.vectors import format_memory, measured_bench, memory_per_million

ten_million = measured_bench()
memory_rows = memory_per_million(BENCH_DIM, pq_m=ten_million["ivfpq_params"]["m"] if ten_million else 64)
print(format_memory(memory_rows))
per_million = {r["layout"]: r["resident"] / 2**30 for r in memory_rows}
print(f"IVF-PQ measured above: {clustered['ivfpq_bytes_per_vector']:.0f} bytes per vector at {bench_dim} dimensions "
      f"(codes, ids, centres and codebooks over {clustered['n']:,} vectors)")
if ten_million:
    r, how = ten_million, ten_million["measured_with"]
    print(f"\n{r['n']:,} x {r['dim']}, {how['command']}\n  on {how['cpus']} cores of {how['cpu']}, {how['date']}:")
    print("\n".join("  " + line for line in format_bench(r).splitlines()[1:]))
# %% [markdown]
# ## 5. GeoTIFF scenes: where on Earth are the hits?
# Archives do not hold 224-pixel chips: they hold **scenes**, GeoTIFFs thousands of pixels a side,
# with four or more bands of 16-bit values and a coordinate reference system (CRS). The index reads
# them with rasterio, the field's standard reader, and cuts them into tiles (`--tile-size`,
# `--tile-overlap`) by windowed reads, so a scene is never loaded whole. For each scene it
# - picks the red, green and blue bands by their descriptions (else their colour interpretation,
#   else the first three; `--bands` chooses),
# - stretches them to 8 bits between the 2nd and 98th percentiles of the scene's valid pixels,
#   so that all its tiles share one stretch (a stretch per tile would make a dark tile look like
#   a bright one),
# - masks nodata and skips tiles that are mostly nodata (`--min-valid`),
# - and records each tile's pixel window, its bounds in the CRS and in longitude/latitude.
#
# SynthRS renders such a scene offline: a mosaic of its scenes in one 4-band, 16-bit GeoTIFF in
# UTM zone 31N, bands stored blue, green, red, near-infrared (Sentinel-2's order), with a nodata
# margin on the right.

# %%
from rsretrieval.data.synthrs.mosaic import generate_mosaic
from rsretrieval.plots import plot_footprints
from rsretrieval.search.geotiff import Raster, Tiling, hits_geojson

cell = 96 if SMOKE else 224
grid = (2, 3) if SMOKE else (3, 4)
scene_dir = cfg.output_dir / "geotiff"
layout = generate_mosaic(scene_dir / "mosaic.tif", grid=grid, cell=cell, seed=SEED, margin=cell)
print(f"{layout['width']} x {layout['height']} pixels, {layout['crs']}, bands {layout['band_order']}, "
      f"scenes {[c['scene'] for c in layout['cells']]}")
tiling = Tiling(size=cell)
geo_index_dir = cfg.output_dir / "geotiff-index"
if (geo_index_dir / "manifest.json").exists():
    geo_index = ImageIndex.load(geo_index_dir, encoder)
else:
    geo_index = ImageIndex.build(scene_dir, geo_index_dir, encoder, tiling=tiling, batch_size=BATCH_SIZE)
print(geo_index, "skipped:", [s["error"] for s in geo_index.manifest.skipped])

# %% [markdown]
# A query for a scene type placed at a known spot should return that spot's tile. The airport sits
# in the top-left cell:

# %%
airport = next(c for c in layout["cells"] if c["scene"] == "airport")
geo_hits = geo_index.search_text("white planes parked at the airport", 5)
for h in geo_hits:
    west, south, east, north = h.tile["lonlat"]
    print(f"#{h.rank} {h.score:.3f} window {h.tile['window']}  lon {west:.5f}..{east:.5f}  "
          f"lat {south:.5f}..{north:.5f}")
with Raster(scene_dir / "mosaic.tif", tiling) as raster:
    quicklook, size = raster.quicklook(768), (raster.ds.width, raster.ds.height)
display(plot_footprints(quicklook, size, [h.tile["window"] for h in geo_hits], [h.score for h in geo_hits],
                        "white planes parked at the airport: the top 5 tiles (dashed: where the airport is)",
                        truth=airport["window"]))
found_airport = geo_hits[0].tile["window"] == airport["window"]
print("the top tile is the airport's" if found_airport else
      f"the top tile is not the airport's ({geo_hits[0].tile['window']} vs {airport['window']})")

# %% [markdown]
# `search ... --geojson hits.geojson` writes the same hits as a GeoJSON FeatureCollection in
# longitude/latitude (RFC 7946), which QGIS or any web map opens:

# %%
collection = hits_geojson(geo_hits)
(cfg.output_dir / "hits.geojson").write_text(json.dumps(collection, indent=1))
print(json.dumps(collection["features"][0], indent=1)[:600])

# %% [markdown]
# ## 6. Serving it
# `python -m rsretrieval serve INDEX` loads the model and the index once and serves a search page
# and a JSON API on 127.0.0.1 (FastAPI with uvicorn): search by text (`/api/search?q=...`), by an
# uploaded image, "more like this" from a result, thumbnails by id (no path from a request reaches
# the disk), and for GeoTIFF scenes the hits' footprints on a quicklook of the scene. The query
# lives in the page's URL, so a search can be linked. Text queries that arrive together are
# encoded as one batch: the encoder takes eight queries in about three times the time of one.
#
# ```bash
# python -m rsretrieval index build --images /data/scenes --out /data/scenes-index --tile-size 256 \
#     --tile-overlap 32 --model mini --pretrained synthrs --adapter runs/mrs/method.pt
# python -m rsretrieval search /data/scenes-index "two white planes beside the terminal" -k 10 --geojson hits.geojson
# python -m rsretrieval serve /data/scenes-index --port 8000      # then open http://127.0.0.1:8000/
# python -m rsretrieval bench-serve --clients 8 --requests 400    # latency under load
# ```
#
# `bench-serve` measures what a user of the page waits for: a text query over HTTP, end to end,
# with 8 clients at once (in another process, as real clients are). Here, over this notebook's index:

# %%
from rsretrieval.search.serve import bench_serve

served = bench_serve(index_dir, vectors=0, clients=8, requests=40 if SMOKE else 200, device="cpu")["index"]
print(f"served text query: p50 {served['p50_ms']:.1f} ms with 8 clients at once "
      f"({served['queries_per_s']:.0f} queries/s, {served['errors']} errors); "
      f"{served['one_client_p50_ms']:.1f} ms for one client alone")

# %% [markdown]
# New images join a served index with `index.add(paths)` without a rebuild (IVF places them in the
# existing clusters; rebuild when the archive has grown several times over, so the clusters still
# fit the data).

# %% [markdown]
# ## 7. Records

# %%
record(cfg.output_dir, n_indexed=len(index), n_skipped=len(index.manifest.skipped),
       adapter=str(adapter) if adapter else None, encoder_chosen=chosen, k=K, scene_precision_at_k=precision,
       scene_precision_at_k_zero_shot=precision_zero_shot,
       bench_clustered={k: v for k, v in clustered.items() if not isinstance(v, dict)},
       bench_uniform={k: v for k, v in uniform.items() if not isinstance(v, dict)},
       faiss_recall_at_k=clustered["faiss_recall_at_k"], faiss_p50_ms=clustered["faiss_p50_ms"],
       exact_p50_ms=clustered["exact_p50_ms"], gib_per_million=per_million,
       ten_million={k: ten_million.get(k) for k in ("n", "dim", "peak_rss_bytes", "ivfpq_p50_ms",
                                                              "ivfpq_recall_at_k", "ivfpq_build_s")}
       if ten_million else None,
       geotiff_tiles=len(geo_index), geotiff_top_tile_is_airport=found_airport,
       served_p50_ms=served["p50_ms"], served_one_client_p50_ms=served["one_client_p50_ms"],
       served_errors=served["errors"])

# %% [markdown]
# ## 8. What the course found: the papers' claims beside our measurements
# The course's last word, printed from the records the notebooks wrote (`summary.json` of this
# course run; `rsretrieval.claims` judges each claim by its interval). Every measurement is ours,
# on this run's dataset and model; each paper measured its own on RSITMD with CLIP, so a verdict
# says whether *the claim holds here*, not whether the paper's number is right.

# %%
from rsretrieval.claims import claims_table, course_records, format_claims

summary_file = cfg.output_dir.parent / "summary.json"
if summary_file.exists():
    claims = claims_table(course_records(json.loads(summary_file.read_text())))
    print(format_claims(claims))
    tally = {v: sum(r["verdict"] == v for r in claims) for v in ("reproduced", "refuted", "within noise",
                                                                   "not measured")}
    print("\n" + ", ".join(f"{n} {v}" for v, n in tally.items()) + f" of {len(claims)} claims")
else:
    claims = []
    print(f"no course run beside this notebook ({summary_file} is missing): run `make course` for the table")

# %% [markdown]
# ## Exercises
# 1. Index your own folder (`IMAGES_DIR=...`) — holiday photos work too — and search it. Which
#    queries fail, and is that the model or the index?
# 2. Index with the zoo's best in-block adapter and with its best side branch (`ADAPTER`). Which
#    query gains most from each, and why might a side branch that reads object patches help there?
# 3. In the benchmark, raise `nprobe` by hand (`search.index.nprobe = ...` on a `build(...)`
#    result) and plot recall against p50 latency. Where is the knee?
# 4. Replace IVF with HNSW (`faiss.IndexHNSWFlat`) and compare build time, memory and latency at
#    the same recall.
# 5. Rebuild the GeoTIFF index with `Tiling(size=cell, overlap=cell // 2)`. How many tiles now, and
#    does the airport still come first? What does overlap buy when a target straddles two tiles?
# 6. Serve the index (`python -m rsretrieval serve ...`) and run `bench-serve` with 1, 8 and 32
#    clients. Where does latency start to grow, and why does batching help less beyond it?

# %% [markdown] tags=["instructor"]
# ## Worked answers (instructor edition)
# **1. Another folder.** Any folder indexes the same way. Here: SynthRS's *source* domain (object
# photos seen from the side, the pretraining domain), searched with queries for its objects. A
# query that fails on it while the images are there points at the model; one whose images are not
# in the folder cannot succeed whatever the model.

# %% tags=["instructor"]
from rsretrieval.data import load_dataset
from rsretrieval.data.synthrs import generate_synthrs

photos = generate_synthrs(cfg.output_dir / "photos", n_images=60 if SMOKE else 300, image_size=96 if SMOKE else 224,
                          domain="source", progress=False)
photo_data = load_dataset("synthrs", photos, "all", verify_images=False)
photo_scenes = {str(p.resolve().relative_to((photos / "images").resolve())): sc
                for p, sc in zip(photo_data.image_paths, photo_data.scenes)}
photo_dir = cfg.output_dir / "index-photos"
photo_index = ImageIndex.load(photo_dir, encoder) if (photo_dir / "manifest.json").exists() else \
    ImageIndex.build(photos / "images", photo_dir, encoder, batch_size=BATCH_SIZE, scenes=photo_scenes,
                     progress=False)
for cls in sorted(set(photo_data.scenes))[:6]:
    hits = photo_index.search_text(f"a photo of a {cls}", K)
    print(f"'a photo of a {cls}': {sum(h.scene == cls for h in hits)} of the top {K} are {cls} photos "
          f"({photo_data.scenes.count(cls)} in the folder)")

# %% [markdown] tags=["instructor"]
# **2. An in-block adapter against a side branch.** Two indexes, one per method (seed 0 of each, from
# the committed zoo when it has them, else trained here as notebook 02 does), scored by scene
# precision on this notebook's queries; the last column is the side branch's gain. A side branch
# that weights object patches may gain most where the scene is told by small objects.

# %% tags=["instructor"]
from rsretrieval.zoo import ensure_zoo

pair_doc, pair_folder = ensure_zoo(settings, ["mrs_adapter", "focus_adapter"], [0], cfg.output_dir / "zoo",
                                   train={"epochs": 1, "max_steps": 1} if SMOKE else None, isolate=not SMOKE,
                                   progress=False)
by_method = {}
for run in (e for e in pair_doc["entries"] if e["seed"] == 0 and e["label"] in ("mrs_adapter", "focus_adapter")):
    w = encoder_weights(run, pair_folder, settings)
    enc = Encoder(MODEL, w["pretrained"], w["adapter"], device=str(cfg.device))
    folder = cfg.output_dir / f"index-{run['label']}"
    idx = ImageIndex.load(folder, enc) if (folder / "manifest.json").exists() else \
        ImageIndex.build(images_root, folder, enc, batch_size=BATCH_SIZE, scenes=scenes, progress=False)
    by_method[run["label"]] = {q: scene_precision(idx, q, e)[1] for q, e in queries.items()}
print(f"{'query':52s} {'MRS-Adapter':>11s} {'Focus-Adapter':>13s} {'gain':>6s}")
for q in queries:
    a, b = by_method["mrs_adapter"][q], by_method["focus_adapter"][q]
    print(f"{q:52s} {a:11.2f} {b:13.2f} {b - a:+6.2f}")
gains = {q: by_method["focus_adapter"][q] - by_method["mrs_adapter"][q] for q in queries}
best_gain = max(gains, key=gains.get)
print(f"the side branch gains most on '{best_gain}' ({gains[best_gain]:+.2f})" if gains[best_gain] > 0 else
      "the side branch gains on no query here")

# %% [markdown] tags=["instructor"]
# **3. Recall against latency as `nprobe` grows.** Each doubling scans twice the cells: recall climbs
# fast, then flattens while latency keeps growing; the knee is where a doubling buys under a point.

# %% tags=["instructor"]
from rsretrieval.search.vectors import build, recall_at_k, synthetic_vectors

n_small = 20_000 if SMOKE else 200_000
vecs = synthetic_vectors(n_small, bench_dim, seed=SEED)
probe_queries = synthetic_vectors(200, bench_dim, seed=SEED)
_, truth = exact_topk(vecs, probe_queries, 10)
ivf = build(vecs, "ivf")
curve = []
for nprobe in (1, 2, 4, 8, 16, 32, 64):
    ivf.index.nprobe = min(nprobe, ivf.params.nlist)
    t = time.perf_counter()
    found = ivf.search(probe_queries, 10)[1]
    curve.append((nprobe, recall_at_k(found, truth), (time.perf_counter() - t) * 1000 / len(probe_queries)))
knee = next((curve[k][0] for k in range(1, len(curve)) if curve[k][1] - curve[k - 1][1] < 0.01), curve[-1][0])
for nprobe, recall, ms in curve:
    print(f"nprobe {nprobe:3d}: recall@10 {recall:.3f}, {ms:.3f} ms per query")
print(f"the knee: past nprobe {knee // 2 if knee > 1 else 1}, a doubling buys less than a point of recall")
from matplotlib.figure import Figure

fig = Figure(figsize=(5, 3.2))
ax = fig.subplots()
ax.plot([c[2] for c in curve], [c[1] for c in curve], "o-")
for nprobe, recall, ms in curve:
    ax.annotate(str(nprobe), (ms, recall), textcoords="offset points", xytext=(4, -10), fontsize=8)
ax.set_xlabel("latency per query (ms)")
ax.set_ylabel("recall@10 (share of the exact top 10)")
ax.set_title(f"IVF on {n_small:,} vectors: nprobe from 1 to 64")
fig.tight_layout()
fig

# %% [markdown] tags=["instructor"]
# **4. HNSW at the same recall.** A graph instead of cells: no training, a longer build, more memory
# per vector (its links), and `efSearch` as the knob; raised until it matches IVF's recall.

# %% tags=["instructor"]
import faiss

ivf.index.nprobe = ivf.params.nprobe
target = recall_at_k(ivf.search(probe_queries, 10)[1], truth)
t = time.perf_counter()
hnsw = faiss.IndexHNSWFlat(bench_dim, 32, faiss.METRIC_INNER_PRODUCT)
hnsw.add(vecs)
hnsw_build = time.perf_counter() - t
for ef in (16, 32, 64, 128, 256):
    hnsw.hnsw.efSearch = ef
    t = time.perf_counter()
    found = hnsw.search(probe_queries, 10)[1]
    hnsw_ms = (time.perf_counter() - t) * 1000 / len(probe_queries)
    hnsw_recall = recall_at_k(found, truth)
    if hnsw_recall >= target:
        break
t = time.perf_counter()
ivf.search(probe_queries, 10)
ivf_ms = (time.perf_counter() - t) * 1000 / len(probe_queries)
print(f"IVF (nprobe {ivf.params.nprobe}): recall {target:.3f}, {ivf_ms:.3f} ms/query, "
      f"{ivf.memory_bytes() / len(vecs):.0f} bytes/vector")
print(f"HNSW (M 32, efSearch {ef}): recall {hnsw_recall:.3f}, {hnsw_ms:.3f} ms/query, "
      f"{faiss.serialize_index(hnsw).nbytes / len(vecs):.0f} bytes/vector, built in {hnsw_build:.1f} s")

# %% [markdown] tags=["instructor"]
# **5. Overlapping tiles.** Half-tile overlap puts every point of the scene in up to four tiles: a
# target cut by a tile edge is whole in a neighbour, at the price of more tiles to encode and store.

# %% tags=["instructor"]
overlap_dir = cfg.output_dir / "geotiff-index-overlap"
overlap_index = ImageIndex.load(overlap_dir, encoder) if (overlap_dir / "manifest.json").exists() else \
    ImageIndex.build(scene_dir, overlap_dir, encoder, tiling=Tiling(size=cell, overlap=cell // 2),
                     batch_size=BATCH_SIZE, progress=False)
top = overlap_index.search_text("white planes parked at the airport", 1)[0]
c, r, w, h = top.tile["window"]
ac, ar, aw, ah = airport["window"]
overlap_share = max(0, min(c + w, ac + aw) - max(c, ac)) * max(0, min(r + h, ar + ah) - max(r, ar)) / (w * h)
print(f"{len(overlap_index)} tiles with half-tile overlap, {len(geo_index)} without; the top tile "
      f"{top.tile['window']} lies {100 * overlap_share:.0f}% inside the airport's cell {airport['window']}")

# %% [markdown] tags=["instructor"]
# **6. Latency under load.** With 1, 8 and 32 clients at once: the server encodes the queries that
# wait together, so latency grows slower than the number of clients until a batch no longer fits in
# the time between arrivals, and the per-request overhead (HTTP, JSON) dominates.

# %% tags=["instructor"]
for clients in (1, 8, 32):
    r = bench_serve(index_dir, vectors=0, clients=clients, requests=(8 if SMOKE else 40) * clients, device="cpu",
                    progress=False)["index"]
    print(f"{clients:2d} clients: p50 {r['p50_ms']:6.1f} ms, p95 {r['p95_ms']:6.1f} ms, "
          f"{r['queries_per_s']:5.0f} queries/s, {r['errors']} errors")

