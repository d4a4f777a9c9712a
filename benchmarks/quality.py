"""Quality benchmark: the DPO paper's controlled generation (§6.1), rebuilt offline on the tiny review language.

    python benchmarks/quality.py                  # full, exact labels: K=4 and K=8, 5 knob values x 3 seeds (1 thread)
    python benchmarks/quality.py --labels noisy   # the same with Plackett-Luce-sampled rankings (fewer methods)
    python benchmarks/quality.py --quick          # K=4, one knob value, one seed per method
    python benchmarks/quality.py --methods rrhf slic --merge   # (re)run some methods, keep the other methods' rows

1. SFT policy: the embedded tiny architecture (Qwen2, hidden 64, 2 layers, the shipped BPE tokenizer), randomly
   initialised and pre-trained from scratch with a plain next-token loop on `tiny_language.make_corpus` lines
   (reviews whose sentiment bias is uniform in [-1, 1], so the SFT policy writes good and bad reviews alike). Saved
   under `benchmarks/results/cache/` (gitignored) and reused.
2. Lists: the 120 possible prompts are split 90 train / 30 held out. For each training prompt, K completions are
   sampled from the SFT policy (temperature 1, no top-k/top-p) and scored by the ground truth
   `tiny_language.true_reward` (positive minus negative lexicon words). Fully tied lists carry no preference and are
   dropped (their count is printed). Every offline method trains on these same lists.
   Labels (`--labels`): `exact` (default) ranks by the true reward itself; `noisy` replaces each list's scores by one
   ranking sampled from a Plackett-Luce model with utilities true_reward / `noise_tau` (Gumbel-max), as integer rank
   scores K-1 .. 0 (no ties), seeded by the list's content (`label_seed`): the same list always gets the same labels,
   for every method and training seed, like a data set labelled once. Its pairwise marginals are Bradley-Terry's,
   P(i above j) = sigmoid((r_i - r_j) / tau); tau = 1.8 makes about 71% of the pairs with distinct true rewards agree
   with the true order, as human raters agree with each other (the measured agreement is printed and stored in every
   row, `label_agreement`). Methods that score their own samples (RSO, RAFT, RLOO, iterate) get the same labeller as
   a reward function (`noisy_reward`): each prompt's group of K samples ranked by one Plackett-Luce draw.
3. Methods (the `METHODS` registry, name -> function building a runner with `.train()` and `.model`):
   `dpo_best_worst` (TRL DPOTrainer on the best-vs-worst pair of each list), `dpo_all_pairs` (TRL DPOTrainer on all
   strictly ordered pairs of each list, <= C(K,2)), `rankdpo_pl` / `rankdpo_lipo` (RankDPOTrainer, Plackett-Luce with
   Efron ties / LiPO-lambda), `pro` (PROTrainer, reference-free: its sweep knob is `sft_weight`, not beta) and `rso`
   (RSOSampler with the true reward as a callable reward model: it samples K candidates per training prompt from the
   SFT policy itself, with the same sampling settings as the lists, accepts K/2 by statistical rejection sampling
   with rso_beta=0.5 and trains TRL's sigmoid DPO on the tournament pairs). Then the reference-free listwise
   trainers, the SFT baselines, online RL and online listwise training:
   - `rrhf` (RRHFTrainer on the lists, length_penalty 1). Knob: `rrhf_weight`, paired with the betas (far from SFT
     first): the loss is `rrhf_weight * ranking + NLL_top`, so the weight sets how hard the ranking hinge pulls
     against the SFT term; 1 is the trainer's default and 100 the authors' `train.py` value.
   - `slic` (SLiCTrainer on the lists, sft_weight 0.1, the config default). Knob: `margin` delta ~ 1/beta for the
     betas: SLiC's hinge max(0, delta - Delta) = delta * max(0, 1 - Delta/delta) is RSO's hinge-norm
     max(0, 1 - beta * Delta) with beta = 1/delta, up to the reference log-ratios SLiC drops, so the margin is the
     direct analogue of beta (how far the log-prob gaps are pushed), while `sft_weight` weights an NLL on the *best*
     completions, which moves the policy towards high reward rather than back to the SFT policy.
   - `preferred_ft` (TRL SFTTrainer on `trl_rankalign.data.top_ranked_completions(lists)`: the best completion of
     each shared list, ties keep the first). No knob: one setting per seed.
   - `raft` (`trl_rankalign.raft.train_raft`, one round): it samples its own K completions per training prompt (the
     180 prompts of the lists) from the current policy, which for one round is the SFT policy, with the lists'
     sampling settings but its own sampling seed per training seed (`5000 + 100 * seed + K`: fresh draws, so the
     seed spread includes the sampling), scores them with the true reward (`tiny_language.reward_fn`), keeps the
     best of each prompt (ties keep the first; fully tied prompts are *kept*, unlike the lists) and runs TRL's
     SFTTrainer on them. No knob: one setting per seed.
   - `rloo` (TRL RLOOTrainer, online RL, on prompt-only rows of the same 180 training prompts) with the true reward
     (`tiny_language.reward_fn`, TRL's reward-function signature), `num_generations` = K, the lists' sampling
     settings (temperature 1, top_k 0, top_p 1, max_completion_length = max_new_tokens), one policy update per
     generation batch (`steps_per_generation` 1, `num_iterations` 1). Knob: TRL's KL coefficient `beta`, swept over
     the betas: RLOO maximises r - beta * KL(pi || pi_SFT) with the sequence-level KL, the objective DPO's beta
     stands for, so the two betas mean the same thing.
   - `iterate_rankdpo`, `iterate_lipo`, `iterate_pro`, `iterate_dpo`, `iterate_rankdpo_rso`
     (`trl_rankalign.iterative.train_iterative`, online listwise): `iterate_rounds` rounds of sample K completions
     per prompt from the *current* policy -> score with the reward -> train RankDPO Plackett-Luce / LiPO-lambda /
     PRO / DPO on each list's best-vs-worst pair, or (`_rso`) Plackett-Luce on the K/2 completions RSO's rejection
     sampling accepts (rso_beta 0.5); reference: the SFT policy throughout. Each round takes the next
     `steps / iterate_rounds * lists_per_step` prompts of the 180 (so a run samples as many prompts as RLOO draws)
     and trains `steps / iterate_rounds` optimizer steps on them (a fresh optimizer and linear schedule per round).
     Knob: beta (PRO: `sft_weight`).
4. Compute budget, identical for every method within a K. *Training*: `steps` optimizer steps, each on
   `lists_per_step * K` completion sequences through the policy (B lists of K for the listwise trainers, B*K/2 pairs
   for the pairwise ones, B*K best completions for Preferred-FT and RAFT, B prompts x K generations for RLOO, B lists
   of K / B*K/2 best-vs-worst pairs / 2B RSO lists of K/2 for iterate), same learning rate; the row's `trained`.
   *Generation*, counted in sampled completions (the row's `generated`, not equalised but reported): the offline lists
   are sampled once up front, 180 prompts x K, and counted in full for every method that trains on them; RSO and RAFT
   sample their own 180 x K candidates; the online methods sample as they train, `steps * lists_per_step * K`
   (RLOO: B prompts x K per step; iterate: the prompts of each round x K). So every method generates 180 K (offline)
   or 160 K (online) completions and trains on 160 K sequences. Evaluation samples are not counted.
5. Evaluation on the 30 held-out prompts: `eval_samples` samples per prompt from the trained policy (temperature 1),
   mean true reward, and the sequence-level KL(pi || pi_SFT) estimated on the same samples as the mean of
   log pi(y) - log pi_SFT(y), summed over the completion tokens (EOS included). The SFT policy itself is the row
   `method="sft"` (KL exactly 0). Along training, the same evaluation with `eval_trace_samples` samples per prompt
   every `eval_every` optimizer steps (a TrainerCallback; the global RNG is saved and restored around it, so tracing
   does not change the run) gives the row's `trace`; iterate is traced at the end of each round (its round
   policies), RAFT (a function, one round) only at the end. The frontier of a method is the upper envelope of all its
   seed-averaged (knob value, step) points, the end points included.

Writes `results/quality.json` (`quality_noisy.json` for noisy labels; one row per run: method, K, beta, seed, reward,
kl, ..., `trace`, plus the knob by its own name for methods whose knob is not beta), the `.png` (the frontiers) and
the `.md` (best reward within KL budgets on the frontier and on the end points, and whether a listwise method's
frontier dominates DPO best-vs-worst and RLOO), the last two from every row in the JSON. With `--merge` the run's rows
replace the rows of the same (method, K, seed, knob value) in the existing JSON and every other row is kept, so a
subset of methods can be (re)run; the SFT rows it recomputes must match the stored ones (same SFT policy, seeds
and evaluation), otherwise it refuses to merge. Merge only runs of the same settings (not `--quick` into a full run).
"""

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
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
    kl_estimate,
    seed_means,
    seeded_trainer_kwargs,
    write_json,
)


