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
# # 05 · What each method costs: memory and throughput, measured
#
# **Learning goals.** After this notebook you can
# 1. measure training throughput and peak memory of any method, one process per method, and read
#    the numbers as ratios measured in one run;
# 2. explain from first principles why a side branch beats in-block adapters on both;
# 3. see what caching frozen features buys when the backbone never changes;
# 4. run the same measurement on a GPU.
#
# **Expected runtime.** CPU: about 3½ minutes on 2 cores (ViT-B/32, batch 32, one timed step of four
# methods and of two with gradient checkpointing, each in its own process, plus the cache timing on
# MiniCLIP; the cost figure reads the zoo; the worked answers add up to 3 more).
# `BENCH_MODEL="mini"` makes it shorter. GPU: about a minute.

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
BATCH_SIZE = 32
SEED = 0
OUTPUT_DIR = ""
BENCH_MODEL = "ViT-B-32"
BENCH_METHODS = "full,linear_probe,mrs_adapter,focus_adapter,focus_adapter:floor"  # add adapter,lora,vpt,coop,...
BENCH_STEPS = 0  # timed steps per method; 0: 1 on a CPU (a step takes seconds), 10 on a GPU
BENCH_REPEATS = 1  # interleaved rounds per method (3: medians and spread, ~3x the bench time; the CLI's default)
MEMORY_BATCH_SIZES = "8,32"
CACHE_EPOCHS = 1
RECIPE = "mini-synthrs"  # the recipe of the zoo runs the cost figure reads
N_SEEDS = 3

# %%
# %matplotlib inline
import json
import statistics

import torch
from matplotlib.figure import Figure

from rsretrieval.bench import bench, format_table, measure
from rsretrieval.cmer.cache import time_epochs
from rsretrieval.methods import apply_method
from rsretrieval.models import create_model
from rsretrieval.notebook import check, load_splits, record, setup, zoo_runs
from rsretrieval.plots import plot_cost

cfg = setup(device=DEVICE, dataset=DATASET, data_dir=DATA_DIR, output_dir=OUTPUT_DIR, model=MODEL,
            pretrained=PRETRAINED, smoke=SMOKE, seed=SEED, notebook="05_resource_efficiency")
bench_model = "tiny" if SMOKE else BENCH_MODEL  # smoke runs check the plumbing, not the numbers
methods = [m.strip() for m in BENCH_METHODS.split(",")]
memory_batches = [int(b) for b in MEMORY_BATCH_SIZES.split(",")]
device = str(cfg.device)
bench_steps = 1 if SMOKE else BENCH_STEPS or (10 if device.startswith("cuda") else 1)
repeats = 1 if SMOKE else BENCH_REPEATS
isolate = not SMOKE  # a smoke run measures in this process (no process starts; memory means nothing)
cfg

# %% [markdown]
# ## 1. How we measure
# `python -m rsretrieval bench` (called here as a function) trains each method for a few steps
# in a **fresh process** on random images and captions, with both towers, the method's loss and
# one AdamW step per iteration, after one untimed warm-up step. A fresh process per method matters
# on a CPU: peak resident memory never goes down within a process, so a second method measured in
# the same process would inherit the first one's peak. On CUDA the same command reports
# `torch.cuda.max_memory_allocated`. The machines are noisy: every method is measured in
# `BENCH_REPEATS` rounds, interleaved (each method once a round, the order rotated), and a ratio
# is the median of the ratios within a round, printed with their range. Compare methods by the
# **ratios of one run**, never with numbers from another run or another machine.
#
# Four methods span the cases: full fine-tuning, a linear probe (new weights on top only), an
# in-block adapter (MRS-Adapter; Houlsby adapters and LoRA sit in the blocks too and cost about the
# same) and the side branch; and the side branch's **floor** (`focus_adapter:floor`): its frozen
# forward and its side network alone in one step, the least a side-branch step can cost on this
# machine, so the distance between the two is overhead of ours. Name more in `BENCH_METHODS`.

