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
# # 00 · The datasets of remote-sensing text–image retrieval
#
# **Learning goals.** After this notebook you can
# 1. say what remote-sensing (RS) text–image retrieval is, in both directions, and who needs it;
# 2. name the four published benchmarks, their sizes, formats and traps;
# 3. load any of them (or the offline SynthRS) into one `CaptionDataset`, with an explicit
#    caption → image index, and check what is on your disk;
# 4. explain how SynthRS is generated and why the course ships it;
# 5. check that one dataset's test images are not in another's training set, and leave them out.
#
# **Expected runtime.** CPU: about 1½ minutes (generating SynthRS once, then the leakage check;
# the worked answers add half a minute).
# GPU: the same (nothing here runs a model).

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
BATCH_SIZE = 64
SEED = 0
OUTPUT_DIR = ""

# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import display

from rsretrieval.data import get_dataset_info, list_datasets
from rsretrieval.data.dataset import caption_statistics
from rsretrieval.notebook import load_splits, record, setup
from rsretrieval.plots import plot_caption_lengths, plot_image_captions

cfg = setup(device=DEVICE, dataset=DATASET, data_dir=DATA_DIR, output_dir=OUTPUT_DIR, model=MODEL,
            pretrained=PRETRAINED, smoke=SMOKE, seed=SEED, notebook="00_datasets")
cfg

# %% [markdown]
# ## 1. The task
#
# An archive holds aerial or satellite images; a user describes what they look for in words.
# **Text → image retrieval** (t2i, "image retrieval") ranks the archive's images for a caption
# such as *"two white planes are parked beside the terminal"*. **Image → text retrieval**
# (i2t, "sentence retrieval") ranks captions for an image. Users include disaster-response
# analysts looking for flooded bridges, planners counting storage tanks, and anyone searching an
# archive too large to look through by eye.
#
# Both directions are scored by **Recall@K**: the share of queries whose ground truth is among
# the top K results. Each image has five captions, so the two directions count differently:
# an image query succeeds when *any* of its captions ranks within K (the best rank counts),
# a caption query when its one image does. Notebook 01 builds this by hand.
#
# ## 2. The published benchmarks
#
# Four datasets carry almost every result in the field. All use five captions per image, and
# all are distributed by their authors through file hosts rather than a package, so the library
# never downloads them: you fetch them and put them where the registry says.

# %%
for name in list_datasets():
    info = get_dataset_info(name)
    print(f"{name:9s} {info.title}")

# %% [markdown]
# | dataset | images | captions | image size | scene labels | standard split |
# |---|---|---|---|---|---|
# | RSITMD | 4,743 | 23,715 | 256×256 .tif | filename prefix (33 scenes) | 4,291 train / 452 test |
# | RSICD | 10,921 | 54,605 (only ~24k unique) | 224×224 .jpg | prefix for 10,000 images; 921 named `00001.jpg`… need class-list files | 9,828 / 1,093 |
# | UCM-Captions | 2,100 | 10,500 | 256×256 .tif | 21 classes in blocks of 100 ids | 1,890 / 210 |
# | Sydney-Captions | 613 | 3,065 | 500×500 .tif | 7 classes | from the json |
#
# Their quirks matter more than their sizes:
# - **Duplicate captions.** In RSICD most images' five captions are copies of one or two
#   sentences: fewer than half of its captions are unique. A caption query then has several
#   "correct" answers that are scored as wrong.
# - **Scene labels hide in file names.** `denseresidential_12.tif` is a dense residential scene.
#   RSICD names 921 images only by number; their scenes come from separate class-list files
#   (`txtclasses_rsicd/`). The library normalises names (`DenseResidential` → `denseresidential`)
#   so datasets agree.
# - **Splits.** The files mark `train` and `test`; no validation split is published, and
#   several public code bases select their checkpoints on test. The library carves a seeded
#   validation split from train instead: nothing is ever chosen on test.
# - **Five captions per image is not guaranteed.** Code that assumes "caption *j* belongs to
#   image *j*//5" breaks silently; the library keeps an explicit caption → image index.
#
# How each one must be laid out on disk:

# %%
print(get_dataset_info("rsitmd").layout())
print(get_dataset_info("rsicd").layout())

