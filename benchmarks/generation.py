"""Sampling speed: the transformers backend (each prompt prefilled once) against `model.generate(num_return_sequences=n)`.

A random-weight Qwen2 (hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 1024) with the embedded tiny tokenizer samples
`n` completions for each of 4 prompts, in two shapes: TL;DR-like (prompt ~512 tokens, 48 new tokens) and short
prompts (~32 tokens, 48 new tokens), n = 8 and 64. Every sample is exactly 48 tokens (`min_new_tokens`), so every path
does the same work. Paths, all through `trl_rankalign.sampling.generation.TransformersBackend` with the same seed:

- `generate`: `model.generate(num_return_sequences=n)`, which prefills every prompt n times (what every command ran);
- `prefill_once_dynamic`: each prompt prefilled once, its `DynamicCache` repeated for the n samples
  (`batch_repeat_interleave`), `generate` continuing from it;
- `prefill_once`: the backend's default: the same, with the repeated cache in a `StaticCache` (no per-step
  concatenation of a growing cache);
- `generate_batch`: transformers' continuous batching, which forks each prompt's paged cache for its n samples
  (one run: it is much slower on this CPU; its cache is sized for the workload instead of most of the free memory).

The prefill-once limit is the speed-up that removing the n-1 extra prefills alone would give, computed from measured
costs: `(prefill(B*n) + decode) / (prefill(B) + decode)`, with `prefill(k)` one forward of k prompts and `decode` the
n*B samples' 48 steps from an already repeated `DynamicCache` (what `generate` does after its prefill). The goal is a
speed-up of at least 0.8 x that limit. Paths alternate in each of `--repeats` rounds (after one warm-up round); the
JSON keeps every time, the minimum and median, and the load average before and after (the machine may be shared).

    python benchmarks/generation.py [--repeats 3] [--threads 1] [--shapes tldr short] [--samples 8 64]

Writes `benchmarks/results/generation.json`.
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


RESULTS = Path(__file__).parent / "results" / "generation.json"
SHAPES = {"tldr": (512, 48), "short": (32, 48)}  # prompt tokens, new tokens
NUM_PROMPTS = 4
MODEL = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
PATHS = ("generate", "prefill_once_dynamic", "prefill_once")


def build():
    from transformers import AutoModelForCausalLM, Qwen2Config

    from trl_rankalign.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **MODEL,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def make_prompts(tokenizer, length: int) -> list[str]:
    """NUM_PROMPTS texts of about `length` tokens: windows of the tiny corpus at different offsets."""
    from trl_rankalign.tiny import CORPUS_PATH

    tokenizer.model_max_length = 1 << 30  # the corpus is tokenized whole, then cut into windows
    ids = tokenizer(CORPUS_PATH.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i * 997 : i * 997 + length]) for i in range(NUM_PROMPTS)]


def generation_config(tokenizer, new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        min_new_tokens=new_tokens,  # every sample has the same length: every path does the same work
    )


def run_path(path: str, model, tokenizer, prompts, n: int, new_tokens: int) -> tuple[float, list]:
    from trl_rankalign.sampling.generation import TransformersBackend, sample_completions

    options = {"generate": dict(prefill_once=False), "prefill_once_dynamic": dict(static_cache=False)}.get(path, {})
    backend = TransformersBackend(
        batch_size=NUM_PROMPTS, generation_config=generation_config(tokenizer, new_tokens), **options
    )
    start = time.perf_counter()
    out = sample_completions(
        model, tokenizer, prompts, n, backend, temperature=1.0, max_new_tokens=new_tokens, seed=0, progress=False
    )
    return time.perf_counter() - start, out


@torch.no_grad()
def prefill_time(model, input_ids, attention_mask) -> float:
    from transformers import DynamicCache

    start = time.perf_counter()
    model(input_ids=input_ids, attention_mask=attention_mask, cache=DynamicCache(config=model.config), use_cache=True,
          logits_to_keep=1)  # fmt: skip
    return time.perf_counter() - start


@torch.no_grad()
def decode_time(model, tokenizer, input_ids, attention_mask, n: int, new_tokens: int) -> float:
    """generate's decoding of the B*n samples from an already prefilled and repeated `DynamicCache` (prefill untimed)."""
    from transformers import DynamicCache

    from trl_rankalign.sampling.generation import Decoding

    cache = DynamicCache(config=model.config)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=position_ids[:, :-1],
          cache=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
    cache.batch_repeat_interleave(n)
    config = Decoding(temperature=1.0, max_new_tokens=new_tokens).apply_to(generation_config(tokenizer, new_tokens))
    torch.manual_seed(0)
    start = time.perf_counter()
    model.generate(input_ids=input_ids.repeat_interleave(n, 0), attention_mask=attention_mask.repeat_interleave(n, 0),
                   cache=cache, generation_config=config)  # fmt: skip
    return time.perf_counter() - start


