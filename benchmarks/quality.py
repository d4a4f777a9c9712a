"""Quality benchmark: the DPO paper's controlled generation (§6.1), rebuilt offline on the tiny review language.

    python benchmarks/quality.py            # full: K=4 and K=8, 3 betas x 3 seeds per method (~20 min, 1 thread)
    python benchmarks/quality.py --quick    # K=4, one beta, one seed (a few minutes)

1. SFT policy: the embedded tiny architecture (Qwen2, hidden 64, 2 layers, the shipped BPE tokenizer), randomly
   initialised and pre-trained from scratch with a plain next-token loop on `tiny_language.make_corpus` lines
   (reviews whose sentiment bias is uniform in [-1, 1], so the SFT policy writes good and bad reviews alike). Saved
   under `benchmarks/results/cache/` (gitignored) and reused.
2. Lists: the 120 possible prompts are split 90 train / 30 held out. For each training prompt, K completions are
   sampled from the SFT policy (temperature 1, no top-k/top-p) and scored by the ground truth
   `tiny_language.true_reward` (positive minus negative lexicon words). Fully tied lists carry no preference and are
   dropped (their count is printed). Every method trains on these same lists (RSO: see below).
3. Methods (the `METHODS` registry, name -> function building a trainer on the shared lists):
   `dpo_best_worst` (TRL DPOTrainer on the best-vs-worst pair of each list), `dpo_all_pairs` (TRL DPOTrainer on all
   strictly ordered pairs of each list, <= C(K,2)), `rankdpo_pl` / `rankdpo_lipo` (RankDPOTrainer, Plackett-Luce with
   Efron ties / LiPO-lambda), `pro` (PROTrainer, reference-free: its sweep knob is `sft_weight`, not beta) and `rso`
   (RSOSampler with the true reward as a callable reward model: it samples K candidates per training prompt from the
   SFT policy itself, with the same sampling settings as the lists, accepts K/2 by statistical rejection sampling
   with rso_beta=0.5 and trains TRL's sigmoid DPO on the tournament pairs).
4. Compute budget, identical for every method within a K: `steps` optimizer steps, each on `lists_per_step * K`
   completion sequences through the policy (B lists of K for the listwise trainers, B*K/2 pairs for the pairwise
   ones), same learning rate and schedule. Methods differ in how many distinct lists that budget covers.
5. Evaluation on the 30 held-out prompts: `eval_samples` samples per prompt from the trained policy (temperature 1),
   mean true reward, and the sequence-level KL(pi || pi_SFT) estimated on the same samples as the mean of
   log pi(y) - log pi_SFT(y), summed over the completion tokens (EOS included). The SFT policy itself is the row
   `method="sft"` (KL exactly 0).

Writes `results/quality.json` (one row per run: method, K, beta, seed, reward, kl, ...), `results/quality.png` (the
reward-vs-KL frontiers) and `results/quality.md` (best reward within KL budgets).
"""

import argparse
import dataclasses
import hashlib
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    RESULTS_DIR,
    best_within_budget,
    completion_logprobs,
    completion_mask_after,
    cpu_trainer_kwargs,
    kl_estimate,
    seed_means,
    write_json,
)


@dataclasses.dataclass
class Settings:
    ks: tuple[int, ...] = (4, 8)
    betas: tuple[float, ...] = (0.1, 0.3, 1.0)
    pro_sft_weights: tuple[float, ...] = (0.005, 0.05, 0.5)  # PRO's knob, paired with `betas` (small = far from SFT)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("dpo_best_worst", "dpo_all_pairs", "rankdpo_pl", "rankdpo_lipo", "pro", "rso")
    pretrain_lines: int = 20000
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    list_repeats: int = 2  # lists per training prompt (90 prompts): 180 lists
    max_new_tokens: int = 40
    steps: int = 40
    lists_per_step: int = 4
    learning_rate: float = 1e-3
    eval_samples: int = 8  # per held-out prompt (30 prompts)
    rso_beta: float = 0.5


QUICK = dict(
    ks=(4,), betas=(0.1,), pro_sft_weights=(0.05,), seeds=(0,), pretrain_steps=400, list_repeats=1, eval_samples=4
)


