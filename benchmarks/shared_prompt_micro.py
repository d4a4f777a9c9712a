"""Micro-benchmark: forward + backward of the shared-prompt forward against the unshared one (not a test).

A random-weight Qwen2 (hidden 256, 4 layers, vocabulary 8192) with TRL's fused LM head, batch 2, K = 4, two shapes:

- TL;DR-like: prompt 512 tokens, completions of 48 (a long prompt shared by short completions);
- UltraFeedback-like: prompt 150 tokens, completions of 300 (a short prompt, long completions).

For each attention implementation (`sdpa`, `eager`) and shape, the two forwards alternate (one warm-up each, then the
median (and minimum) of `--repeats` runs of each), and each path's peak resident memory is measured in a fresh
subprocess (RSS sampled every millisecond during one forward + backward, minus the RSS before it: the activations,
gradients and masks of that step). Prints a table and writes
`benchmarks/results/shared_prompt_micro.json`.

    python benchmarks/shared_prompt_micro.py [--repeats 5] [--attn sdpa eager]
"""

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


SHAPES = {
    "tldr": {"prompt_length": 512, "completion_length": 48},
    "ultrafeedback": {"prompt_length": 150, "completion_length": 300},
}
BATCH_SIZE, NUM_COMPLETIONS = 2, 4
MODEL = {
    "vocab_size": 8192,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
RESULTS = Path(__file__).parent / "results" / "shared_prompt_micro.json"


def build(attn_implementation: str, shape: str, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from trl_rankalign.data.collator import DataCollatorForRankedPreference
    from trl_rankalign.data.shared_prompt_collator import pack_shared_prompt

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**MODEL, attn_implementation=attn_implementation))
    add_fused_lm_head(model)
    model.train()
    rng = random.Random(seed)
    dims = SHAPES[shape]

    def tokens(n):
        return [rng.randrange(1, MODEL["vocab_size"]) for _ in range(n)]

    examples = [
        {
            "prompt_ids": tokens(dims["prompt_length"]),
            "completion_ids": [tokens(dims["completion_length"]) for _ in range(NUM_COMPLETIONS)],
            "scores": [float(NUM_COMPLETIONS - k) for k in range(NUM_COMPLETIONS)],
        }
        for _ in range(BATCH_SIZE)
    ]
    unshared = DataCollatorForRankedPreference(pad_token_id=0)(examples)
    shared = pack_shared_prompt(examples, pad_token_id=0)
    return model, unshared, shared


def step_unshared(model, batch):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    )
    outputs.log_probs.sum().backward()


def step_shared(model, batch):
    from trl_rankalign.forward import listwise_forward

    listwise_forward(model, batch).logps.sum().backward()


def timed(step, model, batch) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    step(model, batch)
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib(attn_implementation: str, shape: str, path: str) -> dict:
    """Run one forward + backward of `path` in this (fresh) process, sampling its RSS every millisecond (MiB)."""
    model, unshared, shared = build(attn_implementation, shape)
    step, batch = (step_shared, shared) if path == "shared" else (step_unshared, unshared)
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step(model, batch)
    done.set()
    sampler.join()
    peak = max(peak[0], _rss_mib())
    return {"peak_rss_mib": round(peak, 1), "peak_rss_delta_mib": round(peak - before, 1)}


def measure_rss(attn_implementation: str, shape: str, path: str) -> dict:
    command = [sys.executable, __file__, "--rss-child", attn_implementation, shape, path]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark(attn_implementation: str, shape: str, repeats: int) -> dict:
    model, unshared, shared = build(attn_implementation, shape)
    with torch.no_grad():  # the two paths agree before they are timed
        from trl_rankalign.forward import listwise_forward

        labels = unshared["input_ids"].masked_fill(unshared["completion_mask"] == 0, -100)
        reference = model(
            input_ids=unshared["input_ids"],
            attention_mask=unshared["attention_mask"],
            labels=labels,
            fused_lm_head=True,
        ).log_probs.sum(1)
        max_abs_diff = (listwise_forward(model, shared).logps.T.reshape(-1) - reference).abs().max().item()

    timed(step_unshared, model, unshared)  # warm-up
    timed(step_shared, model, shared)
    times = {"unshared": [], "shared": []}
    for _ in range(repeats):
        times["unshared"].append(timed(step_unshared, model, unshared))
        times["shared"].append(timed(step_shared, model, shared))
    num = BATCH_SIZE * NUM_COMPLETIONS
    row = {
        "attn_implementation": attn_implementation,
        "shape": shape,
        **SHAPES[shape],
        "batch_size": BATCH_SIZE,
        "num_completions": NUM_COMPLETIONS,
        "max_abs_logp_diff": max_abs_diff,
        "tokens": {"unshared": int(unshared["attention_mask"].numel()), "shared": int(shared["input_ids"].numel())},
        "attention_scores": {
            "unshared": int(unshared["input_ids"].size(0) * unshared["input_ids"].size(1) ** 2),
            "shared": int(shared["input_ids"].size(0) * shared["input_ids"].size(1) ** 2),
        },
    }
    for path in ("unshared", "shared"):
        median = statistics.median(times[path])
        row[path] = {
            "median_s": round(median, 4),
            "min_s": round(min(times[path]), 4),
            "times_s": [round(t, 4) for t in times[path]],
            "completions_per_s": round(num / median, 3),
            **measure_rss(attn_implementation, shape, path),
        }
    row["speedup"] = round(row["shared"]["completions_per_s"] / row["unshared"]["completions_per_s"], 3)
    row["speedup_min"] = round(row["unshared"]["min_s"] / row["shared"]["min_s"], 3)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(peak_rss_mib(*args.rss_child)))
        return

    rows = []
    header = f"{'attn':6} {'shape':14} {'tokens u/s':>12} {'unshared s':>10} {'shared s':>9} {'speedup':>8} {'(min)':>6} {'RSS Δ MiB u/s':>15}"
    print(header)
    for attn_implementation in args.attn:
        for shape in args.shapes:
            row = benchmark(attn_implementation, shape, args.repeats)
            rows.append(row)
            u, s = row["unshared"], row["shared"]
            print(
                f"{attn_implementation:6} {shape:14} {row['tokens']['unshared']:>6}/{row['tokens']['shared']:<5} "
                f"{u['median_s']:>10.3f} {s['median_s']:>9.3f} {row['speedup']:>7.2f}x {row['speedup_min']:>5.2f}x "
                f"{u['peak_rss_delta_mib']:>7.0f}/{s['peak_rss_delta_mib']:<7.0f}",
                flush=True,
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "model": MODEL,
        "repeats": args.repeats,
    }
    RESULTS.write_text(json.dumps({"environment": environment, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