# %%
results = bench(bench_model, methods, batch_size=BATCH_SIZE, steps=bench_steps, repeats=repeats, device=device,
                isolate=isolate)
print(format_table(results))
by = {r["method"]: r for r in results}

# %% [markdown]
# Our Focus-Adapter against MRS-Adapter (in-block), each round's ratio, and CMER's own claims
# (**the paper's**, setting unknown) beside ours:

# %%
rounds = range(repeats)
speeds = [by["focus_adapter"]["samples_per_s_runs"][k] / by["mrs_adapter"]["samples_per_s_runs"][k] for k in rounds]
memories = [by["focus_adapter"]["peak_memory_bytes_runs"][k] / by["mrs_adapter"]["peak_memory_bytes_runs"][k]
            for k in rounds]
speed, memory = statistics.median(speeds), statistics.median(memories)
print(f"focus_adapter / mrs_adapter on {bench_model}, batch {BATCH_SIZE}, median of {repeats} round(s):")
print(f"  throughput x{speed:.2f} (rounds {min(speeds):.2f} to {max(speeds):.2f}; CMER paper: 1.4x vs its baselines)")
print(f"  peak memory x{memory:.2f} (rounds {min(memories):.2f} to {max(memories):.2f}; CMER paper: -49%, i.e. x0.51)")
if "focus_adapter:floor" in by:
    floor = by["focus_adapter:floor"]
    floor_speed = statistics.median(floor["samples_per_s_runs"][k] / by["mrs_adapter"]["samples_per_s_runs"][k]
                                    for k in rounds)
    floor_memory = statistics.median(floor["peak_memory_bytes_runs"][k] / by["mrs_adapter"]["peak_memory_bytes_runs"][k]
                                     for k in rounds)
    print(f"  its floor (frozen forward + side network alone), same rounds: throughput x{floor_speed:.2f}, "
          f"peak memory x{floor_memory:.2f}")

# %% [markdown]
# Why the side branch wins on both:
# - **Memory.** In-block adapters need gradients at every block, so backward runs through the
#   whole frozen backbone and autograd keeps every block's activations (notebook 03 counted
#   them). The side branch runs the backbone under `no_grad`: only the branch's own activations
#   are kept.
# - **Throughput.** Backward through the backbone costs about twice its forward. The side branch
#   skips it: each step is one backbone forward plus a small branch forward and backward.
#
# ## 2. Memory against batch size
# Activation memory grows with the batch; weights and optimizer states do not. The slope is what
# autograd keeps per sample:

# %%
mem_rows = {m: {} for m in ("mrs_adapter", "focus_adapter")}
for b in memory_batches:
    rows = (bench(bench_model, list(mem_rows), batch_size=b, steps=1, repeats=1, device=device, isolate=isolate,
                  progress=False)
            if b != BATCH_SIZE else [by[m] for m in mem_rows])
    for r in rows:
        mem_rows[r["method"]][b] = r["peak_memory_bytes"] / 2**20
fig = Figure(figsize=(5, 3.2))
ax = fig.subplots()
for m, pts in mem_rows.items():
    ax.plot(list(pts), list(pts.values()), "o-", label=m)
ax.set_xlabel("batch size (pairs)")
ax.set_ylabel("peak memory (MB)")
ax.set_title(f"{bench_model} on {device}")
ax.legend()
fig.tight_layout()
fig

# %%
fig = Figure(figsize=(6, 3.2))
ax = fig.subplots()
ax.bar([r["method"] for r in results], [r["samples_per_s"] for r in results])
ax.set_ylabel("training samples / s")
ax.set_title(f"{bench_model}, batch {BATCH_SIZE}, {device}")
ax.tick_params(axis="x", rotation=30)
fig.tight_layout()
fig

