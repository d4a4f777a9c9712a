"""Quality benchmark: the DPO paper's controlled generation (§6.1), rebuilt offline on the tiny review language.

    python benchmarks/quality.py            # full: K=4 and K=8, 3 knob values x 3 seeds per method (1 thread)
    python benchmarks/quality.py --quick    # K=4, one knob value, one seed per method (about 1.5 min)
    python benchmarks/quality.py --methods rrhf slic --merge   # (re)run some methods, keep the other methods' rows

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
   with rso_beta=0.5 and trains TRL's sigmoid DPO on the tournament pairs). Then the reference-free listwise
   trainers, the SFT baselines and online RL:
   - `rrhf` (RRHFTrainer on the lists, length_penalty 1). Knob: `rrhf_weight` in (100, 10, 1), paired with the betas
     (far from SFT first): the loss is `rrhf_weight * ranking + NLL_top`, so the weight sets how hard the ranking
     hinge pulls against the SFT term; 1 is the trainer's default and 100 the authors' `train.py` value.
   - `slic` (SLiCTrainer on the lists, sft_weight 0.1, the config default). Knob: `margin` delta in (10, 3, 1),
     i.e. delta ~ 1/beta for the betas (0.1, 0.3, 1): SLiC's hinge max(0, delta - Delta) = delta * max(0, 1 - Delta/delta)
     is RSO's hinge-norm max(0, 1 - beta * Delta) with beta = 1/delta, up to the reference log-ratios SLiC drops, so
     the margin is the direct analogue of beta (how far the log-prob gaps are pushed), while `sft_weight` weights an
     NLL on the *best* completions, which moves the policy towards high reward rather than back to the SFT policy.
   - `preferred_ft` (TRL SFTTrainer on `trl_rankalign.data.top_ranked_completions(lists)`: the best completion of
     each shared list, ties keep the first). No knob: one setting per seed.
   - `raft` (`trl_rankalign.raft.train_raft`, one round): it samples its own K completions per training prompt (the
     180 prompts of the lists) from the current policy, which for one round is the SFT policy, with the lists'
     sampling settings but its own sampling seed per training seed (`5000 + 100 * seed + K`: fresh draws, so the
     seed spread includes the sampling), scores them with the true reward (`tiny_language.reward_fn`), keeps the
     best of each prompt (ties keep the first; fully tied prompts are *kept*, unlike the lists) and runs TRL's
     SFTTrainer on them. One round from the SFT policy is Preferred-FT on fresh on-policy draws; RAFT's difference
     only grows with further rounds, which a single-round budget does not buy. No knob: one setting per seed.
   - `rloo` (TRL RLOOTrainer, online RL, on prompt-only rows of the same 180 training prompts) with the true reward
     (`tiny_language.reward_fn`, TRL's reward-function signature), `num_generations` = K, the lists' sampling
     settings (temperature 1, top_k 0, top_p 1, max_completion_length = max_new_tokens), one policy update per
     generation batch (`steps_per_generation` 1, `num_iterations` 1). Knob: TRL's KL coefficient `beta`, swept over
     the betas: RLOO maximises r - beta * KL(pi || pi_SFT) with the sequence-level KL, the objective DPO's beta
     stands for, so the two betas mean the same thing.
4. Compute budget, identical for every method within a K: `steps` optimizer steps, each on `lists_per_step * K`
   completion sequences through the policy (B lists of K for the listwise trainers, B*K/2 pairs for the pairwise
   ones, B*K best completions for Preferred-FT and RAFT, B prompts x K generations for RLOO), same learning rate and
   schedule. Methods differ in how many distinct lists that budget covers: the SFT baselines see each best
   completion several times (B*K*steps = 640 sequences for 179 best completions at K=4, 1280 for 177 at K=8:
   about 3.6 and 7 epochs), RLOO draws B*steps = 160 of the 180 prompt rows (the 90 training prompts twice) once.
   Sampling is not counted in the budget: RSO and RAFT draw K per prompt up front as the lists were drawn, and
   RLOO samples as it trains.
5. Evaluation on the 30 held-out prompts: `eval_samples` samples per prompt from the trained policy (temperature 1),
   mean true reward, and the sequence-level KL(pi || pi_SFT) estimated on the same samples as the mean of
   log pi(y) - log pi_SFT(y), summed over the completion tokens (EOS included). The SFT policy itself is the row
   `method="sft"` (KL exactly 0).

Writes `results/quality.json` (one row per run: method, K, beta, seed, reward, kl, ..., plus the knob by its own name
for methods whose knob is not beta), `results/quality.png` (the reward-vs-KL frontiers) and `results/quality.md`
(best reward within KL budgets), the last two from every row in the JSON. With `--merge` the run's rows replace the
rows of the same (method, K, seed, knob value) in the existing `quality.json` and every other row is kept, so a
subset of methods can be (re)run; the SFT rows it recomputes must match the stored ones (same SFT policy, seeds
and evaluation), otherwise it refuses to merge. Merge only runs of the same settings (not `--quick` into a full run).
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
    rrhf_weights: tuple[float, ...] = (100.0, 10.0, 1.0)  # RRHF's knob, paired with `betas` (large = far from SFT)
    slic_margins: tuple[float, ...] = (10.0, 3.0, 1.0)  # SLiC's knob, ~1/beta for `betas`
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = (
        "dpo_best_worst",
        "dpo_all_pairs",
        "rankdpo_pl",
        "rankdpo_lipo",
        "pro",
        "rso",
        "rrhf",
        "slic",
        "preferred_ft",
        "raft",
        "rloo",
    )
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
    ks=(4,),
    betas=(0.1,),
    pro_sft_weights=(0.05,),
    rrhf_weights=(10.0,),
    slic_margins=(3.0,),
    seeds=(0,),
    pretrain_steps=400,
    list_repeats=1,
    eval_samples=4,
)


# ---------------------------------------------------------------------------------------------------------- data
def prompt_split() -> tuple[list[str], list[str]]:
    """All 120 prompts of the tiny language, shuffled once: 90 for training, 30 held out."""
    from trl_rankalign.tiny.language import PROMPT_TEMPLATES, SUBJECTS

    prompts = [t.format(s) for t, s in itertools.product(PROMPT_TEMPLATES, SUBJECTS)]
    random.Random(1234).shuffle(prompts)
    return prompts[:90], prompts[90:]


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def pretrain_sft(settings: Settings, cache_dir: Path) -> str:
    """Pre-train the SFT policy from scratch on the review language (cached)."""
    from trl_rankalign.tiny import MODEL_KWARGS, TINY_BUILDER_VERSION, build_tiny_model, build_tiny_tokenizer
    from trl_rankalign.tiny.language import make_corpus

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

    from trl_rankalign.sampling.generation import sample_and_score
    from trl_rankalign.tiny.language import reward_fn

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
    from trl_rankalign.tiny.language import reward_fn

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


def _rrhf(ctx: Context, rrhf_weight: float, seed: int):
    from datasets import Dataset

    from trl_rankalign import RRHFConfig, RRHFTrainer

    args = RRHFConfig(rrhf_weight=rrhf_weight, **_common(ctx, seed, ctx.settings.lists_per_step))
    return RRHFTrainer(model=ctx.sft_path, args=args, train_dataset=Dataset.from_list(ctx.lists))


def _slic(ctx: Context, margin: float, seed: int):
    from datasets import Dataset

    from trl_rankalign import SLiCConfig, SLiCTrainer

    args = SLiCConfig(margin=margin, **_common(ctx, seed, ctx.settings.lists_per_step))
    return SLiCTrainer(model=ctx.sft_path, args=args, train_dataset=Dataset.from_list(ctx.lists))


def _preferred_ft(ctx: Context, _knob: None, seed: int):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trl_rankalign.data import top_ranked_completions

    args = SFTConfig(**_common(ctx, seed, ctx.settings.lists_per_step * ctx.k))
    dataset = top_ranked_completions(Dataset.from_list(ctx.lists))
    return SFTTrainer(model=ctx.sft_path, args=args, train_dataset=dataset)


class _RAFTRun:
    """`train_raft` is a function, not a trainer: this gives it the `.train()` / `.model` the loop uses."""

    def __init__(self, ctx: Context, args, prompts: list[str]):
        self.ctx, self.args, self.prompts, self.model = ctx, args, prompts, None

    def train(self):
        from trl_rankalign.raft import train_raft
        from trl_rankalign.tiny.language import reward_fn

        self.model = train_raft(self.ctx.sft_path, self.prompts, self.args, reward=reward_fn)


def _raft(ctx: Context, _knob: None, seed: int):
    from trl_rankalign.raft import RAFTConfig

    s = ctx.settings
    prompts = prompt_split()[0] * s.list_repeats  # the prompts of the shared lists
    # A fresh directory per run: train_raft resumes finished rounds found in its output_dir
    output_dir = tempfile.mkdtemp(prefix=f"raft-K{ctx.k}-s{seed}-", dir=ctx.output_dir)
    args = RAFTConfig(
        num_rounds=1,
        num_samples=ctx.k,
        sampling_temperature=1.0,
        sampling_top_k=0,
        max_new_tokens=s.max_new_tokens,
        sampling_batch_size=16,
        sampling_seed=5000 + 100 * seed + ctx.k,
        **_common(ctx, seed, s.lists_per_step * ctx.k) | {"output_dir": output_dir},
    )
    return _RAFTRun(ctx, args, prompts)


def _rloo(ctx: Context, beta: float, seed: int):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from trl_rankalign.tiny.language import reward_fn

    s = ctx.settings
    prompts = prompt_split()[0] * s.list_repeats  # the prompts of the shared lists
    args = RLOOConfig(
        beta=beta,
        num_generations=ctx.k,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=s.max_new_tokens,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        **_common(ctx, seed, s.lists_per_step * ctx.k),  # B prompts x K generations per optimizer step
    )
    return RLOOTrainer(
        model=ctx.sft_path,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    )


# name -> (builder(ctx, knob value, seed) -> trainer, knob name or None). A knob is swept over the `Settings` field
# `KNOB_VALUES[knob]`; a method without a knob (None) runs once per seed.
METHODS: dict[str, tuple[Callable, str | None]] = {
    "dpo_best_worst": (_dpo("best_worst"), "beta"),
    "dpo_all_pairs": (_dpo("all_pairs"), "beta"),
    "rankdpo_pl": (_rank_dpo("plackett_luce"), "beta"),
    "rankdpo_lipo": (_rank_dpo("lipo"), "beta"),
    "pro": (_pro, "sft_weight"),
    "rso": (_rso, "beta"),
    "rrhf": (_rrhf, "rrhf_weight"),
    "slic": (_slic, "margin"),
    "preferred_ft": (_preferred_ft, None),
    "raft": (_raft, None),
    "rloo": (_rloo, "beta"),
}
KNOB_VALUES = {
    "beta": "betas",
    "sft_weight": "pro_sft_weights",
    "rrhf_weight": "rrhf_weights",
    "margin": "slic_margins",
}
KNOB_LABELS = {"beta": "β", "sft_weight": "w", "rrhf_weight": "λ", "margin": "δ"}


def knob_values(settings: Settings, knob: str | None) -> tuple:
    return (None,) if knob is None else getattr(settings, KNOB_VALUES[knob])


def knob_value(row: dict):
    """The swept value of a result row (None for SFT and knob-less methods)."""
    knob = METHODS[row["method"]][1] if row["method"] in METHODS else None
    return None if knob is None else row[knob] if knob in row else row.get("beta")


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(policy, reference, tokenizer, prompts: list[str], num_samples: int, settings: Settings, seed: int):
    """Mean true reward of samples of `policy` on `prompts`, and KL(policy || reference) estimated on them."""
    from trl_rankalign.tiny.language import true_reward

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
def _row_id(row: dict) -> tuple:
    return row["method"], row["K"], row["seed"], knob_value(row)


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` with the rows of the same (method, K, seed, knob value) as a row of `new` replaced by it; new ones added."""
    replaced = {_row_id(r) for r in new}
    return [r for r in old if _row_id(r) not in replaced] + new


