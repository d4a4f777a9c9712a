"""GPU benchmark: RankDPO K=4 in bf16 vs TRL's DPOTrainer on the same completions, on one GPU (not run by the tests).

    python benchmarks/gpu.py             # ~0.5B and ~1.5B Qwen2-shaped models, TL;DR and UltraFeedback shapes
    python benchmarks/gpu.py --quick     # the ~0.5B model only
    python benchmarks/gpu.py --flex      # add the shared path over FlexAttention (compiles: a minute or two more)

No hub: both models are Qwen2.5-0.5B / -1.5B shaped configs (hidden 896 / 1536, 24 / 28 layers, 14 / 12 heads, 2 KV
heads, MLP 4864 / 8960, vocabulary 151936, tied embeddings) with random weights, saved once to a temporary folder and
loaded by every trainer in bf16 (`model_init_kwargs`), policy and reference (reference forward every step). Data are
random words through a word-level tokenizer, so every completion has exactly the shape's token counts.

For each model and shape ("tldr": prompt 512 + completions 48; "ultrafeedback": 150 + 300), with K = 4 and
`--lists-per-step` lists (default 8, i.e. 32 completions per optimizer step), it trains `--warmup` + `--steps` steps of:
- TRL `DPOTrainer` on the 2 disjoint pairs of each list (y1 > y2, y3 > y4: the same 32 completions), with sdpa and with
  flash-attention-2 when `flash_attn` is installed;
- `RankDPOTrainer` with `shared_prompt_forward=True` (each prompt encoded once for its 4 completions) over sdpa,
  flash-attention-2 when installed, and FlexAttention with `--flex`.
and reports completions/s, the ratio to DPO (same attention), MFU and peak GPU memory (`max_memory_allocated`). MFU is
model FLOPs per second over the GPU's bf16 dense peak (`--peak-tflops`, default 989 for an H200/H100 SXM): 8 x the
transformer blocks' parameters per token forwarded (6 for the policy's forward and backward, 2 for the reference's
forward), plus the LM head on the scored tokens and the attention score work, counted on the tokens each trainer
actually forwards (so the shared path's MFU does not credit it for the prompt copies it skips); "effective MFU" counts
DPO's tokens for both, i.e. throughput in units of the unshared work. Writes `benchmarks/results/gpu.json` and prints a
table. Each configuration runs in this process one after the other (memory freed in between).
"""

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import build_tokenizer, make_rows, to_pairs  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
SHAPES = {"tldr": (512, 48), "ultrafeedback": (150, 300)}
MODELS = {
    "qwen2-0.5b": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
    ),
    "qwen2-1.5b": dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
    ),
    # `--smoke`: checks this script end to end on a CPU in a minute (fp32, figures meaningless)
    "smoke": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    ),
}
VOCAB_SIZE = 151936
NUM_COMPLETIONS = 4


def build_model(name: str, path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    vocab_size = 4096 if name == "smoke" else VOCAB_SIZE
    config = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        **MODELS[name],
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    model.save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"block_params": blocks, "head_params": vocab_size * MODELS[name]["hidden_size"]}