# %% [markdown]
# ## 3. Caching frozen features
# With a frozen backbone and no pixel augmentation, the backbone computes the same features for
# the same image in every epoch. The library's feature cache computes them once (memory-mapped
# under `data/cache/`, keyed by model, weights, dataset files, captions and transform; invalidated
# when any of them changes), so every later epoch costs only the branch. Timed on the offline
# default (MiniCLIP, SynthRS train split):

# %%
splits = load_splits(cfg, DATASET, splits=("train",))
bundle = create_model(MODEL, cfg.pretrained)
side = apply_method(bundle.model, "focus_adapter")
timing = time_epochs(side, bundle.tokenizer, splits["train"], bundle.transform, epochs=CACHE_EPOCHS,
                     batch_size=64, device=device, seed=SEED)
print(json.dumps({k: v for k, v in timing.items() if "loss" not in k}, indent=1))
print(f"an epoch from the cache: {timing['speedup']:.1f}x faster than from pixels "
      f"({timing['uncached_seconds'][-1]:.1f} s against {timing['cached_seconds'][-1]:.1f} s, the last of {CACHE_EPOCHS} epochs)")

# %% [markdown]
# ## 4. The cost figure: what each method's score costs
# Bench steps on random data say how fast and how big a step is. What a learner pays is the
# whole training run to the score it reaches. The zoo's runs (MiniCLIP on SynthRS, each method's
# recipe, 3 seeds) recorded how many epochs each trained, its best validation mR and its peak
# memory. Their wall-clock seconds were measured while other builds shared the machine, so they
# are printed but not plotted: the figure's seconds are the zoo's epochs times an epoch's time
# measured here, in one run (`bench.measure` on MiniCLIP, in this process, for the methods that
# read pixels; section 3's timing for the cached branch). The Focus-Adapter appears twice:
# trained from pixels, and from the cache. The zoo trains the one from pixels for one seed: it is
# the same training as from the cache (up to rounding), there to measure what reading pixels costs.

# %%
COST = {"full": "full", "mrs_adapter": "mrs_adapter", "focus_adapter_uncached": "focus_adapter (from pixels)",
        "focus_adapter": "focus_adapter (from the cache)"}
seeds = [SEED + k for k in range(1 if SMOKE else N_SEEDS)]  # a smoke run checks the pieces fit: one seed
cost_runs, where = zoo_runs(cfg, DATASET, DATA_DIR, RECIPE, list(COST), seeds, None)
print(f"{len(cost_runs)} runs: {where}")
pairs = splits["train"].num_captions
# only the rate is needed here (memory comes from the zoo's runs), so MiniCLIP is timed in this process;
# its steps take a fraction of a second: five of them are timed, for a steadier rate
epoch_bench = {m: measure(MODEL, m, batch_size=64, steps=1 if SMOKE else 5, device=device)
               for m in ("full", "mrs_adapter", "focus_adapter")}
epoch_seconds = {"full": pairs / epoch_bench["full"]["samples_per_s"],
                 "mrs_adapter": pairs / epoch_bench["mrs_adapter"]["samples_per_s"],
                 "focus_adapter_uncached": pairs / epoch_bench["focus_adapter"]["samples_per_s"],
                 "focus_adapter": timing["cached_seconds"][-1]}
points = []
for label, name in COST.items():
    rs = [r for r in cost_runs if r["label"] == label]
    epochs = statistics.mean(r["epochs_run"] for r in rs)
    points.append({"label": name, "epochs": epochs, "seconds": epochs * epoch_seconds[label],
                   "zoo_wall_seconds": statistics.mean(r["train_seconds"] for r in rs),
                   "memory_bytes": statistics.mean(r["peak_memory_bytes"] for r in rs),
                   "val_mr": statistics.mean(r["val_mr"] for r in rs),
                   "val_mr_std": statistics.stdev(r["val_mr"] for r in rs) if len(rs) > 1 else 0.0, "n": len(rs)})
