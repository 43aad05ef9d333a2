"""Training cost of each method: throughput and peak memory, measured one process per method.

Each method runs in a fresh child process (``python -m rsretrieval.bench --child ...``) on random
images and token ids, with both towers, the method's default loss task and one AdamW step per
iteration; the first ``warmup`` iterations are not timed.

Peak memory:
- CUDA: ``torch.cuda.max_memory_allocated`` of the timed iterations (tensors only).
- CPU: the child's peak resident set size, read by the parent from ``os.wait4`` once the child
  exits. It includes the Python interpreter and the torch libraries (a few hundred MB, the same
  for every method), so compare methods by their differences and ratios, not by absolute values.

Machines are noisy: compare methods by ratios measured in one run, never against numbers from
another run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _random_batch(model: torch.nn.Module, batch_size: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch_size, 3, size, size, generator=g)
    ctx = model.positional_embedding.shape[0]
    tokens = torch.randint(1, 49000, (batch_size, ctx), generator=g)
    tokens[:, 0] = 49406  # start of text
    ends = torch.randint(4, ctx, (batch_size,), generator=g)
    tokens[torch.arange(batch_size), ends] = 49407  # end of text: open_clip pools at the argmax token
    tokens[torch.arange(ctx)[None, :] > ends[:, None]] = 0
    ids = torch.arange(batch_size)
    return images.to(device), tokens.to(device), ids.to(device)


def measure(model_name: str, method: str, *, batch_size: int = 32, steps: int = 3, warmup: int = 1,
            device: str = "cpu", loss: str = "infonce", threads: int | None = None) -> dict[str, Any]:
    """Time ``steps`` training iterations of ``method`` in this process (no peak memory on CPU)."""
    from rsretrieval.methods import apply_method
    from rsretrieval.models import autocast, count_parameters, create_model, select_device
    from rsretrieval.tasks import get_loss

    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device)
    torch.manual_seed(0)
    model = apply_method(create_model(model_name).model, method)
    task = get_loss(loss)(model).to(dev).train()
    trainable, total = count_parameters(task)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-5)
    images, tokens, ids = _random_batch(model, batch_size, dev)

    def step() -> None:
        with autocast(dev):
            losses = task(images, tokens, ids)
            total_loss = sum(v for k, v in losses.items() if k.endswith("_loss"))
        total_loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
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
    out = {
        "method": method, "model": model_name, "device": dev.type, "batch_size": batch_size, "steps": steps,
        "trainable": trainable, "total": total, "seconds": seconds, "samples_per_s": batch_size * steps / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "memory_method": "cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS of the process",
    }
    return out


def run_isolated(model_name: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh child process; on CPU, adds the child's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "rsretrieval.bench", "--child", "--model", model_name, "--method", method,
                "--json", str(out)]
        for key, value in kwargs.items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"bench of {method} on {model_name} failed (exit {proc.returncode}):\n{stderr[-2000:]}")
        result = json.loads(out.read_text())
    if result["peak_memory_bytes"] is None:
        result["peak_memory_bytes"] = usage.ru_maxrss * 1024  # Linux reports kilobytes
    return result


def bench(model_name: str, methods: list[str], *, batch_size: int = 32, steps: int = 3, warmup: int = 1,
          device: str = "cpu", loss: str = "infonce", progress: bool = True) -> list[dict[str, Any]]:
    """Benchmark each method in its own process; ratios are relative to the first method."""
    results = []
    for method in methods:
        if progress:
            print(f"bench {method} ...", file=sys.stderr, flush=True)
        results.append(run_isolated(model_name, method, batch_size=batch_size, steps=steps, warmup=warmup,
                                    device=device, loss=loss))
    ref = results[0]
    for r in results:
        r["throughput_ratio"] = r["samples_per_s"] / ref["samples_per_s"]
        r["memory_ratio"] = r["peak_memory_bytes"] / ref["peak_memory_bytes"]
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`bench` results with ratios to the first row."""
    head = f"{'method':16s} {'trainable':>12s} {'samples/s':>10s} {'peak MB':>9s} {'speed x':>8s} {'memory x':>9s}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['method']:16s} {r['trainable']:12,d} {r['samples_per_s']:10.2f} "
                     f"{r['peak_memory_bytes'] / 2**20:9.0f} {r.get('throughput_ratio', 1):8.2f} "
                     f"{r.get('memory_ratio', 1):9.2f}")
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
    a = p.parse_args(argv)
    result = measure(a.model, a.method, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
                     device=a.device, loss=a.loss)
    Path(a.json).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