# %% [markdown]
# ### What is on your disk?
# If you have downloaded any of them, point `DATA_DIR` at it and set `DATASET`; this cell checks
# the default places under the data home (`data/` in a checkout; see `rsretrieval.paths`) and
# reports what it finds, and what is missing, exactly.

# %%
from rsretrieval.data import check_dataset
from rsretrieval.errors import DatasetNotFoundError
from rsretrieval.paths import data_dir

for name in ("rsitmd", "rsicd", "ucm", "sydney"):
    root = data_dir(name)
    try:
        report = check_dataset(name, root)
        print(f"{name}: {report}")
    except DatasetNotFoundError as exc:
        print(f"{name}: not found under {root}. {str(exc).splitlines()[0]}")

# %% [markdown]
# ## 3. SynthRS: the offline default
#
# The real datasets cannot ship with the course, and a CPU cannot fine-tune CLIP on them in a
# class hour. **SynthRS** is a procedural generator of top-down, RS-like scenes with captions:
#
# - **scenes** named like RSITMD's (airport, farmland, port, parking, storage tanks, …), each with
#   its own textured background and characteristic objects;
# - **objects** (planes, cars, boats, tanks, buildings, trees, courts, …) of varied and often
#   small size, with counts, colours and positions, several of them shared across scenes so the
#   scene label carries information of its own;
# - **five captions per image** from a grammar with synonyms, counts, colours and spatial
#   relations; some never name the scene;
# - **object masks**, so later notebooks can measure whether a model looks at the objects;
# - **deterministic**: the same seed gives the same files; written in RSITMD's layout, so the
#   same reader loads it.
#
# It is not a substitute for real imagery: its textures are simpler and its captions more
# regular. It keeps what the course needs: the structure of the task, the protocol, small
# targets on busy backgrounds, and numbers that a laptop computes in minutes.
#
# One scene, rendered step by step:

# %%
import numpy as np

from rsretrieval.data.synthrs import make_captions, render_scene

rng = np.random.default_rng(SEED)
image, objects, mask = render_scene(rng, "airport", 224, "rs")
for caption in make_captions(rng, "airport", objects, "rs"):
    print("-", caption)
print(f"{len(objects)} objects; areas (% of the image):", [round(100 * o["area_fraction"], 2) for o in objects])
display(image, metadata={"image/png": {"alt": f"a SynthRS airport scene seen from above, {len(objects)} objects"}})

# %% [markdown]
# The whole dataset (generated once, then read from disk like any other):

# %%
splits = load_splits(cfg, DATASET)
for split, data in splits.items():
    print(f"{split:5s} {data}")
train, test = splits["train"], splits["test"]
print("scenes:", train.scene_names)

# %% [markdown]
# **Build it yourself: read one record.** Every benchmark but one ships a Karpathy-style JSON
# (`{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}, ...]}, ...]}`). Write
# `read_record`, which turns one image record into `(filename, split, captions)`: the file name
# (with the record's `filepath` folder in front, if it has one), the split (`restval` is training
# data), and each caption's `raw` text stripped (or its `tokens` joined, where `raw` is missing).
# The next cell checks it against the library's reader on the whole file.

# %%
import json


def read_record(record):
    ### BEGIN SOLUTION
    filename = record["filename"].strip()
    if record.get("filepath"):
        filename = f"{record['filepath'].strip().rstrip('/')}/{filename}"
    split = {"restval": "train"}.get(record["split"], record["split"])
    captions = [(s["raw"] if isinstance(s.get("raw"), str) else " ".join(s["tokens"])).strip()
                for s in record["sentences"]]
    return filename, split, captions
    ### END SOLUTION


# %%
from rsretrieval.data.readers import Problems, read_karpathy
from rsretrieval.notebook import check

annotation = train.metadata["annotation"]
raw_records = json.loads(Path(annotation).read_text())["images"]
library_records = [(r.filename, r.split, r.captions) for r in read_karpathy(annotation, Problems())]
read = check("read_record", lambda: [read_record(r) for r in raw_records], library_records)
print(f"{len(read)} records; the first: {read[0]}")