print(f"{'':32s} {'val mR':>15s} {'seeds':>5s} {'epochs':>6s} {'s/epoch':>8s} {'seconds':>8s} {'(zoo wall)':>10s} "
      f"{'MiB':>6s}")
for p, label in zip(points, COST):
    print(f"{p['label']:32s} {p['val_mr']:6.2f} ± {p['val_mr_std']:4.2f}   {p['n']:5d} {p['epochs']:6.1f} "
          f"{epoch_seconds[label]:8.1f} {p['seconds']:8.0f} {p['zoo_wall_seconds']:10.0f} "
          f"{p['memory_bytes'] / 2**20:6.0f}")
plot_cost(points, title=f"{MODEL} on {DATASET}: val mR against what training cost (the zoo's runs)")

# %%
cost = {p["label"]: p for p in points}
for name in ("full", "mrs_adapter", "focus_adapter (from pixels)"):
    other, cached = cost[name], cost["focus_adapter (from the cache)"]
    print(f"focus_adapter from the cache needs {cached['seconds'] / other['seconds']:.2f}x the training time and "
          f"{cached['memory_bytes'] / other['memory_bytes']:.2f}x the peak memory of {name}, for "
          f"{cached['val_mr'] - other['val_mr']:+.2f} val mR")

# %% [markdown]
# Peak resident memory on a CPU includes the interpreter, the libraries and the data (and, from
# the cache, its memory-mapped pages), so the ratios understate what a GPU's tensor memory shows.
#
# ## 5. What else cuts memory
# Users with small GPUs ask for exactly this. Two other tools cut training memory without a side
# branch:
# - **Gradient checkpointing** (open_clip's `model.set_grad_checkpointing()`): each block's
#   activations are dropped in forward and recomputed in backward, so autograd keeps only the
#   blocks' inputs; the price is a second forward pass.
# - **Mixed precision** (`torch.autocast`, bfloat16 or float16): activations in half the bytes; the
#   library uses it on CUDA only, where it is also faster.
#
# Measured the same way as section 1, beside the side branch (`saved MB`: what autograd keeps
# for one step, counted tensor by tensor; it does not depend on the allocator).
#
# **Build it yourself: count what autograd keeps.** PyTorch calls a *pack hook* for every tensor
# it saves for backward (`torch.autograd.graph.saved_tensors_hooks(pack, unpack)`). Write
# `my_saved_bytes(fn)`: run `fn()` under such a hook and return the bytes of the saved tensors.
# Two traps make a plain sum of `numel() * element_size()` too large: one tensor is often saved
# by several ops (count each storage once: `t.untyped_storage().data_ptr()` names it, `.nbytes()`
# sizes it), and a linear layer saves its weight (or its transpose, a view: `t._base`), which is
# in memory anyway (leave `nn.Parameter`s out). The next cell checks it against
# `bench.saved_tensor_bytes` on a small network, in training and under `torch.no_grad()`.

# %%
def my_saved_bytes(fn):
    ### BEGIN SOLUTION
    storages = {}

    def pack(t):
        base = t if t._base is None else t._base
        if not isinstance(base, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())
    ### END SOLUTION


# %%
from rsretrieval.bench import saved_tensor_bytes

net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
x = torch.randn(32, 64)


def no_grad_forward():
    with torch.no_grad():
        net(x)


mine = check("my_saved_bytes (training, then no_grad)",
             lambda: [my_saved_bytes(lambda: net(x).sum()), my_saved_bytes(no_grad_forward)],
             [saved_tensor_bytes(lambda: net(x).sum()), saved_tensor_bytes(no_grad_forward)])
print(f"one forward of the small network keeps {mine[0] / 1024:.0f} KiB for backward; under no_grad "
      f"{mine[1]} bytes")

# %%
checkpointed = bench(bench_model, ["full", "mrs_adapter"], batch_size=BATCH_SIZE, steps=bench_steps,
                     repeats=repeats, device=device, grad_checkpointing=True, isolate=isolate, progress=False)