def check_sft_rows(old: list[dict], new: list[dict]) -> None:
    """Refuse to merge runs whose SFT evaluation differs (another SFT policy, eval sample count or eval prompts)."""
    stored = {_row_id(r): r for r in old if r["method"] == "sft"}
    for row in new:
        before = stored.get(_row_id(row))
        if before is not None and (
            abs(before["reward"] - row["reward"]) > 1e-9
            or abs(before.get("mean_length", 0.0) - row.get("mean_length", 0.0)) > 1e-4
        ):
            raise SystemExit(
                f"--merge: the SFT evaluation differs from the stored one ({before} vs {row}): these rows come from "
                "other settings; rerun everything without --merge instead."
            )


def run(settings: Settings, output_dir: Path, cache_dir: Path, merge: bool = False) -> list[dict]:
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
    json_path = output_dir / "quality.json"
    previous = json.loads(json_path.read_text()) if merge and json_path.is_file() else []
    if merge:
        print(f"[quality] --merge: {len(previous)} stored rows in {json_path}", flush=True)

    def record(row):
        results.append(row)
        print(json.dumps(row), flush=True)

    def save():  # partial results survive an interruption; with --merge, so do the stored rows
        write_json(json_path, merge_rows(previous, results))

    for seed in settings.seeds:
        metrics = evaluate(reference, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed)
        for k in settings.ks:  # the SFT point is the same for every K; recorded per K for the plots
            record({"method": "sft", "K": k, "beta": None, "seed": seed, **metrics})
    check_sft_rows(previous, results)

    with tempfile.TemporaryDirectory() as tmp:
        for k in settings.ks:
            lists = make_lists(sft_path, k, settings, cache_dir)
            ctx = Context(sft_path, lists, k, settings, tmp, cache_dir)
            for name in settings.methods:
                build, knob = METHODS[name]
                for value, seed in itertools.product(knob_values(settings, knob), settings.seeds):
                    t0 = time.time()
                    trainer = build(ctx, value, seed)
                    trainer.train()
                    metrics = evaluate(
                        trainer.model, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed
                    )
                    beta = value if knob == "beta" else None
                    extra = {knob: value} if knob not in ("beta", None) else {}
                    record(
                        {"method": name, "K": k, "beta": beta, "seed": seed, **extra, **metrics}
                        | {"seconds": round(time.time() - t0, 1)}
                    )
                    del trainer
                    save()
    save()
    everything = merge_rows(previous, results)
    table = summary_table(everything)
    (output_dir / "quality.md").write_text(table + "\n")
    plot(everything, output_dir / "quality.png")
    print(table)
    print(f"[quality] done in {time.time() - started:.0f}s -> {output_dir}")
    return results


