"""Helpers shared by the benchmarks: CPU trainer settings, sequence log-probs and the KL estimate, frontiers, RSS."""

import json
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = RESULTS_DIR / "cache"  # gitignored: pre-trained SFT policies and sampled lists, reused across runs

# Nothing here may reach a hub (and TRL pings telemetry unless told not to).
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
}.items():
    os.environ.setdefault(_key, _value)


def cpu_trainer_kwargs(output_dir: str | os.PathLike, **overrides) -> dict:
    """Config kwargs every benchmark trainer shares: fp32, no checkpointing, CPU, no saving, no logging."""
    kwargs = dict(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return kwargs


def seeded_trainer_kwargs(
    output_dir: str | os.PathLike, steps: int, per_step: int, learning_rate: float, seed: int, **overrides
) -> dict:
    """[`cpu_trainer_kwargs`] for a run of `steps` optimizer steps of `per_step` rows, seeded (model and data order)."""
    return cpu_trainer_kwargs(
        output_dir,
        max_steps=steps,
        per_device_train_batch_size=per_step,
        learning_rate=learning_rate,
        seed=seed,
        data_seed=seed,
        **overrides,
    )


def completion_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probs `(N,)` of the completion tokens of `N` (left- or right-padded) sequences.

    Args:
        model: a causal LM returning `.logits` `(N, L, V)` from `input_ids`, `attention_mask` and `position_ids`.
        input_ids: `(N, L)` prompt + completion ids.
        attention_mask: `(N, L)` 1 on real tokens.
        completion_mask: `(N, L)` 1 on the completion tokens whose log-probs are summed (each predicted from the
            tokens before it).

    Position ids are taken from the attention mask, as `generate` does, so left-padded prompts are scored exactly as
    they were sampled.
    """
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (N, L)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (N, L - 1, V)
    token_logps = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (N, L - 1)
    return (token_logps * completion_mask[:, 1:]).sum(dim=-1)  # (N,)


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> tuple[float, float]:
    """Monte-Carlo KL(π ‖ π_ref) from samples y ~ π: mean and standard error of log π(y) − log π_ref(y)."""
    diff = (policy_logps - reference_logps).double()  # (N,)
    stderr = diff.std().item() / diff.numel() ** 0.5 if diff.numel() > 1 else float("nan")
    return diff.mean().item(), stderr


def completion_mask_after(new_tokens: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """`(N, T)` mask of generated tokens up to and including the first stop token (all T when none is hit)."""
    is_stop = torch.zeros_like(new_tokens, dtype=torch.bool)
    for stop in stop_ids:
        is_stop |= new_tokens == stop
    before = is_stop.long().cumsum(dim=1) - is_stop.long()  # number of stop tokens strictly before each position
    return (before == 0).long()


def seed_means(rows: list[dict], keys: Sequence[str] = ("method", "K", "beta")) -> list[dict]:
    """Average `reward` and `kl` over seeds for each configuration `keys`; adds standard deviations and counts."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        reward = torch.tensor([m["reward"] for m in members], dtype=torch.float64)
        kl = torch.tensor([m["kl"] for m in members], dtype=torch.float64)
        out.append(
            {
                **dict(zip(keys, key)),
                "reward": reward.mean().item(),
                "reward_std": reward.std().item() if len(members) > 1 else 0.0,
                "kl": kl.mean().item(),
                "kl_std": kl.std().item() if len(members) > 1 else 0.0,
                "seeds": len(members),
            }
        )
    return out


def best_within_budget(points: list[dict], budget: float) -> dict | None:
    """The point with the highest `reward` among those with `kl <= budget` (None when there is none)."""
    feasible = [p for p in points if p["kl"] <= budget]
    return max(feasible, key=lambda p: p["reward"]) if feasible else None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