ckpt = {r["method"]: r for r in checkpointed}
rows = [by["full"], ckpt["full"], by["mrs_adapter"], ckpt["mrs_adapter"], by["focus_adapter"]]
ref = rows[0]
print(format_table([{**r, "throughput_ratio": r["samples_per_s"] / ref["samples_per_s"],
                     "memory_ratio": r["peak_memory_bytes"] / ref["peak_memory_bytes"]} for r in rows]))
for m in ("full", "mrs_adapter"):
    plain, recomputed = by[m], ckpt[m]
    print(f"{m} with gradient checkpointing keeps {recomputed['saved_for_backward_bytes'] / 2**20:.1f} MB for "
          f"backward instead of {plain['saved_for_backward_bytes'] / 2**20:.1f} MB "
          f"({plain['saved_for_backward_bytes'] / recomputed['saved_for_backward_bytes']:.1f}x less), peak memory "
          f"x{recomputed['peak_memory_bytes'] / plain['peak_memory_bytes']:.2f}, throughput "
          f"x{recomputed['samples_per_s'] / plain['samples_per_s']:.2f}")
print(f"the side branch keeps {by['focus_adapter']['saved_for_backward_bytes'] / 2**20:.1f} MB without checkpointing")
if device.startswith("cuda"):
    full_precision = bench(bench_model, ["full", "mrs_adapter"], batch_size=BATCH_SIZE, steps=bench_steps,
                           repeats=repeats, device=device, amp=False, isolate=isolate, progress=False)
    for r in full_precision:
        mixed = by[r["method"]]
        print(f"{r['method']}: mixed precision x{mixed['peak_memory_bytes'] / r['peak_memory_bytes']:.2f} peak memory, "
              f"x{mixed['samples_per_s'] / r['samples_per_s']:.2f} throughput against float32")
else:
    full_precision = []
    print(f"mixed precision: the library uses it on CUDA only; this run is on {device} (set DEVICE='cuda' on a GPU)")

# %% [markdown]
# ## 6. On a GPU
# The same command measures a GPU unchanged; memory is then what PyTorch allocated for tensors:
#
# ```bash
# python -m rsretrieval bench --model ViT-B-32 --methods full,mrs_adapter,focus_adapter \
#     --batch-size 32 --steps 10 --device cuda --json bench-gpu.json
# ```
#
# Expect the ratios to move: a GPU hides small kernels' overhead, so tiny branches gain less
# throughput than on a CPU, while the memory ratio (activations kept for backward) carries over.
# In this notebook, set `DEVICE="cuda"`; its numbers are recorded next to the CPU ones you keep.

# %%
record(cfg.output_dir, bench_model=bench_model, device=device, batch_size=BATCH_SIZE,
       bench=[{k: r[k] for k in ("method", "trainable", "samples_per_s", "peak_memory_bytes")} for r in results],
       focus_vs_mrs_throughput=speed, focus_vs_mrs_memory=memory, bench_repeats=repeats,
       focus_vs_mrs_throughput_rounds=speeds, focus_vs_mrs_memory_rounds=memories,
       floor_vs_mrs_throughput=floor_speed if "focus_adapter:floor" in by else None,
       floor_vs_mrs_memory=floor_memory if "focus_adapter:floor" in by else None,
       memory_mb_by_batch={m: {str(b): v for b, v in pts.items()} for m, pts in mem_rows.items()},
       cache_speedup=timing["speedup"], cache_build_seconds=timing["cache_build_seconds"],
       cost_figure=[{k: p[k] for k in ("label", "epochs", "seconds", "zoo_wall_seconds", "memory_bytes", "val_mr",
                                       "val_mr_std")} for p in points],
       grad_checkpointing={m: {k: ckpt[m][k] for k in ("samples_per_s", "peak_memory_bytes", "saved_for_backward_bytes")}
                           for m in ckpt},
       saved_for_backward_bytes={m: r["saved_for_backward_bytes"] for m, r in by.items()},
       float32_on_cuda={r["method"]: {k: r[k] for k in ("samples_per_s", "peak_memory_bytes")} for r in full_precision})