LABELS = ("exact", "noisy")


@dataclasses.dataclass
class Settings:
    ks: tuple[int, ...] = (4, 8)
    betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    # The other knobs, paired with `betas` (far from SFT first)
    pro_sft_weights: tuple[float, ...] = (0.001, 0.005, 0.02, 0.1, 0.5)  # PRO: small = far from SFT
    rrhf_weights: tuple[float, ...] = (300.0, 100.0, 30.0, 10.0, 1.0)  # RRHF: large = far from SFT
    slic_margins: tuple[float, ...] = (30.0, 10.0, 3.0, 1.0, 0.3)  # SLiC: ~1/beta
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
        "iterate_rankdpo",
        "iterate_lipo",
        "iterate_pro",
        "iterate_dpo",
        "iterate_rankdpo_rso",
    )
    labels: str = "exact"  # or "noisy": Plackett-Luce-sampled rankings
    noise_tau: float = 1.8  # temperature of the noisy labels' Plackett-Luce model (utilities true_reward / tau)
    label_seed: int = 7
    pretrain_lines: int = 20000
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    list_repeats: int = 2  # lists per training prompt (90 prompts): 180 lists
    max_new_tokens: int = 40
    steps: int = 40
    lists_per_step: int = 4
    learning_rate: float = 1e-3
    iterate_rounds: int = 4  # `steps` split evenly across the rounds
    eval_samples: int = 8  # per held-out prompt (30 prompts), at the end of training
    eval_every: int = 10  # optimizer steps between traced evaluations (iterate: at the end of each round)
    eval_trace_samples: int = 4  # per held-out prompt, at the traced evaluations
    rso_beta: float = 0.5

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}")
        if self.steps % self.iterate_rounds:
            raise ValueError(f"steps ({self.steps}) must split evenly into iterate_rounds ({self.iterate_rounds})")