def _points(results: list[dict]) -> list[dict]:
    """Seed means per (method, K, knob value); the knob value, whatever its name, is stored under "beta"."""
    rows = [dict(r, beta=knob_value(r)) for r in results]
    return seed_means(rows, keys=("method", "K", "beta"))


def _method_order(results: list[dict]) -> list[str]:
    present = list(dict.fromkeys(r["method"] for r in results))
    known = ["sft", *METHODS]
    return [m for m in known if m in present] + [m for m in present if m not in known]


KL_BUDGETS = (1.0, 2.0, 5.0, 10.0)


def summary_table(results: list[dict]) -> str:
    """Markdown: per K and method, the best seed-mean reward among the sweep points within each KL budget."""
    points = _points(results)
    lines = [
        "| K | method | " + " | ".join(f"reward @ KL ≤ {b:g}" for b in KL_BUDGETS) + " | best reward (its KL, knob) |",
        "| --- | --- | " + " | ".join("---" for _ in KL_BUDGETS) + " | --- |",
    ]
    methods = _method_order(results)
    for k in sorted({p["K"] for p in points}):
        for method in methods:
            mine = [p for p in points if p["method"] == method and p["K"] == k]
            if not mine:
                continue
            cells = []
            for budget in KL_BUDGETS:
                best = best_within_budget(mine, budget)
                cells.append("–" if best is None else f"{best['reward']:.2f}")
            top = max(mine, key=lambda p: p["reward"])
            label = KNOB_LABELS.get(METHODS[method][1]) if method in METHODS else None
            knob = "" if top["beta"] is None or label is None else f"{label}={top['beta']:g}"
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
    methods = _method_order(results)
    cmap = plt.get_cmap("tab20")
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the 10 dark colours first, then their light twins
    colors = {m: cmap(order[i % 20]) for i, m in enumerate(methods)}
    markers = {m: "*osD^vPXhp<>d8H"[i % 15] for i, m in enumerate(methods)}
    single = {m for m in methods if m == "sft" or (m in METHODS and METHODS[m][1] is None)}
    for ax, k in zip(axes[0], ks):
        for method in methods:
            mine = sorted((p for p in points if p["method"] == method and p["K"] == k), key=lambda p: p["kl"])
            if not mine:
                continue
            # Individual seeds, faint; seed means with error bars, joined along the sweep
            raw = [r for r in results if r["method"] == method and r["K"] == k]
            (line,) = ax.plot(
                [p["kl"] for p in mine],
                [p["reward"] for p in mine],
                marker=markers[method],
                color=colors[method],
                linestyle="none" if method in single else "-",
                markersize=11 if method in single else 6,
                label=method,
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
        ax.legend(fontsize=7, ncol=2, loc="lower right")
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
    parser.add_argument(
        "--methods", nargs="+", help=f"subset of the registry (space- or comma-separated): {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the existing quality.json, replacing those this run re-measures (same method, K, "
        "seed, knob value); the table and plot are drawn from all rows",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    args = parser.parse_args(argv)
    settings = Settings(**(QUICK if args.quick else {}))
    if args.methods:
        methods = tuple(m for arg in args.methods for m in arg.split(",") if m)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            parser.error(f"unknown method(s) {unknown}; the registry has {list(METHODS)}")
        settings.methods = methods
    if args.seeds:
        settings.seeds = tuple(args.seeds)
    if args.betas:
        settings.betas = tuple(args.betas)
    if args.learning_rate:
        settings.learning_rate = args.learning_rate
    torch.set_num_threads(args.threads)  # 1 by default: on a shared 2-core box, 2 threads oversubscribe badly
    run(settings, args.output_dir, args.cache_dir, merge=args.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
