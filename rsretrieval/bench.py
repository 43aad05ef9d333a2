"""Training cost of each method: throughput and peak memory, measured one process per method.

Each method runs in a fresh child process (``python -m rsretrieval.bench --child ...``) on random
images and token ids, with both towers, the method's default loss task and one AdamW step per
iteration; the first ``warmup`` iterations are not timed.

Peak memory:
- CUDA: ``torch.cuda.max_memory_allocated`` of the timed iterations (tensors only).
- CPU: the child's peak resident set size (``VmHWM`` of ``/proc/self/status``, read by the child at
  the end; ``ru_maxrss`` elsewhere). It includes the Python interpreter and the torch libraries (a
  few hundred MB, the same for every method), so compare methods by differences and ratios.
  ``VmHWM`` belongs to the child's own address space; ``ru_maxrss`` as seen by a parent would not
  do on Linux, where a child started from a large process (a notebook kernel) inherits its
  parent's high-water mark across fork and exec.

Machines are noisy: compare methods by ratios measured in one run, never against numbers from
another run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from rsretrieval.errors import ChildProcessFailed
from rsretrieval.files import atomic_write_text


_WORDS = ("two", "white", "planes", "are", "parked", "beside", "the", "terminal", "many", "cars", "in", "a",
          "parking", "lot", "green", "trees", "near", "river", "boats", "port", "large", "storage", "tanks")


def _random_batch(model: torch.nn.Module, tokenizer, batch_size: int, device: torch.device, seed: int = 0):
    """Random pixels and random captions of 6 to 20 words, tokenised as the method expects (CoOp adds
    placeholder tokens), so every method runs its real text path."""
    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch_size, 3, size, size, generator=g)
    lengths = torch.randint(6, 21, (batch_size,), generator=g).tolist()
    picks = torch.randint(0, len(_WORDS), (batch_size, 20), generator=g).tolist()
    captions = [" ".join(_WORDS[w] for w in row[:n]) for row, n in zip(picks, lengths)]
    tokens = tokenizer(captions)
    ids = torch.arange(batch_size)
    return images.to(device), tokens.to(device), ids.to(device)


def measure(model_name: str, method: str, *, batch_size: int = 32, steps: int = 3, warmup: int = 1,
            device: str = "cpu", loss: str = "infonce", threads: int | None = None,
            grad_checkpointing: bool = False, amp: bool = True) -> dict[str, Any]:
    """Time ``steps`` training iterations of ``method`` in this process (no peak memory on CPU).

    ``grad_checkpointing``: open_clip's ``set_grad_checkpointing`` (each block's activations are
    recomputed in backward instead of kept); ``amp``: mixed precision, which only CUDA uses.
    ``saved_for_backward_bytes`` counts what autograd keeps for one step: unlike a process's peak
    memory, it does not depend on the allocator or the machine.
    """
    from rsretrieval.methods import apply_method, wrap_tokenizer
    from rsretrieval.models import autocast, count_parameters, create_model, select_device
    from rsretrieval.models.utils import logit_scale
    from rsretrieval.training.tasks import Batch, build_task

    method, floor = _floor_of(method)
    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device)
    torch.manual_seed(0)
    bundle = create_model(model_name)
    model = apply_method(bundle.model, method)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    tokenizer = wrap_tokenizer(model, bundle.tokenizer)
    task = build_task(loss, model).to(dev).train()
    trainable, total = count_parameters(task)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-5)
    images, tokens, ids = _random_batch(model, tokenizer, batch_size, dev)
    batch = Batch(image_ids=ids, caption_ids=torch.arange(batch_size, device=dev), captions=[], pixels=images,
                  tokens=tokens)

    if floor and not hasattr(model, "branch_image"):
        raise ValueError(f"{method}:floor needs a side-branch method (frozen backbone + side network), "
                         f"e.g. focus_adapter; {method} trains inside the backbone")

    def step() -> None:
        with autocast(dev, enabled=amp):
            if floor:  # the frozen forward, then the side network alone on its outputs, as from a cache
                (img_emb, img_taps), (txt_emb, txt_taps, eot) = (model.frozen_image_features(images),
                                                                 model.frozen_text_features(tokens))
                img = model.branch_image(img_emb, model.cached_form("visual", img_taps))
                txt = model.branch_text(txt_emb, model.cached_form("text", txt_taps), eot)
                img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
                losses = task.loss(img, txt, logit_scale(model), ids)
            else:
                losses = task(batch)
            total_loss = sum(v for k, v in losses.items() if k.endswith("_loss"))
        total_loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # what autograd keeps is counted on an untimed step: the first warm-up step, or one more at the end
    saved = saved_tensor_bytes(step, task.parameters()) if warmup else None
    for _ in range(warmup - 1):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if saved is None:
        saved = saved_tensor_bytes(step, task.parameters())
    out = {
        "method": method + (FLOOR if floor else ""), "model": model_name, "device": dev.type,
        "batch_size": batch_size, "steps": steps,
        "grad_checkpointing": grad_checkpointing, "amp": amp and dev.type == "cuda", "saved_for_backward_bytes": saved,
        "trainable": trainable, "total": total, "seconds": seconds, "samples_per_s": batch_size * steps / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak_rss_bytes(),
        "memory_method": "cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS of the process",
    }
    return out


FLOOR = ":floor"


def _floor_of(method: str) -> tuple[str, bool]:
    """``focus_adapter:floor`` -> (``focus_adapter``, True): the method's frozen forward and its side
    network timed as one step with nothing else (no recomputation, no hooks' bookkeeping), the least
    a side-branch step can cost on this machine."""
    return (method[:-len(FLOOR)], True) if method.endswith(FLOOR) else (method, False)


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def machine_info(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """How a benchmark was called (``python -m rsretrieval COMMAND`` with its parsed ``options``; a folder
    given as ``store`` is written DIR) and what it ran on, to store beside its numbers."""
    import os
    import platform

    def flag(key: str, value: Any) -> str:
        name = f"--{key.replace('_', '-')}"
        if value is True:
            return name
        return f"{name} {'DIR' if key == 'store' else ','.join(value) if isinstance(value, tuple) else value}"

    command = " ".join(["python -m rsretrieval", command, *(
        flag(k, v) for k, v in options.items()
        if k not in ("func", "json", "debug", "command") and v is not None and v is not False)])

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"command": command, "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def run_isolated(model_name: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh child process, so each method's peak memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "rsretrieval.bench", "--child", "--model", model_name, "--method", method,
                "--json", str(out)]
        for key, value in kwargs.items():
            if value is True:
                args.append(f"--{key.replace('_', '-')}")
            elif value is False:
                args.append(f"--no-{key.replace('_', '-')}")
            elif value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.run(args, stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
            raise ChildProcessFailed(f"bench of {method} on {model_name} failed (exit {proc.returncode}): {last}\n"
                                     f"{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def bench(model_name: str, methods: list[str], *, batch_size: int = 32, steps: int = 3, warmup: int = 1,
          repeats: int = 3, device: str = "cpu", loss: str = "infonce", grad_checkpointing: bool = False,
          amp: bool = True, isolate: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Benchmark each method in its own process, ``repeats`` rounds interleaved (each method once a round,
    the order rotated each round), so that a busy or cooling machine weighs on every method alike.

    A row holds the medians of its rounds (``samples_per_s``, ``peak_memory_bytes``, ``seconds``), each
    round's value (``*_runs``), and ratios to the first method: the median over rounds of the ratio
    within a round (``throughput_ratio``, ``memory_ratio``) with its range (``*_range``).
    ``grad_checkpointing`` and ``amp`` are :func:`measure`'s, for every method. ``isolate=False`` measures
    in this process instead (a smoke run's plumbing check: it saves a process start per method, but each
    method's peak memory then includes every earlier one's, so its memory ratios mean nothing).
    """
    from statistics import median

    from rsretrieval.methods import get_method
    from rsretrieval.models.factory import check_model_name

    if not methods:
        raise ValueError("no methods to bench: name them, e.g. --methods full,mrs_adapter")
    for method in methods:
        get_method(_floor_of(method)[0])  # an unknown name fails here, before any process starts
    check_model_name(model_name)
    if batch_size < 1 or steps < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need batch_size >= 1, steps >= 1, warmup >= 0 and repeats >= 1; got {batch_size}, "
                         f"{steps}, {warmup} and {repeats}")
    rounds: list[dict[int, dict[str, Any]]] = []
    for r in range(repeats):
        order = [(i + r) % len(methods) for i in range(len(methods))]
        got = {}
        for i in order:
            if progress:
                print(f"bench {methods[i]} (round {r + 1} of {repeats}) ...", file=sys.stderr, flush=True)
            common = dict(batch_size=batch_size, steps=steps, warmup=warmup, device=device, loss=loss)
            got[i] = (run_isolated(model_name, methods[i], **common, grad_checkpointing=grad_checkpointing or None,
                                   amp=None if amp else False) if isolate else
                      measure(model_name, methods[i], **common, grad_checkpointing=grad_checkpointing, amp=amp))
        rounds.append(got)
    results = []
    for i in range(len(methods)):
        runs = [rd[i] for rd in rounds]
        row = dict(runs[0], repeats=repeats)
        for key in ("samples_per_s", "peak_memory_bytes", "seconds", "saved_for_backward_bytes"):
            row[f"{key}_runs"] = [run[key] for run in runs]
            row[key] = median(row[f"{key}_runs"])
        for ratio, key in (("throughput_ratio", "samples_per_s"), ("memory_ratio", "peak_memory_bytes")):
            within = [rd[i][key] / rd[0][key] for rd in rounds]
            row[ratio], row[f"{ratio}_range"] = median(within), [min(within), max(within)]
        results.append(row)
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`bench` results: medians, the range of samples/s over rounds, and
    ratios to the first row (the median of the rounds' ratios, with their range)."""
    head = (f"{'method':28s} {'trainable':>12s} {'samples/s':>10s} {'(min-max)':>15s} {'peak MB':>9s} "
            f"{'saved MB':>9s} {'speed x':>8s} {'(range)':>13s} {'memory x':>9s}")
    lines = [head, "-" * len(head)]
    for r in results:
        name = r["method"] + (" +checkpointing" if r.get("grad_checkpointing") else "") + (" +amp" if r.get("amp") else "")
        runs = r.get("samples_per_s_runs", [r["samples_per_s"]])
        lo, hi = r.get("throughput_ratio_range", [r.get("throughput_ratio", 1)] * 2)
        lines.append(f"{name:28s} {r['trainable']:12,d} {r['samples_per_s']:10.2f} "
                     f"{f'({min(runs):.2f}-{max(runs):.2f})':>15s} "
                     f"{r['peak_memory_bytes'] / 2**20:9.0f} {r.get('saved_for_backward_bytes', 0) / 2**20:9.1f} "
                     f"{r.get('throughput_ratio', 1):8.2f} {f'({lo:.2f}-{hi:.2f})':>13s} "
                     f"{r.get('memory_ratio', 1):9.2f}")
    n = results[0].get("repeats", 1) if results else 1
    lines.append(f"medians of {n} interleaved round(s), one process per method and round")
    return "\n".join(lines)


def _child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--loss", default="infonce")
    p.add_argument("--json", required=True)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    a = p.parse_args(argv)
    result = measure(a.model, a.method, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
                     device=a.device, loss=a.loss, grad_checkpointing=a.grad_checkpointing, amp=a.amp)
    atomic_write_text(a.json, json.dumps(result))
    return 0


def saved_tensor_bytes(fn: Callable[[], Any], parameters: Iterable[torch.Tensor] = ()) -> int:
    """The most bytes of activations autograd keeps alive for backward at once while ``fn()`` runs.

    Each storage counts once however many ops save it (or views of it), only while a saved reference
    to it lives (a checkpointed block's recomputed activations come and go in backward), and weights
    (``nn.Parameter``, views of one, and the storages of ``parameters``) not at all: they are in
    memory anyway.
    """
    import weakref

    skip = {p.untyped_storage().data_ptr() for p in parameters}
    refs: dict[int, int] = {}
    live = peak = 0

    def release(ptr: int, nbytes: int) -> None:
        nonlocal live
        refs[ptr] -= 1
        if not refs[ptr]:
            del refs[ptr]
            live -= nbytes

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal live, peak
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        base = t if t._base is None else t._base  # a weight's transpose, saved by a linear layer
        if isinstance(base, torch.nn.Parameter) or ptr in skip or not storage.nbytes():
            return t
        if ptr not in refs:
            refs[ptr] = 0
            live += storage.nbytes()
            peak = max(peak, live)
        refs[ptr] += 1
        holder = t.detach()  # a reference of our own, freed when autograd frees what it saved
        weakref.finalize(holder, release, ptr, storage.nbytes())
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return peak


if __name__ == "__main__":
    raise SystemExit(_child_main())