@torch.no_grad()
def generate_batch_time(model, tokenizer, input_ids, attention_mask, n: int, new_tokens: int) -> float:
    """transformers' continuous batching (`generate_batch`), which forks a prompt's cache for its n samples. Its paged
    cache is sized for this workload (left alone, it takes most of the free memory: this machine is shared)."""
    from transformers import ContinuousBatchingConfig

    config = generation_config(tokenizer, new_tokens)
    config.update(do_sample=True, temperature=1.0, max_new_tokens=new_tokens, num_return_sequences=n)
    inputs = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    page = 256
    # the prompts' full pages are shared by their samples (prefix sharing); each sample needs its own last page(s)
    blocks = len(inputs) * (input_ids.shape[1] // page) + len(inputs) * n * (-(-new_tokens // page) + 1)
    cb_config = ContinuousBatchingConfig(
        page_size=page, num_blocks=blocks, max_batch_tokens=1024, max_memory_percent=0.1
    )  # CPU attention uses dense [M, N + M] masks: M (batch tokens) bounds their size
    torch.manual_seed(0)
    start = time.perf_counter()
    results = model.generate_batch(
        inputs=inputs,
        generation_config=copy.deepcopy(config),
        continuous_batching_config=cb_config,
        progress_bar=False,
    )
    elapsed = time.perf_counter() - start
    if len(results) != len(inputs) * n:
        raise RuntimeError(f"generate_batch returned {len(results)} sequences, expected {len(inputs) * n}")
    return elapsed


def summary(times: list[float]) -> dict:
    return {"times_s": [round(t, 4) for t in times], "min_s": min(times), "median_s": statistics.median(times)}


def benchmark(model, tokenizer, shape: str, n: int, repeats: int, continuous_batching: bool) -> dict:
    length, new_tokens = SHAPES[shape]
    prompts = make_prompts(tokenizer, length)
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    samples = NUM_PROMPTS * n
    print(f"[{shape} n={n}] prompts of {mask.sum(1).tolist()} tokens, {samples} samples of {new_tokens} tokens")

    outputs = {p: run_path(p, model, tokenizer, prompts, n, new_tokens)[1] for p in PATHS}  # warm-up round
    identical = {p: outputs[p] == outputs["generate"] for p in PATHS}
    times = {p: [] for p in PATHS}
    prefill_one, prefill_all, decode = [], [], []
    for round_index in range(repeats):
        order = PATHS if round_index % 2 == 0 else tuple(reversed(PATHS))
        for p in order:
            times[p].append(run_path(p, model, tokenizer, prompts, n, new_tokens)[0])
        prefill_one.append(prefill_time(model, ids, mask))
        prefill_all.append(prefill_time(model, ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)))
        decode.append(decode_time(model, tokenizer, ids, mask, n, new_tokens))
        print(f"  round {round_index}: " + ", ".join(f"{p} {times[p][-1]:.2f}s" for p in PATHS), flush=True)

    p1, pn, d = (statistics.median(x) for x in (prefill_one, prefill_all, decode))
    limit = (pn + d) / (p1 + d)
    result = {
        "shape": shape,
        "prompt_tokens": mask.sum(1).tolist(),
        "new_tokens": new_tokens,
        "num_prompts": NUM_PROMPTS,
        "num_samples": n,
        "samples": samples,
        "prefill_one_s": summary(prefill_one),  # one forward of the B prompts
        "prefill_repeated_s": summary(prefill_all),  # one forward of the B*n repeated prompts (generate's prefill)
        "decode_s": summary(decode),  # B*n samples' decoding from a repeated DynamicCache
        "predicted_generate_s": pn + d,
        "prefill_once_limit": limit,
        "paths": {},
    }
    reference = statistics.median(times["generate"])
    for p in PATHS:
        median = statistics.median(times[p])
        result["paths"][p] = {
            **summary(times[p]),
            "samples_per_s": samples / median,
            "speedup_vs_generate": reference / median,
            "fraction_of_limit": reference / median / limit,
            "identical_to_generate": identical[p],
        }
    elapsed = None
    if continuous_batching:
        try:
            elapsed = generate_batch_time(model, tokenizer, ids, mask, n, new_tokens)
        except (MemoryError, RuntimeError, ValueError) as error:  # recorded, never fatal to the other figures
            result["paths"]["generate_batch"] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  generate_batch failed: {error}")
    if elapsed is not None:
        result["paths"]["generate_batch"] = {
            **summary([elapsed]),
            "samples_per_s": samples / elapsed,
            "speedup_vs_generate": reference / elapsed,
            "fraction_of_limit": reference / elapsed / limit,
            "identical_to_generate": None,  # its own sampler: other draws from the same distribution
        }
    print(
        f"  limit {limit:.2f}x; "
        + ", ".join(
            f"{p} {r['speedup_vs_generate']:.2f}x ({r['fraction_of_limit']:.2f} of limit)"
            for p, r in result["paths"].items()
            if "error" not in r
        )  # fmt: skip
    )
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| shape | n | generate samples/s | prefill-once samples/s | speed-up | limit | of limit | "
        "dynamic-cache prefill-once | generate_batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        paths = r["paths"]
        batch = paths.get("generate_batch")
        batch_text = f"{batch['speedup_vs_generate']:.2f}x" if batch and "error" not in batch else "not run"
        rows.append(
            f"| {r['shape']} (prompt {min(r['prompt_tokens'])}-{max(r['prompt_tokens'])}, {r['new_tokens']} new) "
            f"| {r['num_samples']} | {paths['generate']['samples_per_s']:.1f} "
            f"| {paths['prefill_once']['samples_per_s']:.1f} | {paths['prefill_once']['speedup_vs_generate']:.2f}x "
            f"| {r['prefill_once_limit']:.2f}x | {paths['prefill_once']['fraction_of_limit']:.2f} "
            f"| {paths['prefill_once_dynamic']['speedup_vs_generate']:.2f}x "
            f"| {batch_text} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--samples", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--no_continuous_batching", action="store_true", help="skip generate_batch (slow on CPU)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    model, tokenizer = build()
    load_before = os.getloadavg()
    started = time.time()
    results = [
        benchmark(model, tokenizer, shape, n, args.repeats, not args.no_continuous_batching)
        for shape in args.shapes
        for n in args.samples
    ]
    report = {
        "command": "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {"type": "qwen2", "vocab_size": len(tokenizer), **MODEL},
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "wall_s": round(time.time() - started, 1),
        },
        "repeats": args.repeats,
        "results": results,
        "table": table(results),
    }
    write_json(Path(args.output), report)
    print(report["table"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