def flash_attention_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def run(spec: dict, model_path: str, params: dict, args) -> dict:
    """Train one configuration; time each optimizer step with a callback (CUDA-synchronised)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_rankalign import RankDPOConfig, RankDPOTrainer

    prompt_len, completion_len = SHAPES[spec["shape"]]
    total_steps = args.warmup + args.steps
    rows = make_rows(args.lists_per_step * total_steps, NUM_COMPLETIONS, prompt_len, completion_len)
    tokenizer = build_tokenizer()

    cuda = torch.cuda.is_available()
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *_, **__):
            synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        common = dict(
            output_dir=out,
            bf16=cuda,
            use_cpu=not cuda,
            max_steps=total_steps,
            learning_rate=1e-6,
            beta=0.1,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            seed=0,
            model_init_kwargs={
                "dtype": torch.bfloat16 if cuda else torch.float32,
                "attn_implementation": spec["attention"],
            },
        )
        if spec["trainer"] == "dpo":
            trainer_args = DPOConfig(per_device_train_batch_size=args.lists_per_step * NUM_COMPLETIONS // 2, **common)
            trainer = DPOTrainer(
                model=model_path,
                args=trainer_args,
                train_dataset=Dataset.from_list(to_pairs(rows)),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        else:
            trainer_args = RankDPOConfig(
                per_device_train_batch_size=args.lists_per_step, shared_prompt_forward=True, **common
            )
            trainer = RankDPOTrainer(
                model=model_path,
                args=trainer_args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        trainer.train()
        del trainer
    gc.collect()
    step_time = statistics.median(timer.times[args.warmup :])
    completions = args.lists_per_step * NUM_COMPLETIONS
    # Tokens forwarded per step (policy and reference each): DPO K rows of prompt + completion + EOS, the shared path
    # one packed row per list of prompt - 1 + K (completion + EOS); scored tokens are the completions' in both
    unshared_tokens = completions * (prompt_len + completion_len + 1)
    shared_tokens = args.lists_per_step * (prompt_len - 1 + NUM_COMPLETIONS * (completion_len + 1))
    tokens = unshared_tokens if spec["trainer"] == "dpo" else shared_tokens
    scored = completions * (completion_len + 1)
    config = MODELS[spec["model"]]
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    branch = completion_len + 1
    entries = {  # attention score entries per step (causal kernels: half a square)
        "dpo": completions * (prompt_len + branch) ** 2 / 2,
        "rankdpo_shared": args.lists_per_step
        * ((prompt_len - 1) ** 2 / 2 + NUM_COMPLETIONS * branch * (prompt_len - 1 + branch)),
    }

    def flops(forwarded: int, score_entries: float) -> float:
        """Policy forward + backward (3 forwards) and reference forward: 4 forwards of the tokens forwarded."""
        forward = 2 * params["block_params"] * forwarded + 2 * params["head_params"] * scored
        forward += 4 * score_entries * hidden * layers  # QK^T and PV, 2 FLOPs per multiply-add
        return 4 * forward

    peak = args.peak_tflops * 1e12
    return {
        **spec,
        "step_time_s": step_time,
        "step_times_s": timer.times,
        "completions_per_s": completions / step_time,
        "tokens_forwarded_per_step": tokens,
        "mfu": flops(tokens, entries[spec["trainer"]]) / step_time / peak,
        "effective_mfu": flops(unshared_tokens, entries["dpo"]) / step_time / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | shape | trainer | attention | step (s) | completions/s | vs DPO | MFU | effective MFU | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        same = (r["model"], r["shape"])
        dpos = {d["attention"]: d for d in results if d["trainer"] == "dpo" and (d["model"], d["shape"]) == same}
        dpo = dpos.get(r["attention"], dpos.get("sdpa"))
        ratio = f"{r['completions_per_s'] / dpo['completions_per_s']:.2f}×" if dpo else "—"
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['trainer']} | {r['attention']} | {r['step_time_s']:.3f} "
            f"| {r['completions_per_s']:.1f} | {ratio} | {r['mfu']:.1%} | {r['effective_mfu']:.1%} "
            f"| {r['peak_memory_gib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the ~0.5B model only")
    parser.add_argument("--flex", action="store_true", help="also the shared path over FlexAttention")
    parser.add_argument("--lists-per-step", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 1 shape, 1 step: checks the script on CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lists_per_step, args.warmup, args.steps = 2, 1, 1
        args.output = args.output.with_name("gpu_smoke.json")
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device (or --smoke).", file=sys.stderr)
        return 1

    attentions = ["sdpa"] + (["flash_attention_2"] if flash_attention_installed() else [])
    shared_attentions = attentions + (["flex_attention"] if args.flex else [])
    models = ["smoke"] if args.smoke else ["qwen2-0.5b"] if args.quick else ["qwen2-0.5b", "qwen2-1.5b"]
    started, results = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            model_path = str(Path(tmp) / model)
            params = build_model(model, model_path)
            for shape in ["tldr"] if args.smoke else SHAPES:
                specs = [dict(trainer="dpo", attention=a) for a in attentions]
                specs += [dict(trainer="rankdpo_shared", attention=a) for a in shared_attentions]
                for spec in specs:
                    spec = dict(spec, model=model, shape=shape)
                    result = run(spec, model_path, params, args)
                    results.append(result)
                    print(
                        f"[gpu] {model} {shape} {spec['trainer']:15s} {spec['attention']:17s} "
                        f"{result['completions_per_s']:7.1f} completions/s  MFU {result['mfu']:.1%}  "
                        f"peak {result['peak_memory_gib']:.1f} GiB  ({time.time() - started:.0f}s)",
                        flush=True,
                    )
    environment = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "flash_attn_2": flash_attention_installed(),
        "lists_per_step": args.lists_per_step,
        "num_completions": NUM_COMPLETIONS,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "peak_tflops": args.peak_tflops,
        "seconds": round(time.time() - started, 1),
        "command": " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"environment": environment, "results": results}, indent=1) + "\n")
    print(table(results))
    print(f"[gpu] done in {time.time() - started:.0f}s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
