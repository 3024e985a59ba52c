"""The benchmarks run and print interleaved ratios (timings are measurements, never asserted here; tensor memory
counts, which do not depend on the machine's load, are)."""
from __future__ import annotations

import re

from suite.experiments.bench import interleaved, run_bench


def test_interleaved_alternates_order_and_reports_medians():
    calls = []
    ta, tb, ratio = interleaved(lambda: calls.append("a"), lambda: calls.append("b"), rounds=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then order swapped each round
    assert ta >= 0 and tb >= 0 and ratio > 0


def test_runner_and_pegp_benches_print_their_ratios():
    out = run_bench("runner", quick=True) + "\n" + run_bench("pegp", quick=True)
    assert re.search(r"same prepared batches: .* median ratio \d+\.\d{3} \(target ≤ 1\.05\)", out)
    assert re.search(r"median overhead [+-]\d+\.\d+% over \d+ interleaved rounds", out)
    assert re.search(r"basis collection after task 1: \d+\.\d+ s", out)
    assert "directions in" in out and "KiB" in out


def test_text_memory_bench_counts_tensors_and_chunks_stop_the_growth():
    """Tensor memory (counted by the profiler, not timed): one pass grows with the head, chunks do not beyond
    the features."""
    from suite.experiments.bench import _text_step_memory

    one = [_text_step_memory("embedded:micro-clip@random", c, 10**9)[0] for c in (32, 128)]
    chunked = [_text_step_memory("embedded:micro-clip@random", c, 16)[0] for c in (32, 128)]
    assert one[1] > 3 * one[0] > 0
    assert chunked[1] < 1.5 * chunked[0] and chunked[1] < one[1] / 2


def test_step_bench_counts_the_steps_flops_and_the_machines_matmul():
    """FLOPs are counted (torch's FlopCounterMode), not timed: a seq-LoRA step of the micro model does its
    forward and backward matmuls; the table prints both PETs against the measured matmul throughput."""
    from suite.experiments.bench import _step_cost, matmul_gflops

    flops, seconds = _step_cost("lora", 2, "embedded:micro-clip@random")
    again, _ = _step_cost("lora", 2, "embedded:micro-clip@random")
    assert flops == again > 0 and seconds > 0
    assert matmul_gflops(__import__("torch").device("cpu"), n=256, reps=2) > 0
    out = run_bench("step", quick=True, model="embedded:micro-clip@random")
    rows = re.findall(r"(lora|vpt) +(\d+) +\d+\.\d+ +\d+\.\d+ +\d+\.\d+ +\d+ +\d+\.\d%", out)
    threads = __import__("torch").get_num_threads()
    assert [(p, int(n)) for p, n in rows] == [("lora", threads), ("vpt", threads)] + (
        [("lora", 1), ("vpt", 1)] if threads > 1 else [])  # the one-thread rows: each job of a sweep on every core


def test_run_bench_reports_fixed_costs_and_evaluations_share():
    out = run_bench("run", model="embedded:micro-clip@random")
    assert re.search(r"lone \d+\.\d+ s with the data to render, \d+\.\d+ s with it on disk; in a sweep worker "
                     r"\d+\.\d+ s \(same sequence and seed\), \d+\.\d+ s \(another seed", out)
    assert re.search(r"evaluation's share of a run at the shipped budget \(\d+ tasks\): lone .* = \d+%; in a sweep "
                     r"worker .* = \d+%", out)
