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
# # 02 · Full fine-tuning vs parameter-efficient transfer
#
# **Learning goals.** After this notebook you can
# 1. say why one would not fine-tune all 151M parameters of CLIP ViT-B/32 for every new archive;
# 2. place eight parameter-efficient transfer (PETL) methods in a transformer block, and count
#    what each trains;
# 3. build PE-RSITR's MRS-Adapter and HMMC loss yourself and check them against the library;
# 4. read a comparison honestly: mR (mean ± std over seeds), trainable parameters, time, memory.
#
# **Expected runtime.** CPU: about 7 minutes with the defaults (9 methods + MRS-Adapter with HMMC,
# 2 seeds each, 40 steps of 64 pairs each, on MiniCLIP and SynthRS). GPU: about 2 minutes; with
# ViT-B/32 on RSITMD, `STEPS=None` and `EPOCHS=30`, a few hours.

# %% tags=["parameters"]
SMOKE = False
DEVICE = "auto"
DATASET = "synthrs"
DATA_DIR = ""
MODEL = "mini"
PRETRAINED = "synthrs"
EPOCHS = 1
BATCH_SIZE = 64
SEED = 0
STEPS = 40  # optimizer steps per run (None: EPOCHS full epochs); 40 x 64 pairs is half an epoch
N_SEEDS = 2
OUTPUT_DIR = ""
METHODS = "full,linear_probe,adapter,lora,vpt,coop,clip_adapter,adaptformer,mrs_adapter"
LR_FULL = 3e-5
LR_PETL = 1e-3
RECIPE = ""  # a recipe name (`python -m rsretrieval recipes list`): its settings replace EPOCHS, BATCH_SIZE, STEPS and the learning rates
COUNT_MODEL = "ViT-B-32"

# %%
# %matplotlib inline
import inspect
import json
import subprocess
import sys

import torch
from IPython.display import display

from rsretrieval.experiments import format_summary, run_method, summarize
from rsretrieval.methods import apply_method, list_methods
from rsretrieval.models import create_model, print_trainable_parameters
from rsretrieval.notebook import load_splits, recipe_data_kwargs, record, run_settings, setup
from rsretrieval.plots import plot_score_vs_params
from rsretrieval.training import TrainConfig

cfg = setup(device=DEVICE, dataset=DATASET, data_dir=DATA_DIR, output_dir=OUTPUT_DIR, model=MODEL,
            pretrained=PRETRAINED, smoke=SMOKE, seed=SEED, notebook="02_full_vs_petl")
methods = [m.strip() for m in METHODS.split(",") if m.strip()]
seeds = [SEED + k for k in range(N_SEEDS)]
splits = load_splits(cfg, DATASET, **recipe_data_kwargs(RECIPE))
train, val, test = splits["train"], splits["val"], splits["test"]
max_steps = 1 if SMOKE else STEPS  # smoke runs only check that the pieces fit together
print(cfg, f"\nmethods: {methods}\nseeds: {seeds}\n{train}\n{test}")

# %% [markdown]
# ## 1. Why not fine-tune everything?
# Full fine-tuning updates every weight: CLIP ViT-B/32 has 151M of them. Each new archive (a new
# sensor, a new region, a new year) then needs its own 600 MB copy of the model, optimizer
# states three times that size in memory during training, and gradients through every layer.
# Parameter-efficient transfer (PETL) freezes the pretrained model and trains a small set of new
# or selected weights: one copy of CLIP serves every archive, each with an adapter of a few
# hundred kilobytes.
#
# How many weights does each method train on ViT-B/32? (Random weights: counting needs no
# download.) PE-RSITR's Table gives its own counts for most of them; ours are set to land
# within 15% of those, and the docstrings explain the exceptions.

# %%
PAPER_PARAMS = {"linear_probe": 1.05e6, "adapter": 0.17e6, "vpt": 0.46e6, "coop": 0.10e6,
                "clip_adapter": 0.52e6, "adaptformer": 0.17e6, "mrs_adapter": 0.16e6}  # PE-RSITR (paper)
out = subprocess.run([sys.executable, "-m", "rsretrieval", "params", "--model", COUNT_MODEL, "--method", "all"],
                     capture_output=True, text=True, check=True).stdout
counts = {row["method"]: row for row in map(json.loads, out.splitlines())}
print(f"{'method':14s} {'trainable':>12s} {'% of total':>10s} {'paper':>8s}")
for name, row in counts.items():
    paper = f"{PAPER_PARAMS[name] / 1e6:.2f}M" if name in PAPER_PARAMS else "-"
    print(f"{name:14s} {row['trainable']:12,d} {100 * row['trainable'] / row['total']:10.3f} {paper:>8s}")
