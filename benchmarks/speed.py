"""Speed and memory benchmark: RankDPOTrainer on ranked lists vs TRL's DPOTrainer on pairs of the same completions.

    python benchmarks/speed.py            # 2 shapes x (K=2, 4, 8) x 3 trainers x 5 alternating runs (~20 min, 2 cores)
    python benchmarks/speed.py --quick    # TL;DR shape, K=2 and 4, 3 runs each
    python benchmarks/speed.py --shapes ultrafeedback --ks 4 --runs 3

Setting (CPU, fp32, no gradient checkpointing):
- model: a randomly initialised Qwen2 (hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 512, vocabulary 2048 + 2,
  ~2.9M parameters), sdpa attention, saved once to a temporary folder; both trainers load policy and reference from it
  and run the reference forward every step (no precomputation).
- tokens: random word ids through a word-level tokenizer (`w17` is token 17), so the text both trainers tokenise is
  exactly `prompt_len` prompt tokens and `completion_len` completion tokens (+ EOS) per completion.
- shapes: "tldr" (prompt 512, completions 48) and "ultrafeedback" (prompt 150, completions 300).
- comparisons, each with the same completions per optimizer step:
  `K=2`: B lists of 2 (RankDPO) vs the same B pairs (DPO);
  `K=4` (`K=8`): B lists of K vs K/2·B pairs holding the same completions, (y1 > y2), (y3 > y4), … of each list:
  every completion appears once, so both trainers push the same K·B sequences through policy and reference. (All
  C(K,2) pairs would process K-1 times the sequences for the same completions; per-completion throughput covers that.)
- timing: `trainer.train()` for `warmup + steps` optimizer steps (default 2 + 6) with a callback timing each step (dataloader,
  collation, policy and reference forwards, backward, optimizer step: the trainers' real path); a run's step time is
  the median of its timed steps. Each run is a fresh subprocess, whose peak RSS (`ru_maxrss`) is reported, and per
  completion: (peak RSS - RSS before the trainer was built) / completions per step. Runs alternate DPO / RankDPO /
  RankDPO with `shared_prompt_forward=True` (each prompt encoded once for its K completions, through the shared-prompt
  attention); figures are medians over runs, ratios are relative to DPO's medians, and "paired" is the median of the
  step-time ratios of runs made back to back.

Writes `results/speed.json` (every run and the medians) and `results/speed.png`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, cpu_trainer_kwargs, peak_rss_mib, write_json  # noqa: E402


SHAPES = {"tldr": (512, 48), "ultrafeedback": (150, 300)}
TRAINERS = {"dpo": "TRL DPOTrainer (pairs)", "rankdpo": "RankDPO", "rankdpo_shared": "RankDPO, shared prompt"}
MODEL = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
VOCAB = 2048
PAD, EOS = "<pad>", "<eos>"


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, **{f"w{i}": i + 2 for i in range(VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, model_max_length=4096)


def build_model(path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=VOCAB + 2, pad_token_id=0, eos_token_id=1, bos_token_id=None, **MODEL)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)


def make_rows(num_rows: int, k: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    """Ranked rows of random words: prompt of `prompt_len` words, K completions of `completion_len` words."""
    import random

    rng = random.Random(seed)

    def words(n):
        return " ".join(f"w{rng.randrange(VOCAB)}" for _ in range(n))

    return [
        {
            "prompt": words(prompt_len),
            "completions": [" " + words(completion_len) for _ in range(k)],
            "scores": [float(k - i) for i in range(k)],
        }
        for _ in range(num_rows)
    ]


def to_pairs(rows: list[dict]) -> list[dict]:
    """Disjoint pairs (y1 > y2), (y3 > y4), ...: every completion of each (sorted) list appears exactly once."""
    return [
        {"prompt": r["prompt"], "chosen": r["completions"][i], "rejected": r["completions"][i + 1]}
        for r in rows
        for i in range(0, len(r["completions"]) - 1, 2)
    ]


# ------------------------------------------------------------------------------------------------------ worker
def worker(spec: dict) -> dict:
    """One run in this (fresh) process: build one trainer, train warmup + steps steps, time each step."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    prompt_len, completion_len = SHAPES[spec["shape"]]
    k, lists_per_step = spec["k"], spec["lists_per_step"]
    total_steps = spec["warmup"] + spec["steps"]
    rows = make_rows(lists_per_step * total_steps, k, prompt_len, completion_len)
    tokenizer = build_tokenizer()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    rss_before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as out:
        common = cpu_trainer_kwargs(out, max_steps=total_steps, learning_rate=1e-5, seed=0, beta=0.1)
        if spec["trainer"] == "dpo":
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(per_device_train_batch_size=lists_per_step * k // 2, **common)
            trainer = DPOTrainer(
                model=spec["model"],
                args=args,
                train_dataset=Dataset.from_list(to_pairs(rows)),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        else:
            from trl_rankalign import RankDPOConfig, RankDPOTrainer

            # "rankdpo": one row per (prompt, completion); "rankdpo_shared": each prompt encoded once for its K
            args = RankDPOConfig(
                per_device_train_batch_size=lists_per_step,
                shared_prompt_forward=spec["trainer"] == "rankdpo_shared",
                **common,
            )
            trainer = RankDPOTrainer(
                model=spec["model"],
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        trainer.train()
    step_time = statistics.median(timer.times[spec["warmup"] :])
    completions = lists_per_step * k
    # Both batches hold B*K sequences of prompt + completion + EOS: the lists repeat their prompt once per completion
    # (completion-major, like TRL's [chosen; rejected]), the pairs once per chosen/rejected.
    tokens = completions * (prompt_len + completion_len + 1)
    return {
        **{key: spec[key] for key in ("trainer", "shape", "k", "run")},
        "step_time_s": step_time,
        "step_times_s": timer.times,
        "completions_per_s": completions / step_time,
        "tokens_per_s": tokens / step_time,
        "tokens_per_step": tokens,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_trainer_mib": rss_before,
        "peak_rss_per_completion_mib": (peak_rss_mib() - rss_before) / completions,
    }


# ---------------------------------------------------------------------------------------------------- driver
def run_one(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}) for {spec}:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _ratios(runs: list[dict], entry: dict, shape: str, k: int, trainer: str) -> dict:
    """`trainer` relative to TRL's DPOTrainer: medians, and the median and range of back-to-back step-time ratios."""
    paired = [
        d["step_time_s"] / r["step_time_s"]
        for d in runs
        for r in runs
        if d["shape"] == r["shape"] == shape
        and d["k"] == r["k"] == k
        and d["run"] == r["run"]
        and d["trainer"] == "dpo"
        and r["trainer"] == trainer
    ]
    return {
        "speed (DPO step time / step time)": entry["dpo"]["step_time_s"] / entry[trainer]["step_time_s"],
        "completions_per_s": entry[trainer]["completions_per_s"] / entry["dpo"]["completions_per_s"],
        "tokens_per_s": entry[trainer]["tokens_per_s"] / entry["dpo"]["tokens_per_s"],
        "peak_rss": entry[trainer]["peak_rss_mib"] / entry["dpo"]["peak_rss_mib"],
        "peak_rss_per_completion": entry[trainer]["peak_rss_per_completion_mib"]
        / entry["dpo"]["peak_rss_per_completion_mib"],
        # Runs i of both trainers ran back to back: the median of their ratios cancels most of a shared box's drift
        "paired_speed_median": statistics.median(paired),
        "paired_speed_range": [min(paired), max(paired)],
    }


def summarize(runs: list[dict]) -> list[dict]:
    summary = []
    for shape in dict.fromkeys(r["shape"] for r in runs):
        for k in dict.fromkeys(r["k"] for r in runs if r["shape"] == shape):
            entry = {"shape": shape, "k": k, "prompt_len": SHAPES[shape][0], "completion_len": SHAPES[shape][1]}
            trainers = [t for t in TRAINERS if any(r["trainer"] == t for r in runs)]
            for trainer in trainers:
                mine = [r for r in runs if r["shape"] == shape and r["k"] == k and r["trainer"] == trainer]
                entry[trainer] = {
                    key: statistics.median(r[key] for r in mine)
                    for key in (
                        "step_time_s",
                        "completions_per_s",
                        "tokens_per_s",
                        "peak_rss_mib",
                        "peak_rss_per_completion_mib",
                    )
                }
                entry[trainer]["runs"] = len(mine)
            entry["ratio"] = {t: _ratios(runs, entry, shape, k, t) for t in trainers if t != "dpo"}
            summary.append(entry)
    return summary


def table(summary: list[dict], lists_per_step: int) -> str:
    lines = [
        "| shape | K | comparison | trainer | step (s) | completions/s | vs TRL DPO (paired: median, range) | peak RSS MiB "
        "| RSS MiB per completion (vs DPO) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary:
        b = lists_per_step
        comparison = f"{b} list{'s' * (b > 1)} of {e['k']} vs {b * e['k'] // 2} pair{'s' * (b * e['k'] > 2)}"
        for trainer in [t for t in TRAINERS if t in e]:
            m = e[trainer]
            if trainer == "dpo":
                speed, rss = "1.00×", ""
            else:
                ratio = e["ratio"][trainer]
                low, high = ratio["paired_speed_range"]
                speed = (
                    f"{ratio['completions_per_s']:.2f}× ({ratio['paired_speed_median']:.2f}×, {low:.2f}–{high:.2f})"
                )
                rss = f" ({ratio['peak_rss_per_completion']:.2f}×)"
            lines.append(
                f"| {e['shape']} ({e['prompt_len']}+{e['completion_len']}) | {e['k']} | {comparison} "
                f"| {TRAINERS[trainer]} | {m['step_time_s']:.2f} | {m['completions_per_s']:.2f} | {speed} "
                f"| {m['peak_rss_mib']:.0f} | {m['peak_rss_per_completion_mib']:.0f}{rss} |"
            )
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {"tldr": "TL;DR", "ultrafeedback": "UltraFb."}
    labels = [f"{short.get(e['shape'], e['shape'])}\nK={e['k']}" for e in summary]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(summary))
    trainers = [t for t in TRAINERS if t in summary[0]]
    width = 0.8 / len(trainers)
    for j, trainer in enumerate(trainers):
        offsets = [i + (j - (len(trainers) - 1) / 2) * width for i in x]
        axes[0].bar(offsets, [e[trainer]["completions_per_s"] for e in summary], width, label=TRAINERS[trainer])
        axes[1].bar(
            offsets, [e[trainer]["peak_rss_per_completion_mib"] for e in summary], width, label=TRAINERS[trainer]
        )
        if trainer != "dpo":
            for i, e in zip(offsets, summary):
                ratio = e["ratio"][trainer]["completions_per_s"]
                axes[0].annotate(
                    f"{ratio:.2f}×", (i, e[trainer]["completions_per_s"]), ha="center", va="bottom", fontsize=7
                )
    axes[0].set_ylabel("completions / s (median)")
    axes[0].set_title("Training throughput, same completions per step")
    axes[1].set_ylabel("peak RSS growth per completion (MiB, median)")
    axes[1].set_title("Peak memory per completion")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="TL;DR shape, K=2 and 4, 3 runs per trainer")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None, help="default: both")
    parser.add_argument("--ks", nargs="+", type=int, default=None, help="list sizes K (default 2 4 8; quick 2 4)")
    parser.add_argument("--runs", type=int, default=None, help="runs per trainer and setting (default 5, quick 3)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per run")
    parser.add_argument("--lists-per-step", type=int, default=1, help="B: ranked lists per optimizer step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: the box is shared)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--summarize", action="store_true", help="re-summarize the runs stored in speed.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    if args.summarize:
        stored = json.loads((args.output_dir / "speed.json").read_text())
        summary = summarize(stored["runs"])
        write_json(args.output_dir / "speed.json", {**stored, "summary": summary})
        plot(summary, args.output_dir / "speed.png")
        print(table(summary, stored["settings"]["lists_per_step"]))
        return 0

    runs_per = args.runs or (3 if args.quick else 5)
    shapes = args.shapes or (["tldr"] if args.quick else list(SHAPES))
    ks = args.ks or ([2, 4] if args.quick else [2, 4, 8])
    started = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "model")
        build_model(model_path)
        for shape in shapes:
            for k in ks:
                for run in range(runs_per):
                    order = tuple(TRAINERS) if run % 2 == 0 else tuple(reversed(TRAINERS))  # alternate who goes first
                    for trainer in order:
                        spec = dict(
                            trainer=trainer,
                            shape=shape,
                            k=k,
                            run=run,
                            model=model_path,
                            lists_per_step=args.lists_per_step,
                            warmup=args.warmup,
                            steps=args.steps,
                            threads=args.threads,
                        )
                        result = run_one(spec)
                        runs.append(result)
                        print(
                            f"[speed] {shape} K={k} run {run} {trainer:8s} step {result['step_time_s']:.3f}s "
                            f"rss {result['peak_rss_mib']:.0f} MiB ({time.time() - started:.0f}s)",
                            flush=True,
                        )
    summary = summarize(runs)
    settings = {
        "model": MODEL | {"vocab_size": VOCAB + 2},
        "lists_per_step": args.lists_per_step,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "runs_per_trainer": runs_per,
        "threads": args.threads,
        "seconds": round(time.time() - started, 1),
        "command": " ".join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(args.output_dir / "speed.json", {"settings": settings, "summary": summary, "runs": runs})
    plot(summary, args.output_dir / "speed.png")
    print(table(summary, args.lists_per_step))
    print(f"[speed] done in {time.time() - started:.0f}s -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