# %% [markdown]
# ## Exercises
# 1. Add `vpt` and `coop` to `BENCH_METHODS`. Which is cheaper to train, and why does CoOp still
#    back-propagate through the whole text tower?
# 2. Tap 12 blocks instead of 4 (`apply_method(model, "focus_adapter", layers=12)`): what happens to
#    memory and throughput, and to retrieval (notebook 03)?
# 3. With the cache, how many epochs fit in the time one uncached epoch takes? Use them: does mR
#    improve over notebook 04's one-epoch runs?
# 4. On a GPU, measure batch 128. Which method runs out of memory first on a 16 GB card?

# %% [markdown] tags=["instructor"]
# ## Worked answers (instructor edition)
# **1. VPT and CoOp.** Both add a few tokens at a tower's *input* (VPT: prompt tokens at every
# visual block; CoOp: context words in the text), so the gradient reaches them only through every
# block above: backward runs through the whole tower, and autograd keeps its activations, however
# few weights train. Measured the same way as section 1, beside MRS-Adapter and the side branch:

# %% tags=["instructor"]
prompts = bench(bench_model, ["vpt", "coop"], batch_size=BATCH_SIZE, steps=bench_steps, repeats=repeats,
                device=device, isolate=isolate, progress=False)
compared = [by["mrs_adapter"], *prompts, by["focus_adapter"]]
print(format_table(compared))
cheaper = min(prompts, key=lambda r: r["saved_for_backward_bytes"])
dearer = max(prompts, key=lambda r: r["saved_for_backward_bytes"])
print(f"{cheaper['method']} keeps {cheaper['saved_for_backward_bytes'] / 2**20:.1f} MB for backward, "
      f"{dearer['method']} {dearer['saved_for_backward_bytes'] / 2**20:.1f} MB; throughput "
      f"{cheaper['samples_per_s']:.1f} vs {dearer['samples_per_s']:.1f} samples/s; the side branch keeps "
      f"{by['focus_adapter']['saved_for_backward_bytes'] / 2**20:.1f} MB")

# %% [markdown] tags=["instructor"]
# **2. Tapping every block.** Each tapped block adds a LayerNorm + Linear down-projection to the
# branch and keeps that block's tokens for the branch's backward, so memory grows with the taps;
# the frozen backbone still runs under `no_grad`. `bench` times the methods as registered, so we
# count here, in this process, what one training step keeps and how long it takes.

# %% tags=["instructor"]
import time

from rsretrieval.bench import saved_tensor_bytes
from rsretrieval.training import Batch, build_task

tap_bundle = create_model(bench_model)
depth = len(tap_bundle.model.visual.transformer.resblocks)
tap_rows = {}
for taps in sorted({min(4, depth), depth}):
    net = apply_method(create_model(bench_model).model, "focus_adapter", layers=taps)
    task = build_task("infonce", net).train()
    size = tap_bundle.image_size
    step = Batch(image_ids=torch.arange(BATCH_SIZE), caption_ids=torch.arange(BATCH_SIZE), captions=[],
                 pixels=torch.randn(BATCH_SIZE, 3, size, size),
                 tokens=tap_bundle.tokenizer(["two white planes beside the terminal"] * BATCH_SIZE))
    saved_b = saved_tensor_bytes(lambda: sum(task(step).values()).backward())
    t0 = time.perf_counter()
    sum(task(step).values()).backward()
    tap_rows[taps] = (saved_b / 2**20, BATCH_SIZE / (time.perf_counter() - t0),
                      sum(p.numel() for p in net.parameters() if p.requires_grad))
    print(f"{bench_model}, {taps} tapped blocks: {tap_rows[taps][2]:,} trainable, {tap_rows[taps][0]:.1f} MB kept "
          f"for backward, {tap_rows[taps][1]:.1f} samples/s")