assert counts["mrs_adapter"]["trainable"] == 161_088

# %% [markdown]
# ## 2. Where each method sits
# A transformer block of open_clip computes `x = x + attn(ln_1(x))` then `x = x + mlp(ln_2(x))`.
# The methods differ in where they add their few weights:
#
# | method | what trains | where |
# |---|---|---|
# | full | everything | everywhere |
# | linear_probe | the two output projections | after each tower |
# | adapter (Houlsby) | bottleneck MLPs | in series after attention and after the MLP |
# | lora | low-rank `B·A` added to weight matrices | inside attention's q, v projections |
# | vpt | learned prompt tokens | extra tokens at every visual block |
# | coop | learned context tokens | in place of placeholder words of the text |
# | clip_adapter | a residual bottleneck MLP | on each tower's output feature |
# | adaptformer | a scaled bottleneck MLP | parallel to each block's MLP |
# | mrs_adapter | one bottleneck shared by all blocks of both towers | parallel to each block's MLP |
#
# The code is the clearest diagram. The MRS-Adapter's block, as the library runs it:

# %%
from rsretrieval.methods.adaptformer import AdaptFormerBlock
from rsretrieval.methods.mrs_adapter import MRSBlock

print(inspect.getsource(MRSBlock.forward))
print(inspect.getsource(AdaptFormerBlock.forward))

# %% [markdown]
# LoRA needs care with open_clip: attention's q, k, v live in one fused `in_proj_weight` that
# `nn.MultiheadAttention` reads directly, so wrapping a sub-module (what most LoRA libraries do)
# is silently ignored. The library re-parametrises the weight itself, and its tests check that
# the output moves once `B` is non-zero.

# %%
from rsretrieval.methods import lora

print(inspect.getsource(lora).split("class ")[0][:1500])

# %% [markdown]
# ## 3. The MRS-Adapter, step by step
# PE-RSITR (Yuan, Zhan, Xiong, TGRS 2023) shares **one** adapter across all 12 blocks of both
# towers. Each tower projects down to 64 dimensions with its own matrix; ReLU and dropout; then
# two up projections whose outputs are concatenated: one specific to the tower (64 → width − 64)
# and one **shared** by both towers (64 → 64). Up projections start at zero, so training starts
# from frozen CLIP exactly. We build it from scratch:

# %%
from torch import nn


class MyMRSAdapter(nn.Module):
    def __init__(self, widths, bottleneck=64, shared=64, dropout=0.5):
        super().__init__()
        self.down = nn.ModuleDict({t: nn.Linear(w, bottleneck) for t, w in widths.items()})
        self.up = nn.ModuleDict({t: nn.Linear(bottleneck, w - shared) for t, w in widths.items() if w > shared})
        self.up_shared = nn.Linear(bottleneck, shared)
        self.drop = nn.Dropout(dropout)
        for lin in self.down.values():
            nn.init.kaiming_uniform_(lin.weight, a=5 ** 0.5)
            nn.init.zeros_(lin.bias)
        for lin in [*self.up.values(), self.up_shared]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, tower):
        h = self.drop(torch.relu(self.down[tower](x)))
        parts = ([self.up[tower](h)] if tower in self.up else []) + [self.up_shared(h)]
        return torch.cat(parts, dim=-1)


widths = {"visual": 768, "text": 512}
mine = MyMRSAdapter(widths)
print("parameters of our MRS-Adapter on ViT-B/32 widths:", sum(p.numel() for p in mine.parameters()))

# %% [markdown]
# The count is PE-RSITR's 0.16M exactly. Now the same on our model, compared with the library's
# injected adapter: copy the library's weights into ours (non-zero, so the check means
# something) and compare outputs of one block on the same input.

# %%
from rsretrieval.methods.mrs_adapter import MRSAdapter

bundle = create_model(MODEL, cfg.pretrained)
lib_model = apply_method(bundle.model, "mrs_adapter")
lib_block = lib_model.visual.transformer.resblocks[0]
lib_adapter = lib_block.adapter
assert all(b.adapter is lib_adapter for b in lib_model.visual.transformer.resblocks)
assert all(b.adapter is lib_adapter for b in lib_model.transformer.resblocks)  # one instance, both towers