# %%
picks = [next(i for i, s in enumerate(train.scenes) if s == scene) for scene in train.scene_names[:4]]
fig = plot_image_captions([train.image_paths[i] for i in picks],
                          [[train.captions[j] for j in train.image_to_texts[i]] for i in picks], n=4)
fig

# %% [markdown]
# ## 4. Captions: length and vocabulary
# Short, regular captions make retrieval easier; duplicates make it noisier. Compare with the
# real datasets when you have them (RSITMD's captions average about 11 words).

# %%
stats = {name: caption_statistics(data.captions) for name, data in splits.items()}
for name, s in stats.items():
    print(f"{name:5s} captions {s['captions']:5d}  unique {s['unique_captions']:5d}  "
          f"mean words {s['mean_words']:.1f}  vocabulary {s['vocabulary']}")
print("most frequent words:", [w for w, _ in stats["train"]["top_words"]])
plot_caption_lengths({name: s["lengths"] for name, s in stats.items()})

# %% [markdown]
# How much does the scene label say? If captions named the scene every time, a model could match
# on that one word. Count how many captions contain their scene's name (or a synonym of it).

# %%
from rsretrieval.data.synthrs import SCENE_INFO


def scene_words(scene):  # SynthRS knows its synonyms; for real datasets, the label itself
    return SCENE_INFO[scene].nouns if scene in SCENE_INFO else (scene,)


named = sum(any(w in c.lower() for w in scene_words(train.scenes[i]))
            for c, i in zip(train.captions, train.text_to_image))
share_named = 100 * named / train.num_captions
print(f"{share_named:.0f}% of training captions name their scene")

# %% [markdown]
# ## 5. Browse
# In Jupyter, the slider flips through the training images; executed headless (papermill, the
# HTML export) you see the static figure below it instead.

# %%
from rsretrieval.widgets import dataset_browser

widget, static = dataset_browser(train)
if widget is not None:
    display(widget)
static

# %% [markdown]
# ## 6. Leakage between datasets
# RSICD and RSITMD share images: RSITMD was built partly from RSICD's. A model fine-tuned on RSICD's
# train split and tested on RSITMD (or pretrained on a mixture of both, as RemoteCLIP and GeoRSCLIP
# were) has seen some of its test images, and its recall is inflated by exactly that memory. The
# copies are rarely byte-identical: re-encoded (RSICD's JPEGs, RSITMD's TIFFs), resized (256 to 224
# pixels) or cropped a little. So `python -m rsretrieval data leakage --test rsitmd:ROOT --train
# rsicd:ROOT --json leaks.json` looks for near-duplicates in two steps:
# 1. **candidates**: a 16 × 16 grey thumbnail of each image's centre, and of its four 90% corner
#    crops; each test image keeps the train images whose thumbnails correlate best (either image
#    may be the crop);
# 2. **verification**: one image, at a scale of 0.85 to 1 of the other, slid over it; the largest
#    normalised cross-correlation of their *high-pass filtered* grey images (edges and texture,
#    not flat colour, so two calm seas do not match) decides.
#
# `load_dataset(..., exclude="leaks.json")` then leaves the pairs' images out. We check it here on
# SynthRS, with duplicates we plant ourselves: copies of a few test images, each altered one way,
# added to a "training set" of other images.

# %%
from PIL import Image

from rsretrieval.data.leakage import THRESHOLD, find_leakage