# ---------------------------------------------------------------------------------------------------------- data
def prompt_split() -> tuple[list[str], list[str]]:
    """All 120 prompts of the tiny language, shuffled once: 90 for training, 30 held out."""
    from trl_rankalign.tiny_language import PROMPT_TEMPLATES, SUBJECTS

    prompts = [t.format(s) for t, s in itertools.product(PROMPT_TEMPLATES, SUBJECTS)]
    random.Random(1234).shuffle(prompts)
    return prompts[:90], prompts[90:]


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def pretrain_sft(settings: Settings, cache_dir: Path) -> str:
    """Pre-train the SFT policy from scratch on the review language (cached)."""
    from trl_rankalign.tiny import MODEL_KWARGS, TINY_BUILDER_VERSION, build_tiny_model, build_tiny_tokenizer
    from trl_rankalign.tiny_language import make_corpus

    spec = {
        "lines": settings.pretrain_lines,
        "steps": settings.pretrain_steps,
        "batch": settings.pretrain_batch,
        "lr": settings.pretrain_lr,
        "tiny": [TINY_BUILDER_VERSION, MODEL_KWARGS],
    }
    path = cache_dir / f"sft-{_key(spec)}"
    if (path / "config.json").is_file():
        return str(path)
    started = time.time()
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    lines = make_corpus(settings.pretrain_lines, seed=1)
    encoded = [tokenizer(line + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for line in lines]
    torch.manual_seed(0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.pretrain_lr, total_steps=settings.pretrain_steps, pct_start=0.05
    )
    model.train()
    for step in range(settings.pretrain_steps):
        batch = rng.sample(encoded, settings.pretrain_batch)
        length = max(map(len, batch))
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (length - len(ids)) for ids in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == settings.pretrain_steps - 1:
            print(f"[pretrain] step {step} loss {loss.item():.3f} ({time.time() - started:.0f}s)", flush=True)
    model.eval()
    tmp = Path(tempfile.mkdtemp(prefix=".sft-tmp-", dir=cache_dir))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)
    return str(path)