with torch.no_grad():
    for p in lib_adapter.parameters():
        p.normal_(0, 0.02)
ours = MyMRSAdapter({t: lin.in_features for t, lin in lib_adapter.down.items()})
ours.load_state_dict(lib_adapter.state_dict())
lib_model.eval(), ours.eval()

x = torch.randn(2, 10, lib_adapter.down["visual"].in_features)
base = lib_block.base_layer
with torch.no_grad():
    h = x + base.ls_1(base.attn(base.ln_1(x), base.ln_1(x), base.ln_1(x), need_weights=False)[0])
    by_hand = h + base.ls_2(base.mlp(base.ln_2(h))) + ours(h, "visual")
    library = lib_block(x)
print("max difference, our block vs the library's:", float((by_hand - library).abs().max()))
assert torch.allclose(by_hand, library, atol=1e-5)
print_trainable_parameters(lib_model);

# %% [markdown]
# ## 4. HMMC: a loss for images that look alike
# Remote-sensing images of one scene look very much alike, and so do their captions. PE-RSITR's
# **hybrid multi-modal contrastive** loss adds two *intra-modal* terms to the usual cross-modal
# one, each a hardest-negative hinge (VSE++, margin 0.2):
#
# L = C(v, t) + C(v, ṽ) + C(t, t̃)
#
# where ṽ and t̃ are a second pass of the same images and captions through the same weights with
# dropout (0.2) on the token embeddings. The intra-image term pushes each image away from the
# *other* images of the batch that look most like it; the intra-text term does the same for
# captions. Pairs that show the same image are masked out of the negatives (PE-RSITR's released
# code does not mask them, which turns a true match into a negative whenever two captions of one
# image share a batch).

# %%
from rsretrieval.training import Batch, build_task

batch = [train.pairs(bundle.transform)[j] for j in range(8)]
images = torch.stack([b["image"] for b in batch])
tokens = bundle.tokenizer([b["caption"] for b in batch])
ids = torch.tensor([b["image_index"] for b in batch])
batch = Batch(image_ids=ids, caption_ids=torch.arange(len(ids)), captions=[b["caption"] for b in batch],
              pixels=images, tokens=tokens)
fresh = apply_method(create_model(MODEL, cfg.pretrained).model, "mrs_adapter").train()
torch.manual_seed(SEED)
for name in ("infonce", "vsepp", "hmmc"):
    losses = build_task(name, fresh)(batch)
    print(f"{name:8s}", {k: round(float(v), 3) for k, v in losses.items()})

# %% [markdown]
# ## 5. The comparison
# Every method starts from the same pretrained MiniCLIP, trains on SynthRS's training split for
# the same budget, keeps its best epoch on the validation split, and is scored once on test.
# Full fine-tuning gets a small learning rate (its weights are already good); the new weights of
# PETL methods get a large one. MRS-Adapter runs twice: with InfoNCE, and with HMMC as in
# PE-RSITR. Finished runs are read back from `OUTPUT_DIR/runs`, so re-running is cheap.

# %%
runs = []
plan = [(m, "infonce") for m in methods] + ([("mrs_adapter", "hmmc")] if "mrs_adapter" in methods else [])
for method, loss in plan:
    for seed in seeds:
        tcfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR_FULL if method == "full" else LR_PETL,
                           warmup_steps=0 if SMOKE else 10, seed=seed, device=str(cfg.device),
                           max_steps=max_steps, progress=False, weight_decay=0.05 if method == "full" else 0.0)
        label = method if loss == "infonce" else f"{method}+{loss}"
        r = run_method(MODEL, cfg.pretrained, method, train, val, test, **run_settings(RECIPE, tcfg, smoke=SMOKE),
                       loss=loss, run_dir=cfg.output_dir / "runs" / f"{label}-s{seed}")
        r["label"] = label
        runs.append(r)
        print(f"{label:20s} seed {seed}: test mR {r['test']['mr']:6.2f}  ({r['seconds_per_epoch']:.0f} s/epoch)")

# %% [markdown]
# What does each method cost in memory while training? Each method trains a few steps in its own
# process on random data (`python -m rsretrieval bench`), and we read that process's peak
# resident memory; the interpreter and libraries are in every number, so compare differences.

# %%
from rsretrieval.bench import bench, format_table

bench_rows = bench(MODEL, methods, batch_size=8 if SMOKE else BATCH_SIZE, steps=1 if SMOKE else 2,
                   device=str(cfg.device), progress=False)