if len(tap_rows) == 2:
    (a, ra), (b, rb) = sorted(tap_rows.items())
    print(f"{b} taps instead of {a}: x{rb[0] / ra[0]:.2f} memory kept for backward, x{rb[1] / ra[1]:.2f} throughput")
print("retrieval: MiniCLIP has 4 blocks, so the default already taps all of them; notebook 03's third answer "
      "measures what tapping fewer (the last block only) costs on validation")

# %% [markdown] tags=["instructor"]
# **3. Epochs from the cache.** An epoch from the cache costs the branch only; section 3 timed
# both. We spend one uncached epoch's time on cached epochs (at most the recipe's 12) and compare
# validation mR after one epoch and after all of them.

# %% tags=["instructor"]
from rsretrieval.cmer.cache import CachedSideBranchTask, build_cache
from rsretrieval.models import seed_everything
from rsretrieval.training import TrainConfig, fit

per_uncached = timing["uncached_seconds"][-1]
per_cached = max(timing["cached_seconds"][-1], 1e-9)
fit_in = int(per_uncached // per_cached)
n_epochs = 1 if SMOKE else max(1, min(fit_in, 12))
print(f"one uncached epoch ({per_uncached:.1f} s) holds {fit_in} cached epochs ({per_cached:.2f} s each)")
answer_splits = load_splits(cfg, DATASET, splits=("train", "val"))
seed_everything(SEED)
cached_net = apply_method(create_model(MODEL, cfg.pretrained).model, "focus_adapter").to(device)
cache = build_cache(cached_net, answer_splits["train"], bundle.transform, bundle.tokenizer, progress=False)
history = fit(cached_net, bundle.tokenizer, answer_splits["train"], bundle.transform,
              TrainConfig(epochs=n_epochs, lr=3e-3, weight_decay=0.0, seed=SEED, device=device, progress=False,
                          max_steps=1 if SMOKE else None),
              val_data=answer_splits["val"], val_transform=bundle.transform,
              task=CachedSideBranchTask(cached_net, cache))
curve = history.column("val_mr")
print(f"val mR after epoch 1: {curve[0]:.2f}; after {len(curve)} epoch{'s' if len(curve) != 1 else ''}: {curve[-1]:.2f} "
      f"(best {max(curve):.2f}) in {sum(history.column('seconds')):.1f} s of training")

# %% [markdown] tags=["instructor"]
# **4. Batch 128 on a 16 GB card.** On a GPU, run `bench` with `--batch-size 128 --device cuda`
# and read `peak_memory_bytes`. Without one, estimate it from what section 1 measured at batch
# 32: activations kept for backward grow with the batch (×4), while weights (4 bytes each in
# float32) and, for trained weights, their gradient and Adam's two moments (12 bytes more) do not.
# Mixed precision halves most activations; the estimate below is float32, an upper bound.

# %% tags=["instructor"]
GIB = 2**30
estimates = {}
for r in (r for r in results if not r["method"].endswith(":floor")):
    activations = r["saved_for_backward_bytes"] * 128 / BATCH_SIZE
    states = 4 * r["total"] + 12 * r["trainable"]
    estimates[r["method"]] = activations + states
for m, b in sorted(estimates.items(), key=lambda kv: -kv[1]):
    print(f"{m:14s} about {b / GIB:6.2f} GiB at batch 128 ({bench_model}, float32)")
first = max(estimates, key=estimates.get)
print(f"first to run out on a 16 GB card: {first} ({estimates[first] / GIB:.1f} GiB estimated"
      + (", over 16" if estimates[first] > 16 * GIB else ", within 16: none would at this size") + ")")