alterations = {
    "re-encoded as JPEG": lambda im: im,
    "resized 256 -> 224": lambda im: im.resize((im.width * 7 // 8, im.height * 7 // 8), Image.BICUBIC),
    "5% cropped off each side": lambda im: im.crop((im.width // 20, im.height // 20, im.width * 19 // 20,
                                                    im.height * 19 // 20)),
    "8% cropped from a corner": lambda im: im.crop((0, 0, im.width * 92 // 100, im.height * 92 // 100)),
}
planted_dir = cfg.output_dir / "planted"
planted_dir.mkdir(parents=True, exist_ok=True)
truth = {}
for (how, alter), source in zip(alterations.items(), test.image_paths[::7], strict=False):
    target = planted_dir / f"{len(truth)}_{source.stem}.jpg"
    alter(Image.open(source).convert("RGB")).save(target, "JPEG", quality=70)
    truth[str(source.resolve())] = (str(target.resolve()), how)  # find_leakage names files by absolute path
others = list(train.image_paths[: 40 if SMOKE else 400])
searched = list(test.image_paths[:150])  # the planted ones among them; the command line checks every image
pairs = find_leakage(searched, others + [t for t, _ in truth.values()])
for p in pairs:
    print(f"score {p['score']:.3f}: {Path(p['test_image']).name} ~ {Path(p['train_image']).name} "
          f"({truth.get(p['test_image'], ('', 'NOT PLANTED'))[1]})")
found = {p["test_image"] for p in pairs if truth.get(p["test_image"], ("",))[0] == p["train_image"]}
invented = len(pairs) - len(found)
print(f"found {len(found)} of {len(truth)} planted duplicates, invented {invented} pairs "
      f"(threshold {THRESHOLD}), among {len(searched)} test and {len(others) + len(truth)} train images")

# %%
leaks = cfg.output_dir / "leaks.json"
leaks.write_text(json.dumps(pairs, indent=1))
clean_test = load_splits(cfg, DATASET, splits=("test",), exclude=leaks)["test"]
print(f"test without the leaked images: {clean_test.num_images} of {test.num_images} "
      f"(left out {clean_test.metadata['excluded']})")

# %% [markdown]
# ## 7. Is SynthRS the real problem? The regime study
# On RSITMD, full fine-tuning of CLIP ViT-B/32 reaches 1.90x its zero-shot mR (the paper's numbers); on
# the shipped SynthRS, MiniCLIP's reaches about 1.15x. `rsretrieval.study` changed one factor at a time
# (training images, how much a caption says, the epoch cap) and scored each on one 864-image
# validation split of a SynthRS in RSITMD's shape; test was not looked at. Beside it, this split's
# statistics next to RSITMD's published ones (`None`: not published; `data stats` measures them).

# %%
from rsretrieval.paths import checkout_root
from rsretrieval.study import RSITMD_PUBLISHED, dataset_statistics, format_row, study_table

mine = dataset_statistics(test)
for key, theirs in RSITMD_PUBLISHED.items():
    if key in mine:
        print(f"{key:20s} {DATASET} test: {mine[key]:10.3f}   RSITMD (published): {theirs}")
study_file = (checkout_root() or Path(".")) / "data" / "study" / "regime" / "study.json"
study = study_table(json.loads(study_file.read_text())["rows"]) if study_file.exists() else []
for r in study:
    ratio = f"  {r['ratio']:.2f}x zero-shot" if r["ratio"] and r["method"] != "zero_shot" else ""
    print(format_row(r) + ratio)

# %% [markdown]
# ## 8. Records

# %%
record(cfg.output_dir, dataset=DATASET, n_train_images=train.num_images,
       n_val_images=splits["val"].num_images, n_test_images=test.num_images,
       n_train_captions=train.num_captions, n_scenes=len(train.scene_names),
       mean_caption_words=stats["train"]["mean_words"], vocabulary=stats["train"]["vocabulary"],
       share_captions_naming_scene=share_named, leakage_planted=len(truth), leakage_found=len(found),
       leakage_invented=invented)

# %% [markdown]
# ## Exercises
# 1. Generate SynthRS with another seed (`python -m rsretrieval data synth --root /tmp/s2 --seed 1`)
#    and check that the scene proportions of each split match.
# 2. Download RSITMD, lay it out as printed above and run this notebook with `DATASET="rsitmd"`,
#    `DATA_DIR=...`. How many of its captions are unique? How many words do they average?
# 3. Write a caption → image index for a dataset whose images have 4, 5 and 6 captions, and
#    show that "caption *j* belongs to image *j*//5" gets it wrong.
# 4. Which SynthRS objects occur in more than one scene? Why does that make scene labels useful
#    metadata rather than a giveaway?
# 5. Plant a copy that is flipped left to right, and one cropped by 25%. Does the leakage check
#    find them? Which step misses them, and what would you change to catch flips?

# %% [markdown] tags=["instructor"]
# ## Worked answers (instructor edition)
# **1. Another seed, the same proportions.** The split is stratified by scene, so each split's scene
# shares match the whole dataset's whatever the seed.

# %% tags=["instructor"]
from collections import Counter

from rsretrieval.data import load_dataset
from rsretrieval.data.synthrs import generate_synthrs
from rsretrieval.notebook import SYNTHRS_DEFAULT, SYNTHRS_SMOKE

other_root = generate_synthrs(cfg.output_dir / "synthrs-seed-1", seed=1, progress=False,
                              **(SYNTHRS_SMOKE if SMOKE else SYNTHRS_DEFAULT))
shares = {}
for split in ("train", "val", "test"):
    scenes = load_dataset("synthrs", other_root, split).scenes
    shares[split] = {s: n / len(scenes) for s, n in Counter(scenes).items()}
worst = max(abs(shares[a].get(s, 0) - shares[b].get(s, 0)) for a in shares for b in shares for s in shares[a])
print(f"seed 1: the largest gap between two splits' share of one scene is {100 * worst:.1f} points "
      f"(one image of a scene is {100 / len(load_dataset('synthrs', other_root, 'test').scenes):.1f} points of test)")

# %% [markdown] tags=["instructor"]
# **2. Unique captions and their length.** The same two numbers for whatever `DATASET` this run
# loaded (run it with `DATASET="rsitmd"` for RSITMD's).

# %% tags=["instructor"]
for name, st in stats.items():
    print(f"{DATASET} {name}: {st['unique_captions']:,} unique of {st['captions']:,} captions "
          f"({100 * st['unique_captions'] / st['captions']:.1f}%), {st['mean_words']:.1f} words on average")

# %% [markdown] tags=["instructor"]
# **3. Images with 4, 5 and 6 captions.** The index is built by walking the records; `j // 5` is right
# only while every image has exactly five.

# %% tags=["instructor"]
counts = [4, 5, 6, 5]
text_to_image = [i for i, n in enumerate(counts) for _ in range(n)]
wrong = [j // 5 for j in range(len(text_to_image))]
bad = [j for j, (a, b) in enumerate(zip(text_to_image, wrong)) if a != b]
print(f"{len(text_to_image)} captions; j // 5 assigns {len(bad)} of them to the wrong image, the first "
      f"caption {bad[0]} to image {wrong[bad[0]]} instead of {text_to_image[bad[0]]}")

# %% [markdown] tags=["instructor"]
# **4. Objects in more than one scene.** Read off `objects.json`: an object that several scenes
# share does not tell the scene, so the scene label adds what the objects alone do not.

# %% tags=["instructor"]
objects_by_file = json.loads(Path(train.metadata["objects_file"]).read_text())
scenes_of = {}
for filename, objs in objects_by_file.items():
    for o in objs:
        if o["kind"] == "object":
            scenes_of.setdefault(o["class"], set()).add(filename.rsplit("_", 1)[0])
for cls, where in sorted(scenes_of.items(), key=lambda kv: -len(kv[1])):
    print(f"{cls:9s} in {len(where):2d} scenes" + (f" ({', '.join(sorted(where))})" if len(where) <= 3 else ""))

# %% [markdown] tags=["instructor"]
# **5. Flips and large crops.** Neither step mirrors an image, and the verification tries scales of
# 0.85 to 1 only, so both copies should escape; the run says whether they do, and whether mirroring
# the copy back (what a check of mirror images would do) finds it.

# %% tags=["instructor"]
source = test.image_paths[1]
flipped = planted_dir / "flipped.jpg"
Image.open(source).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, "JPEG", quality=70)
cropped = planted_dir / "cropped25.jpg"
im = Image.open(source).convert("RGB")
im.crop((0, 0, im.width * 3 // 4, im.height * 3 // 4)).save(cropped, "JPEG", quality=70)
for copy in (flipped, cropped):
    found_it = find_leakage([source], others + [copy], progress=False)
    print(f"{copy.name}: " + (f"found (score {found_it[0]['score']:.2f})" if found_it else "not found"))
back = planted_dir / "flipped-back.jpg"
Image.open(flipped).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(back, "JPEG", quality=95)
print("the flipped copy mirrored back:",
      "found" if find_leakage([source], others + [back], progress=False) else "not found")