print(format_table(bench_rows))
memory = {r["method"]: r["peak_memory_bytes"] for r in bench_rows}

# %%
table = summarize(runs, group="label")
extra = {r["label"]: {"peak MB": memory.get(r["label"].split("+")[0], 0) / 2**20} for r in table}
print(format_summary(table, group="label", extra=extra))

# %% [markdown]
# Beside PE-RSITR's own table (ViT-B/32 on RSITMD, **the paper's numbers**, not comparable in
# height with ours — different model, data and budget; compare the *shape*):

# %%
PAPER_RSITMD_MR = {"full": 45.33, "linear_probe": 36.25, "coop": 30.51, "vpt": 34.14, "adapter": 32.37,
                   "clip_adapter": 32.38, "adaptformer": 34.81, "mrs_adapter+hmmc": 44.47}  # PE-RSITR (paper)
PAPER_POINTS = {k: (PAPER_PARAMS.get(k.split("+")[0], 151.3e6), v) for k, v in PAPER_RSITMD_MR.items()}
ours_by_label = {r["label"]: r for r in table}
print(f"{'method':20s} {'ours mR':>10s} {'paper mR (RSITMD)':>18s}")
for label in ours_by_label:
    paper = PAPER_RSITMD_MR.get(label)
    print(f"{label:20s} {ours_by_label[label]['mr_mean']:10.2f} {paper if paper is not None else '-':>18}")
plot_score_vs_params(table, label="label", paper=PAPER_POINTS, title=f"{MODEL} on {DATASET} (ours)")

# %% [markdown]
# ## 6. Reading the results honestly
# On PE-RSITR's ViT-B/32, the pretrained features are strong and the MRS-Adapter with HMMC
# nearly matches full fine-tuning. On MiniCLIP the picture differs, and the numbers above say by
# how much. Why?
#
# - **A weak backbone leaves the adapters little to adapt.** MiniCLIP was pretrained for a few
#   minutes on a synthetic photo-like domain; many of the features the rs domain needs (what a
#   runway looks like from above, what "terminal" means) are simply not there. Full fine-tuning
#   can build them; a 0.1%-sized adapter on frozen features mostly re-weights what exists.
# - **The budget is short.** Half an epoch favours methods whose weights start useful; new
#   adapter weights start at zero.
# - **Same-budget comparison hides the cost side**: the table's s/epoch and peak memory columns
#   are the other half of the trade.
#
# The gap between full fine-tuning and the best PETL method here:

# %%
best_petl = max((r for r in table if r["label"] != "full"), key=lambda r: r["mr_mean"])
full_row = ours_by_label.get("full")
gap = full_row["mr_mean"] - best_petl["mr_mean"] if full_row else float("nan")
print(f"best PETL method: {best_petl['label']} with mR {best_petl['mr_mean']:.2f}; "
      f"full fine-tuning {full_row['mr_mean'] if full_row else float('nan'):.2f}; gap {gap:.2f} points")
if full_row:
    print(f"full fine-tuning trains {full_row['trainable'] / best_petl['trainable']:.0f}x more parameters")

# %% [markdown]
# ## 7. Records

# %%
record(cfg.output_dir, dataset=DATASET, model=MODEL, epochs=EPOCHS, seeds=seeds,
       params_vit_b32={k: v["trainable"] for k, v in counts.items()},
       results=[{k: r[k] for k in ("label", "trainable", "mr_mean", "mr_std", "seconds_per_epoch", "n")}
                for r in table],
       peak_memory_bytes=memory, full_minus_best_petl_mr=gap, best_petl=best_petl["label"])

# %% [markdown]
# ## Exercises
# 1. Give every method more training (`STEPS=None`, `EPOCHS=5`). Which gap closes?
# 2. Find the learning rate at which full fine-tuning starts to *forget* (mR falls below
#    zero-shot after one epoch). Why does a large learning rate hurt full fine-tuning but not an
#    adapter?
# 3. Train MRS-Adapter with HMMC but without same-image masking (edit the task's mask). With
#    batch 64 and five captions per image, how often do two captions of one image meet in a batch?
# 4. Re-implement CLIP-Adapter in 15 lines in this notebook and check it equals
#    `apply_method(model, "clip_adapter")`.
# 5. With a GPU and RSITMD: `MODEL="ViT-B-32"`, `PRETRAINED="openai"`, `EPOCHS=30`,
#    `BATCH_SIZE=16`, `LR_PETL=2e-4`. How close to the paper's 44.47 does MRS-Adapter + HMMC get?
