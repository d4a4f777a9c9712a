"""Micro-benchmark: forward + backward of the shared-prompt forward against the unshared one (not a test).

A random-weight Qwen2 (hidden 256, 4 layers, 4 heads / 2 KV heads, vocabulary 8192) with TRL's fused LM head, batch
2, three paths over the same completions, each handing the LM head the completion tokens only
([`trl_rankalign.forward.scored_positions`]), so they differ in the rows and the attention alone:

- `unshared`: K rows `[prompt + completion_k]` per prompt (the default forward; TRL's DPOTrainer runs these rows);
- `dense`: the previous shared-prompt forward, kept here for comparison only: one packed row per prompt under a dense
  `(B, 1, L, L)` block mask (SDPA cannot use its causal fast path; eager materialises it);
- `shared`: the shared-prompt forward of this package ([`listwise_forward`] through the registered shared-prompt
  attention: prefix causal, each branch over [prefix ; itself]).

Shapes (`--shapes`): TL;DR-like (prompt 512, completions 48), UltraFeedback-like (prompt 150, completions 300), each with
K = 4 (`tldr`, `ultrafeedback`) and K = 8 (`tldr_k8`, `ultrafeedback_k8`); and, for the auto mode's threshold, short
prompts with long completions (`sweep_*`). For each attention implementation (`sdpa`, `eager`) and shape the paths
alternate (one warm-up each, then `--repeats` rounds; median and minimum). Attention work is counted as the query-key
score entries each path computes per head and layer (causal kernels skip the upper triangle: half of a square;
masked calls compute every entry), and as forward attention GFLOPs (`4 · entries · head_dim · heads · layers`). Each
path's peak resident memory is measured in a fresh subprocess (RSS sampled every millisecond during one forward +
backward, minus the RSS before it). Writes `benchmarks/results/shared_prompt_micro.json`.

    python benchmarks/shared_prompt_micro.py [--repeats 5] [--attn sdpa eager] [--shapes tldr ultrafeedback]
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


SHAPES = {  # prompt length, completion length, K
    "tldr": (512, 48, 4),
    "ultrafeedback": (150, 300, 4),
    "tldr_k8": (512, 48, 8),
    "ultrafeedback_k8": (150, 300, 8),
    "sweep_p16_l300_k2": (16, 300, 2),
    "sweep_p32_l300_k2": (32, 300, 2),
    "sweep_p64_l300_k2": (64, 300, 2),
    "sweep_p64_l300_k4": (64, 300, 4),
    "sweep_p128_l300_k2": (128, 300, 2),
}
DEFAULT_SHAPES = ["tldr", "ultrafeedback", "tldr_k8", "ultrafeedback_k8"]
PATHS = ("unshared", "dense", "shared")
BATCH_SIZE = 2
MODEL = {
    "vocab_size": 8192,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
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
    prompt_length, completion_length, num_completions = SHAPES[shape]

    def tokens(n):
        return [rng.randrange(1, MODEL["vocab_size"]) for _ in range(n)]

    examples = [
        {
            "prompt_ids": tokens(prompt_length),
            "completion_ids": [tokens(completion_length) for _ in range(num_completions)],
            "scores": [float(num_completions - k) for k in range(num_completions)],
        }
        for _ in range(BATCH_SIZE)
    ]
    unshared = DataCollatorForRankedPreference(pad_token_id=0)(examples)
    shared = pack_shared_prompt(examples, pad_token_id=0)
    return model, unshared, shared


def unshared_logps(model, batch):
    """The default forward: K rows per prompt (the LM head scores the completion tokens only, as on every path)."""
    from trl_rankalign.forward import listwise_forward

    return listwise_forward(model, batch).logps.T.reshape(-1)  # (K * B,)


def dense_mask(batch, attn_implementation: str) -> torch.Tensor:
    """The previous forward's `(B, 1, L, L)` block mask: key j <= query i, of the prefix or of the query's branch."""
    segment_ids = batch["segment_ids"]
    index = torch.arange(segment_ids.size(1))
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = ((index[None, :] <= index[:, None]) & ((key == 0) | (key == query)))[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def dense_logps(model, batch, attn_implementation: str):
    """The previous shared-prompt forward: the packed rows under the dense mask (the model's own attention); the LM
    head scores the completion tokens only, as on the other paths."""
    from trl_rankalign.forward import scored_positions

    num_completions = batch["list_mask"].size(1)
    rows = torch.arange(num_completions * BATCH_SIZE) % BATCH_SIZE
    positions, mask = (
        batch[name].transpose(0, 1).flatten(0, 1) for name in ("completion_positions", "completion_mask")
    )  # (K * B, T), completion-major
    valid = mask.bool()
    length = batch["input_ids"].size(1)
    scored = (rows[:, None] * length + positions)[valid]
    with scored_positions(model, scored, length):
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=dense_mask(batch, attn_implementation),
            position_ids=batch["position_ids"],
            shift_labels=batch["shift_labels"].reshape(-1)[scored][None],
            fused_lm_head=True,
            use_cache=False,
        )
    per_token = outputs.log_probs.new_zeros(valid.shape).masked_scatter(valid, outputs.log_probs[0])
    return per_token.sum(1)


def shared_logps(model, batch):
    from trl_rankalign.forward import listwise_forward

    return listwise_forward(model, batch).logps.T.reshape(-1)


def step(path: str, model, batches, attn_implementation: str) -> None:
    unshared, shared = batches
    if path == "unshared":
        logps = unshared_logps(model, unshared)
    elif path == "dense":
        logps = dense_logps(model, shared, attn_implementation)
    else:
        logps = shared_logps(model, shared)
    logps.sum().backward()


def timed(path, model, batches, attn_implementation) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    step(path, model, batches, attn_implementation)
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib(attn_implementation: str, shape: str, path: str) -> dict:
    """Run one forward + backward of `path` in this (fresh) process, sampling its RSS every millisecond (MiB)."""
    model, unshared, shared = build(attn_implementation, shape)
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step(path, model, (unshared, shared), attn_implementation)
    done.set()
    sampler.join()
    peak = max(peak[0], _rss_mib())
    return {"peak_rss_mib": round(peak, 1), "peak_rss_delta_mib": round(peak - before, 1)}


def measure_rss(attn_implementation: str, shape: str, path: str) -> dict:
    command = [sys.executable, __file__, "--rss-child", attn_implementation, shape, path]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def attention_entries(unshared, shared, attn_implementation: str) -> dict[str, int]:
    """Query-key score entries per head and layer: causal sdpa calls skip the upper triangle, masked calls do not."""
    from trl_rankalign.shared_prompt_attention import SharedPromptLayout

    causal = 0.5 if attn_implementation == "sdpa" else 1.0
    rows, row_length = unshared["input_ids"].shape
    layout = SharedPromptLayout(shared["segment_ids"], shared["position_ids"])
    prefix, longest, branches = layout.max_prefix, layout.max_branch, layout.num_branches
    return {
        "unshared": int(rows * row_length**2 * causal),
        "dense": int(shared["input_ids"].numel() * shared["input_ids"].size(1)),
        "shared": int(BATCH_SIZE * prefix**2 * causal + branches * longest * (prefix + longest)),
    }


def benchmark(attn_implementation: str, shape: str, repeats: int) -> dict:
    model, unshared, shared = build(attn_implementation, shape)
    batches = (unshared, shared)
    with torch.no_grad():  # the three paths agree before they are timed
        reference = unshared_logps(model, unshared)
        max_abs_diff = {
            "dense": (dense_logps(model, shared, attn_implementation) - reference).abs().max().item(),
            "shared": (shared_logps(model, shared) - reference).abs().max().item(),
        }
    for path in PATHS:  # warm-up
        timed(path, model, batches, attn_implementation)
    times = {path: [] for path in PATHS}
    for round_ in range(repeats):
        order = PATHS if round_ % 2 == 0 else tuple(reversed(PATHS))
        for path in order:
            times[path].append(timed(path, model, batches, attn_implementation))
    prompt_length, completion_length, num_completions = SHAPES[shape]
    num = BATCH_SIZE * num_completions
    entries = attention_entries(unshared, shared, attn_implementation)
    heads, layers = MODEL["num_attention_heads"], MODEL["num_hidden_layers"]
    head_dim = MODEL["hidden_size"] // heads
    row = {
        "attn_implementation": attn_implementation,
        "shape": shape,
        "prompt_length": prompt_length,
        "completion_length": completion_length,
        "num_completions": num_completions,
        "batch_size": BATCH_SIZE,
        "max_abs_logp_diff": max_abs_diff,
        "tokens": {
            "unshared": int(unshared["attention_mask"].sum()),
            "shared": int(shared["padding_mask"].sum()),
        },
        "attention_score_entries": entries,
        "attention_gflops_forward": {
            path: round(4 * count * head_dim * heads * layers / 1e9, 3) for path, count in entries.items()
        },
    }
    for path in PATHS:
        median = statistics.median(times[path])
        row[path] = {
            "median_s": round(median, 4),
            "min_s": round(min(times[path]), 4),
            "times_s": [round(t, 4) for t in times[path]],
            "completions_per_s": round(num / median, 3),
            **measure_rss(attn_implementation, shape, path),
        }
    for path in ("dense", "shared"):
        row[f"speedup_{path}"] = round(row["unshared"]["median_s"] / row[path]["median_s"], 3)
        row[f"speedup_{path}_min"] = round(row["unshared"]["min_s"] / row[path]["min_s"], 3)
        # Paired: the rounds ran back to back, so the median of their ratios cancels most of a shared box's drift
        row[f"speedup_{path}_paired"] = round(
            statistics.median(u / s for u, s in zip(times["unshared"], times[path])), 3
        )
    row["shared_vs_dense"] = round(row["dense"]["median_s"] / row["shared"]["median_s"], 3)
    row["token_saving"] = round(1 - row["tokens"]["shared"] / row["tokens"]["unshared"], 3)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(peak_rss_mib(*args.rss_child)))
        return

    rows = []
    print(
        f"{'attn':6} {'shape':20} {'saving':>6} {'unshared s':>10} {'dense':>13} {'shared':>13} {'paired':>6} "
        f"{'attn GFLOP u/d/s':>18} {'RSS Δ MiB u/d/s':>16}"
    )
    for attn_implementation in args.attn:
        for shape in args.shapes:
            row = benchmark(attn_implementation, shape, args.repeats)
            rows.append(row)
            u, d, s = (row[path] for path in PATHS)
            flops = row["attention_gflops_forward"]
            print(
                f"{attn_implementation:6} {shape:20} {row['token_saving']:>6.0%} {u['median_s']:>10.3f} "
                f"{d['median_s']:>6.3f} {row['speedup_dense']:>5.2f}x {s['median_s']:>6.3f} "
                f"{row['speedup_shared']:>5.2f}x {row['speedup_shared_paired']:>5.2f}x "
                f"{flops['unshared']:>5.1f}/{flops['dense']:>5.1f}/{flops['shared']:>5.1f} "
                f"{u['peak_rss_delta_mib']:>5.0f}/{d['peak_rss_delta_mib']:>4.0f}/{s['peak_rss_delta_mib']:<5.0f}",
                flush=True,
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "model": MODEL,
        "repeats": args.repeats,
        "command": " ".join(["python", "benchmarks/shared_prompt_micro.py", *sys.argv[1:]]),
    }
    args.output.write_text(json.dumps({"environment": environment, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