# The noisy-label variant runs the methods the goal compares (listwise, offline and online, against DPO on
# best-vs-worst pairs and RLOO) plus Preferred-FT, the cheapest strong baseline.
NOISY_METHODS = (
    "dpo_best_worst",
    "rankdpo_pl",
    "rankdpo_lipo",
    "pro",
    "preferred_ft",
    "rloo",
    "iterate_rankdpo",
    "iterate_lipo",
    "iterate_pro",
    "iterate_dpo",
    "iterate_rankdpo_rso",
)

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
    eval_trace_samples=2,
    eval_every=20,
    iterate_rounds=2,
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
    from trl_rankalign.tiny.language import make_corpus
    from trl_rankalign.tiny.model import MODEL_KWARGS, TINY_BUILDER_VERSION, build_tiny_model, build_tiny_tokenizer

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


# -------------------------------------------------------------------------------------------------- noisy labels
def _list_seed(label_seed: int, prompt, completions) -> int:
    """A seed drawn from a list's content: the same list gets the same noisy labels wherever it is labelled."""
    text = json.dumps([label_seed, prompt, list(completions)], sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def plackett_luce_ranks(rewards: list[float], tau: float, seed: int) -> list[float]:
    """One ranking of K completions sampled from the Plackett-Luce model with utilities `rewards / tau`, as rank
    scores (K-1 for the first place, ..., 0 for the last).

    Gumbel-max: the order of `rewards / tau + G`, G i.i.d. standard Gumbel, is a Plackett-Luce sample (Yellott 1977);
    its pairwise marginals are Bradley-Terry's, P(i above j) = sigmoid((r_i - r_j) / tau), and equal rewards are
    ordered at random.
    """
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(len(rewards), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    keys = torch.tensor(rewards, dtype=torch.float64) / tau - torch.log(-torch.log(uniform))  # (K,)
    scores = [0.0] * len(rewards)
    for place, index in enumerate(torch.argsort(keys, descending=True).tolist()):
        scores[index] = float(len(rewards) - 1 - place)
    return scores


def noisy_reward(prompts, completions, *, tau: float, label_seed: int, group: int, **kwargs) -> list[float]:
    """A reward function (TRL's signature) that ranks, instead of scoring: the completions come in consecutive groups
    of `group` for one prompt (as `sample_and_score`, `train_iterative` and TRL's RLOOTrainer pass them); each group
    gets the rank scores of one Plackett-Luce draw of the true reward (`plackett_luce_ranks`)."""
    from trl_rankalign.tiny.language import reward_fn

    if len(completions) % group:
        raise ValueError(f"noisy_reward ranks groups of {group} completions; got {len(completions)}")
    scores = []
    for start in range(0, len(completions), group):
        group_prompts, group_completions = prompts[start : start + group], completions[start : start + group]
        if any(p != group_prompts[0] for p in group_prompts):
            raise ValueError("noisy_reward: a group of completions mixes prompts; it ranks one prompt's samples")
        rewards = reward_fn(group_prompts, group_completions)
        seed = _list_seed(label_seed, group_prompts[0], group_completions)
        scores.extend(plackett_luce_ranks(rewards, tau, seed))
    return scores


def reward_for(settings: Settings, k: int) -> Callable:
    """The reward of the methods that score their own samples: the true reward, or the noisy ranker of groups of K."""
    from trl_rankalign.tiny.language import reward_fn

    if settings.labels == "exact":
        return reward_fn
    reward = functools.partial(noisy_reward, tau=settings.noise_tau, label_seed=settings.label_seed, group=k)
    reward.__name__ = "noisy_reward"  # TRL names reward functions in its logs
    return reward


def pairwise_agreement(true_scores: list[list[float]], labels: list[list[float]]) -> float:
    """Share of the pairs with distinct true scores that `labels` order the same way (over all lists)."""
    agree = total = 0
    for truth, label in zip(true_scores, labels):
        for i, j in itertools.combinations(range(len(truth)), 2):
            if truth[i] != truth[j]:
                total += 1
                agree += (truth[i] - truth[j]) * (label[i] - label[j]) > 0
    return agree / total if total else math.nan


def relabel(lists: list[dict], settings: Settings) -> tuple[list[dict], float]:
    """The lists with the labels of `settings.labels`, and the labels' pairwise agreement with the true order."""
    if settings.labels == "exact":
        return lists, 1.0
    noisy = [
        dict(
            row,
            scores=plackett_luce_ranks(
                row["scores"], settings.noise_tau, _list_seed(settings.label_seed, row["prompt"], row["completions"])
            ),
        )
        for row in lists
    ]
    return noisy, pairwise_agreement([r["scores"] for r in lists], [r["scores"] for r in noisy])


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
    return seeded_trainer_kwargs(ctx.output_dir, s.steps, per_step, s.learning_rate, seed)


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
        samples_dir=str(ctx.cache_dir / f"rso-{Path(ctx.sft_path).name}-K{ctx.k}-n{len(prompts)}-{s.labels}"),
        **_common(ctx, seed, s.lists_per_step * ctx.k // 2),
    )
    return RSOSampler(
        model=ctx.sft_path,
        reward_model=reward_for(s, ctx.k),
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


class _FunctionRun:
    """`train_raft` and `train_iterative` are functions, not trainers: this gives one the `.train()` / `.model` the
    loop uses (`train_function(model, prompts, args, reward=...)` returns the trained model)."""

    def __init__(self, ctx: Context, args, prompts: list[str], train_function: Callable):
        self.ctx, self.args, self.prompts, self.model = ctx, args, prompts, None
        self.train_function = train_function

    def train(self):
        reward = reward_for(self.ctx.settings, self.ctx.k)
        self.model = self.train_function(self.ctx.sft_path, self.prompts, self.args, reward=reward)


def _raft(ctx: Context, _knob: None, seed: int):
    from trl_rankalign.raft import RAFTConfig, train_raft

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
    return _FunctionRun(ctx, args, prompts, train_raft)


def _rloo(ctx: Context, beta: float, seed: int):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

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
        reward_funcs=reward_for(s, ctx.k),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    )


class _IterateRun(_FunctionRun):
    """[`_FunctionRun`] of `train_iterative`, with its round policies for the trace and its per-round metrics."""

    def __init__(self, ctx: Context, args, prompts: list[str]):
        from trl_rankalign.iterative import train_iterative

        super().__init__(ctx, args, prompts, train_iterative)

    def round_policies(self) -> list[tuple[int, Path]]:
        """(optimizer steps so far, saved policy) at the end of every round but the last (the final `.model`)."""
        steps = self.args.max_steps
        return [
            (steps * (r + 1), Path(self.args.output_dir) / f"round_{r}" / "model")
            for r in range(self.args.num_rounds - 1)
        ]

    def rounds(self) -> list[dict]:
        """The per-round metrics `train_iterative` wrote (reward and KL of each round's own samples, list counts)."""
        path = Path(self.args.output_dir) / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _iterate(method: str, select: str = "all") -> Callable:
    """Online listwise training: `iterate_rounds` rounds of sample -> score -> train (module docstring, 3 and 4)."""

    def build(ctx: Context, knob: float, seed: int):
        from trl_rankalign.iterative import IterativeConfig

        s = ctx.settings
        steps_per_round = s.steps // s.iterate_rounds
        # Sequences per step: B lists of K, B*K/2 best-vs-worst pairs, or 2B RSO lists of K/2 (all B*K)
        list_size = 2 if method == "dpo" else ctx.k // 2 if select == "rso" else ctx.k
        output_dir = tempfile.mkdtemp(prefix=f"iterate-{method}-{select}-K{ctx.k}-s{seed}-", dir=ctx.output_dir)
        knob_args = {"pro_sft_weight": knob} if method == "pro" else {"beta": knob}
        args = IterativeConfig(
            method=method,
            select=select,
            num_rounds=s.iterate_rounds,
            num_samples=ctx.k,
            prompts_per_round=steps_per_round * s.lists_per_step,
            num_accepted=max(2, ctx.k // 2),
            rso_beta=s.rso_beta,
            reference="sft",
            sampling_temperature=1.0,
            sampling_top_k=0,
            sampling_top_p=1.0,
            max_new_tokens=s.max_new_tokens,
            sampling_batch_size=16,
            sampling_seed=7000 + 100 * seed + ctx.k,
            **knob_args,
            **_common(ctx, seed, s.lists_per_step * ctx.k // list_size)
            | {"max_steps": steps_per_round, "output_dir": output_dir},
        )
        prompts = prompt_split()[0] * s.list_repeats  # the prompts of the shared lists
        return _IterateRun(ctx, args, prompts)

    return build


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
    "iterate_rankdpo": (_iterate("rankdpo"), "beta"),
    "iterate_lipo": (_iterate("lipo"), "beta"),
    "iterate_pro": (_iterate("pro"), "sft_weight"),
    "iterate_dpo": (_iterate("dpo"), "beta"),
    "iterate_rankdpo_rso": (_iterate("rankdpo", select="rso"), "beta"),
}
# The methods that sample as they train (the rest train on samples drawn once up front from the SFT policy)
ONLINE = frozenset({"rloo", "iterate_rankdpo", "iterate_lipo", "iterate_pro", "iterate_dpo", "iterate_rankdpo_rso"})
# The listwise methods whose frontier the goal compares with DPO best-vs-worst and RLOO
LISTWISE = (
    "rankdpo_pl",
    "rankdpo_lipo",
    "pro",
    "rrhf",
    "slic",
    "iterate_rankdpo",
    "iterate_lipo",
    "iterate_pro",
    "iterate_rankdpo_rso",
)
BASELINES = ("dpo_best_worst", "rloo", "iterate_dpo")
GOAL_BASELINES = ("dpo_best_worst", "rloo")  # the goal; iterate_dpo is the online DPO beside it
KNOB_VALUES = {
    "beta": "betas",
    "sft_weight": "pro_sft_weights",
    "rrhf_weight": "rrhf_weights",
    "margin": "slic_margins",
}
KNOB_LABELS = {"beta": "β", "sft_weight": "w", "rrhf_weight": "λ", "margin": "δ"}


def knob_values(settings: Settings, knob: str | None) -> tuple:
    return (None,) if knob is None else getattr(settings, KNOB_VALUES[knob])


def budget(method: str, settings: Settings, k: int) -> dict:
    """The row's compute counts (module docstring, 4): sequences trained on, completions generated."""
    trained = settings.steps * settings.lists_per_step * k
    if method == "sft":
        return {"trained": 0, "generated": 0}
    if method in ONLINE:  # RLOO: B prompts x K per step; iterate: each round's prompts x K
        return {"trained": trained, "generated": trained}
    return {"trained": trained, "generated": len(prompt_split()[0]) * settings.list_repeats * k}


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


def _trace_callback(measure: Callable, every: int, last: int):
    """A TrainerCallback calling `measure(step, model)` every `every` optimizer steps before `last`."""
    from transformers import TrainerCallback

    class Trace(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 and state.global_step < last:
                measure(state.global_step, model)

    return Trace()


def train_traced(runner, measure: Callable, settings: Settings) -> None:
    """Train `runner`, calling `measure(step, policy)` along the way: every `eval_every` optimizer steps for a
    trainer, on each round's policy for iterate, never for RAFT (one round, a function: only its end point)."""
    from transformers import AutoModelForCausalLM, Trainer

    if isinstance(runner, Trainer):
        runner.add_callback(_trace_callback(measure, settings.eval_every, settings.steps))
    runner.train()
    if isinstance(runner, _IterateRun):
        for step, path in runner.round_policies():
            measure(step, AutoModelForCausalLM.from_pretrained(path))


def result_stem(settings: Settings) -> str:
    """`quality` for exact labels, `quality_noisy` for noisy ones: the name of the JSON, PNG and MD results."""
    return "quality" if settings.labels == "exact" else f"quality_{settings.labels}"


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
    stem = result_stem(settings)
    json_path = output_dir / f"{stem}.json"
    previous = json.loads(json_path.read_text()) if merge and json_path.is_file() else []
    if merge:
        print(f"[quality] --merge: {len(previous)} stored rows in {json_path}", flush=True)

    def record(row):
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("trace", "rounds")}), flush=True)

    def save():  # partial results survive an interruption; with --merge, so do the stored rows
        write_json(json_path, merge_rows(previous, results))

    for seed in settings.seeds:
        metrics = evaluate(reference, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed)
        for k in settings.ks:  # the SFT point is the same for every K; recorded per K for the plots
            record({"method": "sft", "K": k, "beta": None, "seed": seed, **metrics, **budget("sft", settings, k)})
    check_sft_rows(previous, results)

    with tempfile.TemporaryDirectory() as tmp:
        for k in settings.ks:
            lists, agreement = relabel(make_lists(sft_path, k, settings, cache_dir), settings)
            if settings.labels != "exact":
                print(
                    f"[labels] K={k}: {settings.labels}, tau={settings.noise_tau}: pairwise agreement with the true "
                    f"order {agreement:.3f}",
                    flush=True,
                )
            labels = {"labels": settings.labels}
            if settings.labels == "noisy":
                labels |= {"noise_tau": settings.noise_tau, "label_agreement": agreement}
            ctx = Context(sft_path, lists, k, settings, tmp, cache_dir)
            for name in settings.methods:
                build, knob = METHODS[name]
                for value, seed in itertools.product(knob_values(settings, knob), settings.seeds):
                    t0 = time.time()
                    trace = []

                    def measure(step, policy, seed=seed, trace=trace):
                        was_training = policy.training
                        with torch.random.fork_rng(devices=[]):  # the run's own random draws stay as they were
                            point = evaluate(
                                policy,
                                reference,
                                tokenizer,
                                eval_prompts,
                                settings.eval_trace_samples,
                                settings,
                                1000 + seed,
                            )
                        policy.train(was_training)
                        trace.append({"step": step, **point})

                    runner = build(ctx, value, seed)
                    train_traced(runner, measure, settings)
                    metrics = evaluate(
                        runner.model, reference, tokenizer, eval_prompts, settings.eval_samples, settings, 1000 + seed
                    )
                    beta = value if knob == "beta" else None
                    extra = {knob: value} if knob not in ("beta", None) else {}
                    rounds = {"rounds": runner.rounds()} if isinstance(runner, _IterateRun) else {}
                    record(
                        {"method": name, "K": k, "beta": beta, "seed": seed, **extra, **metrics}
                        | {"steps": settings.steps, **budget(name, settings, k), **labels}
                        | {"seconds": round(time.time() - t0, 1), "trace": trace, **rounds}
                    )
                    del runner
                    save()
    save()
    everything = merge_rows(previous, results)
    report = summary_table(everything)
    (output_dir / f"{stem}.md").write_text(report + "\n")
    plot(everything, output_dir / f"{stem}.png")
    print(report)
    print(f"[quality] done in {time.time() - started:.0f}s -> {output_dir}")
    return results


# ------------------------------------------------------------------------------------------------------- reports
def _points(results: list[dict]) -> list[dict]:
    """End points: seed means per (method, K, knob value); the knob value, whatever its name, is stored under "beta"."""
    rows = [dict(r, beta=knob_value(r)) for r in results]
    return seed_means(rows, keys=("method", "K", "beta"))


def trace_points(results: list[dict]) -> list[dict]:
    """Every measured point: seed means per (method, K, knob value, step), the traced points and the end point (its
    step is the run's `steps`); the SFT row is step 0. The knob value is stored under "beta"."""
    rows = []
    for r in results:
        base = {"method": r["method"], "K": r["K"], "beta": knob_value(r)}
        for point in r.get("trace", []):
            rows.append({**base, "step": point["step"], "reward": point["reward"], "kl": point["kl"]})
        end = 0 if r["method"] == "sft" else r.get("steps", -1)
        rows.append({**base, "step": end, "reward": r["reward"], "kl": r["kl"]})
    return seed_means(rows, keys=("method", "K", "beta", "step"))


def envelope(points: list[dict]) -> list[dict]:
    """The upper envelope (Pareto frontier) of reward over KL: the points, by increasing KL, whose reward beats every
    point of lower or equal KL. `best_within_budget(points, b)` is its last point with KL <= b."""
    frontier = []
    for p in sorted(points, key=lambda p: (p["kl"], -p["reward"])):
        if not frontier or p["reward"] > frontier[-1]["reward"]:
            frontier.append(p)
    return frontier


def dominance(
    points: list[dict], baseline: list[dict], max_kl: float = 10.0, start: list[dict] = ()
) -> tuple[float, float | None]:
    """How far the frontier of `points` stays above the frontier of `baseline` over the KL budgets up to `max_kl`:
    the smallest reward margin (best reward within budget b of `points` minus that of `baseline`) over every budget
    b <= max_kl at which `baseline` has a point, and that budget. Both frontiers are step functions that change only
    at their points' KLs, so those budgets (and `max_kl`) are all there is to check. `start` (the SFT point, where
    every run starts) joins both frontiers; without it, `points` having no point within a budget where the baseline
    has one gives -inf. Dominates at every budget iff the margin is >= 0."""
    start = list(start)
    budgets = sorted({p["kl"] for p in points + baseline if p["kl"] <= max_kl} | {max_kl})
    worst, where = math.inf, None
    for b in budgets:
        if best_within_budget(baseline, b) is None:
            continue
        base, mine = best_within_budget(baseline + start, b), best_within_budget(points + start, b)
        margin = -math.inf if mine is None else mine["reward"] - base["reward"]
        if margin < worst:
            worst, where = margin, b
    return worst, where


def _method_order(results: list[dict]) -> list[str]:
    present = list(dict.fromkeys(r["method"] for r in results))
    known = ["sft", *METHODS]
    return [m for m in known if m in present] + [m for m in present if m not in known]


def _knob_text(method: str, value) -> str:
    label = KNOB_LABELS.get(METHODS[method][1]) if method in METHODS else None
    return "" if value is None or label is None else f"{label}={value:g}"


def _budget_of(results: list[dict], method: str, k: int) -> str:
    row = next((r for r in results if r["method"] == method and r["K"] == k and "generated" in r), None)
    return "–" if row is None else f"{row['generated']} / {row['trained']}"


KL_BUDGETS = (1.0, 2.0, 5.0, 10.0)
GOAL_KL = 10.0


def summary_table(results: list[dict]) -> str:
    """Markdown: per K and method, the best seed-mean reward within each KL budget, on the frontier (every traced
    point) and on the end points only; then the goal's dominance check."""
    trace, ends = trace_points(results), _points(results)
    methods = _method_order(results)
    ks = sorted({p["K"] for p in ends})
    budget_head = " | ".join(f"KL ≤ {b:g}" for b in KL_BUDGETS)
    budget_rule = " | ".join("---" for _ in KL_BUDGETS)
    lines = [
        "Frontier: best seed-mean reward among every (knob value, step) point of a method within each KL budget "
        "(`–`: none that close to the SFT policy). generated / trained: completions sampled / sequences trained on.",
        "",
        f"| K | method | generated / trained | {budget_head} | point at KL ≤ {GOAL_KL:g} (KL, knob, step) |",
        f"| --- | --- | --- | {budget_rule} | --- |",
    ]
    for k in ks:
        for method in methods:
            mine = [p for p in trace if p["method"] == method and p["K"] == k]
            if not mine:
                continue
            cells = [best_within_budget(mine, b) for b in KL_BUDGETS]
            top = cells[-1]
            where = "–"
            if top is not None:
                knob = _knob_text(method, top["beta"])
                where = f"{top['reward']:.2f} ± {top['reward_std']:.2f} (KL {top['kl']:.2f}"
                where += f"{', ' + knob if knob else ''}, step {top['step']})"
            lines.append(
                f"| {k} | {method} | {_budget_of(results, method, k)} | "
                + " | ".join("–" if c is None else f"{c['reward']:.2f}" for c in cells)
                + f" | {where} |"
            )
    lines += [
        "",
        "End points only (the policy after all steps): best seed-mean reward within each KL budget.",
        "",
        f"| K | method | {budget_head} | best reward (its KL, knob) |",
        f"| --- | --- | {budget_rule} | --- |",
    ]
    for k in ks:
        for method in methods:
            mine = [p for p in ends if p["method"] == method and p["K"] == k]
            if not mine:
                continue
            cells = [best_within_budget(mine, b) for b in KL_BUDGETS]
            top = max(mine, key=lambda p: p["reward"])
            knob = _knob_text(method, top["beta"])
            lines.append(
                f"| {k} | {method} | "
                + " | ".join("–" if c is None else f"{c['reward']:.2f}" for c in cells)
                + f" | {top['reward']:.2f} ± {top['reward_std']:.2f} (KL {top['kl']:.2f}{', ' + knob if knob else ''}) |"
            )
    baselines = [b for b in BASELINES if any(p["method"] == b for p in trace)]
    goal = [b for b in GOAL_BASELINES if b in baselines]
    listwise = [m for m in LISTWISE if any(p["method"] == m for p in trace)]
    if baselines and listwise:
        lines += [
            "",
            f"Goal: a listwise frontier at or above those of {' and '.join(GOAL_BASELINES)} at every KL budget ≤ "
            f"{GOAL_KL:g}. Cell: the smallest margin (listwise minus baseline, seed means) over those budgets and the "
            "budget where it occurs; ≥ 0 dominates. Every frontier starts at the SFT policy (KL 0, its reward).",
            "",
            "| K | listwise method | "
            + " | ".join(f"vs {b}" for b in baselines)
            + " | dominates "
            + " and ".join(goal)
            + " |",
            "| --- | --- | " + " | ".join("---" for _ in baselines) + " | --- |",
        ]
        for k in ks:
            start = [p for p in trace if p["method"] == "sft" and p["K"] == k]
            for method in listwise:
                mine = [p for p in trace if p["method"] == method and p["K"] == k]
                if not mine:
                    continue
                cells, wins = [], []
                for b in baselines:
                    theirs = [p for p in trace if p["method"] == b and p["K"] == k]
                    margin, where = dominance(mine, theirs, GOAL_KL, start=start)
                    if b in goal:
                        wins.append(margin >= 0)
                    cells.append(
                        f"{margin:+.2f} (KL ≤ {where:.2f})" if math.isfinite(margin) else f"none ≤ {where:.2f}"
                    )
                verdict = "yes" if len(wins) == len(GOAL_BASELINES) and all(wins) else "no"
                lines.append(f"| {k} | {method} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Per K, two panels: the listwise methods against the baselines, then the other methods against them. Lines are
    the frontiers (upper envelopes of the seed-mean points), faint markers every seed-mean (knob, step) point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = trace_points(results)
    ks = sorted({p["K"] for p in trace})
    methods = _method_order(results)
    cmap = plt.get_cmap("tab20")
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the 10 dark colours first, then their light twins
    colors = {m: cmap(order[i % 20]) for i, m in enumerate(methods)}
    markers = {m: "*osD^vPXhp<>d8H"[i % 15] for i, m in enumerate(methods)}
    groups = [
        ("listwise vs the baselines", [m for m in methods if m in LISTWISE or m == "sft"]),
        ("other methods vs the baselines", [m for m in methods if m not in LISTWISE and m not in BASELINES]),
    ]
    fig, axes = plt.subplots(len(groups), len(ks), figsize=(7 * len(ks), 5 * len(groups)), squeeze=False)
    for col, k in enumerate(ks):
        for row, (title, group) in enumerate(groups):
            ax = axes[row][col]
            for method in [*group, *[b for b in BASELINES if b in methods]]:
                mine = [p for p in trace if p["method"] == method and p["K"] == k]
                if not mine:
                    continue
                frontier = envelope(mine)
                baseline = method in BASELINES
                ax.step(
                    [p["kl"] for p in frontier],
                    [p["reward"] for p in frontier],
                    where="post",
                    color="black" if method == "dpo_best_worst" else colors[method],
                    linestyle="--" if baseline else "-",
                    linewidth=2.2 if baseline else 1.4,
                    marker=markers[method],
                    markersize=9 if method == "sft" else 5,
                    label=method,
                )
                ax.scatter([p["kl"] for p in mine], [p["reward"] for p in mine], color=colors[method], alpha=0.15, s=8)
            ax.axvline(GOAL_KL, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlim(-0.5, 2 * GOAL_KL)
            shown = [p["reward"] for p in trace if p["K"] == k and p["kl"] <= 2 * GOAL_KL]
            if shown:
                pad = 0.05 * (max(shown) - min(shown) + 1e-9)
                ax.set_ylim(min(shown) - pad, max(shown) + pad)
            ax.set_title(f"K = {k}: {title}", fontsize=10)
            ax.set_xlabel("sequence-level KL(π ‖ π_SFT), nats, sampled (axis cut at 20)")
            ax.set_ylabel("mean true reward, held-out prompts")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=4, one knob value, one seed")
    parser.add_argument(
        "--labels",
        choices=LABELS,
        default="exact",
        help="exact: rank by the true reward; noisy: Plackett-Luce-sampled rankings (results in quality_noisy.*)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--ks", type=int, nargs="+", help="override the list sizes K")
    parser.add_argument("--betas", type=float, nargs="+", help="override the beta sweep")
    parser.add_argument("--learning-rate", type=float, help="override the learning rate")
    parser.add_argument(
        "--methods", nargs="+", help=f"subset of the registry (space- or comma-separated): {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the existing results JSON, replacing those this run re-measures (same method, K, "
        "seed, knob value); the table and plot are drawn from all rows",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--report-only", action="store_true", help="redraw the table and plot from the stored JSON")
    args = parser.parse_args(argv)
    settings = Settings(**(QUICK if args.quick else {}), labels=args.labels)
    if args.report_only:
        stem = result_stem(settings)
        rows = json.loads((args.output_dir / f"{stem}.json").read_text())
        report = summary_table(rows)
        (args.output_dir / f"{stem}.md").write_text(report + "\n")
        plot(rows, args.output_dir / f"{stem}.png")
        print(report)
        return 0
    if args.methods:
        methods = tuple(m for arg in args.methods for m in arg.split(",") if m)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            parser.error(f"unknown method(s) {unknown}; the registry has {list(METHODS)}")
        settings.methods = methods
    elif args.labels == "noisy":
        settings.methods = NOISY_METHODS
    if args.ks:
        settings.ks = tuple(args.ks)
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