def sampling_config(tokenizer, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_lists(sft_path: str, k: int, settings: Settings, cache_dir: Path) -> list[dict]:
    """K completions per training prompt sampled from the SFT policy, scored by the true reward (cached JSONL)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rankalign.generation import sample_and_score
    from trl_rankalign.tiny_language import reward_fn

    train_prompts, _ = prompt_split()
    prompts = train_prompts * settings.list_repeats
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    model = AutoModelForCausalLM.from_pretrained(sft_path)
    cache = cache_dir / f"lists-{Path(sft_path).name}-K{k}-n{len(prompts)}-T{settings.max_new_tokens}.jsonl"
    rows = sample_and_score(
        model,
        tokenizer,
        prompts,
        num_samples=k,
        scorer=reward_fn,
        generation_config=sampling_config(tokenizer, settings.max_new_tokens),
        batch_size=16,
        cache_file=cache,
        seed=100 + k,
        desc=f"Sampling K={k} lists",
    )
    lists = [
        {"prompt": r["prompt"], "completions": r["completions"], "scores": r["scores"]}
        for r in rows
        if len(set(r["scores"])) > 1 and all(c.strip() for c in r["completions"])
    ]
    print(f"[lists] K={k}: {len(lists)} lists kept, {len(rows) - len(lists)} fully tied or empty dropped")
    return lists


# ------------------------------------------------------------------------------------------------------- methods
@dataclasses.dataclass
class Context:
    """What every method builder gets: the SFT policy, the shared lists and the compute budget."""

    sft_path: str
    lists: list[dict]
    k: int
    settings: Settings
    output_dir: str
    cache_dir: Path


def _pairs(lists: list[dict], which: str) -> list[dict]:
    rows = []
    for row in lists:
        order = sorted(range(len(row["scores"])), key=lambda i: -row["scores"][i])
        if which == "best_worst":
            candidates = [(order[0], order[-1])]
        else:
            candidates = itertools.combinations(order, 2)
        for i, j in candidates:
            if row["scores"][i] > row["scores"][j]:
                rows.append(
                    {"prompt": row["prompt"], "chosen": row["completions"][i], "rejected": row["completions"][j]}
                )
    return rows


def _common(ctx: Context, seed: int, per_step: int) -> dict:
    s = ctx.settings
    return cpu_trainer_kwargs(
        ctx.output_dir,
        max_steps=s.steps,
        per_device_train_batch_size=per_step,
        learning_rate=s.learning_rate,
        seed=seed,
        data_seed=seed,
    )


def _dpo(which: str) -> Callable:
    def build(ctx: Context, beta: float, seed: int):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=beta, **_common(ctx, seed, ctx.settings.lists_per_step * ctx.k // 2))
        return DPOTrainer(model=ctx.sft_path, args=args, train_dataset=Dataset.from_list(_pairs(ctx.lists, which)))

    return build


def _rank_dpo(rank_loss: str) -> Callable:
    def build(ctx: Context, beta: float, seed: int):
        from datasets import Dataset

        from trl_rankalign import RankDPOConfig, RankDPOTrainer

        args = RankDPOConfig(beta=beta, rank_loss=rank_loss, **_common(ctx, seed, ctx.settings.lists_per_step))
        return RankDPOTrainer(model=ctx.sft_path, args=args, train_dataset=Dataset.from_list(ctx.lists))

    return build


def _pro(ctx: Context, sft_weight: float, seed: int):
    from datasets import Dataset

    from trl_rankalign import PROConfig, PROTrainer

    args = PROConfig(sft_weight=sft_weight, **_common(ctx, seed, ctx.settings.lists_per_step))
    return PROTrainer(model=ctx.sft_path, args=args, train_dataset=Dataset.from_list(ctx.lists))


def _rso(ctx: Context, beta: float, seed: int):
    from datasets import Dataset

    from trl_rankalign.rso_config import RSOConfig
    from trl_rankalign.rso_sampler import RSOSampler
    from trl_rankalign.tiny_language import reward_fn

    s = ctx.settings
    prompts = prompt_split()[0] * s.list_repeats  # the prompts of the shared lists
    args = RSOConfig(
        beta=beta,
        num_candidates=ctx.k,
        num_accepted=ctx.k // 2,
        rso_beta=s.rso_beta,
        pairing="tournament",
        sampling_temperature=1.0,
        sampling_top_k=0,
        sampling_top_p=1.0,
        max_new_tokens=s.max_new_tokens,
        sampling_batch_size=16,
        sampling_seed=100 + ctx.k,
        samples_dir=str(ctx.cache_dir / f"rso-{Path(ctx.sft_path).name}-K{ctx.k}-n{len(prompts)}"),
        **_common(ctx, seed, s.lists_per_step * ctx.k // 2),
    )
    return RSOSampler(
        model=ctx.sft_path,
        reward_model=reward_fn,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    )


# name -> (builder(ctx, knob, seed) -> trainer, knob name). The knob is swept over `Settings.betas`, or over
# `Settings.pro_sft_weights` for the reference-free PRO. Add a method (RRHF, SLiC, Preferred-FT, RAFT, RLOO) here.
METHODS: dict[str, tuple[Callable, str]] = {
    "dpo_best_worst": (_dpo("best_worst"), "beta"),
    "dpo_all_pairs": (_dpo("all_pairs"), "beta"),
    "rankdpo_pl": (_rank_dpo("plackett_luce"), "beta"),
    "rankdpo_lipo": (_rank_dpo("lipo"), "beta"),
    "pro": (_pro, "sft_weight"),
    "rso": (_rso, "beta"),
}


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(policy, reference, tokenizer, prompts: list[str], num_samples: int, settings: Settings, seed: int):
    """Mean true reward of samples of `policy` on `prompts`, and KL(policy || reference) estimated on them."""
    from trl_rankalign.tiny_language import true_reward

    policy.eval()
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    config = sampling_config(tokenizer, settings.max_new_tokens)
    config.num_return_sequences = num_samples
    torch.manual_seed(seed)
    output = policy.generate(**inputs, generation_config=config)
    prompt_len = inputs["input_ids"].size(1)
    new_tokens = output[:, prompt_len:]
    completion = completion_mask_after(new_tokens, [tokenizer.eos_token_id])  # (N, T)
    prompt_mask = inputs["attention_mask"].repeat_interleave(num_samples, dim=0)
    attention_mask = torch.cat([prompt_mask, completion], dim=1)
    completion_mask = torch.cat([torch.zeros_like(prompt_mask), completion], dim=1)
    policy_logps = completion_logprobs(policy, output, attention_mask, completion_mask)
    reference_logps = completion_logprobs(reference, output, attention_mask, completion_mask)
    texts = tokenizer.batch_decode(
        new_tokens.masked_fill(completion == 0, tokenizer.pad_token_id), skip_special_tokens=True
    )
    rewards = torch.tensor([true_reward(t) for t in texts], dtype=torch.float64)
    kl, kl_stderr = kl_estimate(policy_logps, reference_logps)
    return {
        "reward": rewards.mean().item(),
        "reward_stderr": rewards.std().item() / len(texts) ** 0.5,
        "kl": kl,
        "kl_stderr": kl_stderr,
        "mean_length": completion.sum(dim=1).float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------------------- main
def run(settings: Settings, output_dir: Path, cache_dir: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sft_path = pretrain_sft(settings, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    reference = AutoModelForCausalLM.from_pretrained(sft_path).eval()
    _, eval_prompts = prompt_split()
    results = []

    def record(row):
        results.append(row)
        print(json.dumps(row), flush=True)

    for seed in settings.seeds:
        metrics = evaluate(reference, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed)
        for k in settings.ks:  # the SFT point is the same for every K; recorded per K for the plots
            record({"method": "sft", "K": k, "beta": None, "seed": seed, **metrics})

    with tempfile.TemporaryDirectory() as tmp:
        for k in settings.ks:
            lists = make_lists(sft_path, k, settings, cache_dir)
            ctx = Context(sft_path, lists, k, settings, tmp, cache_dir)
            for name in settings.methods:
                build, knob = METHODS[name]
                values = settings.pro_sft_weights if knob == "sft_weight" else settings.betas
                for value, seed in itertools.product(values, settings.seeds):
                    t0 = time.time()
                    trainer = build(ctx, value, seed)
                    trainer.train()
                    metrics = evaluate(
                        trainer.model, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed
                    )
                    beta = value if knob == "beta" else None
                    extra = {knob: value} if knob != "beta" else {}
                    record(
                        {"method": name, "K": k, "beta": beta, "seed": seed, **extra, **metrics}
                        | {"seconds": round(time.time() - t0, 1)}
                    )
                    del trainer
                    write_json(output_dir / "quality.json", results)  # partial results survive an interruption
    write_json(output_dir / "quality.json", results)
    table = summary_table(results, settings)
    (output_dir / "quality.md").write_text(table + "\n")
    plot(results, output_dir / "quality.png")
    print(table)
    print(f"[quality] done in {time.time() - started:.0f}s -> {output_dir}")
    return results


def _points(results: list[dict]) -> list[dict]:
    rows = [dict(r, beta=r["sft_weight"]) if r["method"] == "pro" else r for r in results]  # PRO's knob
    return seed_means(rows, keys=("method", "K", "beta"))


KL_BUDGETS = (1.0, 2.0, 5.0, 10.0)


def summary_table(results: list[dict], settings: Settings) -> str:
    """Markdown: per K and method, the best seed-mean reward among the sweep points within each KL budget."""
    points = _points(results)
    lines = [
        "| K | method | " + " | ".join(f"reward @ KL ≤ {b:g}" for b in KL_BUDGETS) + " | best reward (its KL, knob) |",
        "| --- | --- | " + " | ".join("---" for _ in KL_BUDGETS) + " | --- |",
    ]
    methods = ["sft", *settings.methods]
    for k in settings.ks:
        for method in methods:
            mine = [p for p in points if p["method"] == method and p["K"] == k]
            if not mine:
                continue
            cells = []
            for budget in KL_BUDGETS:
                best = best_within_budget(mine, budget)
                cells.append("–" if best is None else f"{best['reward']:.2f}")
            top = max(mine, key=lambda p: p["reward"])
            knob = "" if top["beta"] is None else (f"w={top['beta']:g}" if method == "pro" else f"β={top['beta']:g}")
            lines.append(
                f"| {k} | {method} | " + " | ".join(cells) + f" | {top['reward']:.2f} ± {top['reward_std']:.2f} "
                f"(KL {top['kl']:.2f}{', ' + knob if knob else ''}) |"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _points(results)
    ks = sorted({p["K"] for p in points})
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    methods = list(dict.fromkeys(p["method"] for p in points))
    markers = dict(zip(methods, "*osD^vPX"))
    for ax, k in zip(axes[0], ks):
        for method in methods:
            mine = sorted((p for p in points if p["method"] == method and p["K"] == k), key=lambda p: p["kl"])
            if not mine:
                continue
            # Individual seeds, faint; seed means with error bars, joined along the sweep
            raw = [r for r in results if r["method"] == method and r["K"] == k]
            (line,) = ax.plot(
                [p["kl"] for p in mine], [p["reward"] for p in mine], marker=markers[method], label=method
            )
            ax.errorbar(
                [p["kl"] for p in mine],
                [p["reward"] for p in mine],
                xerr=[p["kl_std"] for p in mine],
                yerr=[p["reward_std"] for p in mine],
                fmt="none",
                ecolor=line.get_color(),
                alpha=0.5,
            )
            ax.scatter([r["kl"] for r in raw], [r["reward"] for r in raw], color=line.get_color(), alpha=0.2, s=10)
        ax.set_title(f"K = {k}: true reward vs KL(π ‖ π_SFT) on held-out prompts")
        ax.set_xlabel("sequence-level KL (nats), sampled")
        ax.set_ylabel("mean true reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=4, one beta, one seed")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--betas", type=float, nargs="+", help="override the beta sweep")
    parser.add_argument("--learning-rate", type=float, help="override the learning rate")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="subset of the registry")
    args = parser.parse_args(argv)
    settings = Settings(**(QUICK if args.quick else {}))
    if args.methods:
        settings.methods = tuple(args.methods)
    if args.betas:
        settings.betas = tuple(args.betas)
    if args.learning_rate:
        settings.learning_rate = args.learning_rate
    torch.set_num_threads(args.threads)  # 1 by default: on a shared 2-core box, 2 threads oversubscribe badly
    run(settings, args.output_dir, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
