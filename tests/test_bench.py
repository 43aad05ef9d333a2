"""What the benchmark counts: activations autograd keeps, each storage once, weights left out, and
only while they live; repeated, interleaved runs reported as medians with their spread."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from rsretrieval.bench import saved_tensor_bytes

F32 = 4


def test_saved_bytes_match_a_hand_count_of_a_small_network():
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = torch.randn(32, 64)
    # the input (for the first weight's gradient), the first output (GELU's backward), GELU's output
    # (the second weight's gradient); the second weight's transpose, which addmm saves, is a weight
    assert saved_tensor_bytes(lambda: net(x).sum().backward()) == (32 * 64 + 2 * 32 * 256) * F32
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: net(x)) == 0


def test_a_tensor_saved_by_two_ops_counts_once():
    a, b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)
    assert saved_tensor_bytes(lambda: (a(x) + b(x)).sum().backward()) == 32 * 64 * F32


def test_checkpointed_blocks_keep_their_inputs_and_recompute_one_block_at_a_time():
    blocks = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()) for _ in range(6)]
    x = torch.randn(256, 64, requires_grad=True)

    def step(recompute):
        h = x
        for block in blocks:
            h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
        h.sum().backward()

    activation = 256 * 64 * F32
    assert saved_tensor_bytes(lambda: step(False)) == 6 * 2 * activation  # each block's input and pre-GELU
    assert saved_tensor_bytes(lambda: step(True)) == 6 * activation  # the inputs; a recomputed block is freed


def test_the_floor_of_a_side_branch_is_its_frozen_forward_and_side_network_alone():
    from rsretrieval.bench import measure

    floor = measure("tiny", "focus_adapter:floor", batch_size=4, steps=1)
    plain = measure("tiny", "focus_adapter", batch_size=4, steps=1)
    assert floor["method"] == "focus_adapter:floor" and floor["samples_per_s"] > 0
    assert floor["trainable"] == plain["trainable"]  # the same side network, trained the same way
    with pytest.raises(ValueError, match="mrs_adapter:floor needs a side-branch method"):
        measure("tiny", "mrs_adapter:floor", batch_size=4, steps=1)


def test_a_bench_in_this_process_starts_no_child_and_keeps_the_rows_shape(monkeypatch):
    """isolate=False (notebook 05's smoke run): the same rounds and rows, measured here."""
    from rsretrieval import bench as bench_mod

    monkeypatch.setattr(bench_mod, "run_isolated", lambda *a, **k: pytest.fail("isolate=False started a child"))
    rows = bench_mod.bench("tiny", ["full", "mrs_adapter"], batch_size=4, steps=1, repeats=2, isolate=False,
                           grad_checkpointing=True, progress=False)
    assert [r["method"] for r in rows] == ["full", "mrs_adapter"]
    assert all(r["grad_checkpointing"] and len(r["samples_per_s_runs"]) == 2 for r in rows)
    assert rows[0]["throughput_ratio"] == 1.0 and rows[1]["trainable"] < rows[0]["trainable"]
