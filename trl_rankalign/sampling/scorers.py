"""Scoring completions: a reward model checkpoint or a Python callable, behind one interface.

A *scorer* is any callable `(prompts, completions) -> list[float]` with one reward per (prompt, completion) pair,
higher is better; prompts and completions are strings or chat-message lists, as in the ranked schema. It is what
RSO, RAFT, the `rank` stage and win-rate evaluation call. `as_scorer` turns a checkpoint path, a loaded
sequence-classification model or a plain function into one, and every result is checked (`check_rewards`) so a
reward model with the wrong head or a function returning NaN fails loudly instead of poisoning a dataset.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational


Scorer = Callable[[list, list], list[float]]


def check_rewards(rewards: Any, num_expected: int, source: str) -> list[float]:
    """Validate a scorer's output: `num_expected` finite floats. Raises `ValueError` naming the index."""
    if isinstance(rewards, torch.Tensor):
        if rewards.dim() == 2 and rewards.size(1) == 1:
            rewards = rewards[:, 0]
        if rewards.dim() != 1:
            raise ValueError(f"{source} returned rewards of shape {tuple(rewards.shape)}; expected ({num_expected},)")
        rewards = rewards.tolist()
    if not isinstance(rewards, Sequence) or isinstance(rewards, str):
        raise ValueError(f"{source} returned {type(rewards).__name__}; expected a list of {num_expected} floats")
    if len(rewards) != num_expected:
        raise ValueError(f"{source} returned {len(rewards)} rewards for {num_expected} completions")
    checked = []
    for i, reward in enumerate(rewards):
        try:
            value = float(reward)
        except (TypeError, ValueError):
            raise ValueError(f"{source} returned a non-numeric reward at index {i}: {reward!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{source} returned a non-finite reward at index {i}: {value}")
        checked.append(value)
    return checked


class CallableScorer:
    """Wraps a function `(prompts, completions) -> rewards` and validates what it returns."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function
        self.name = getattr(function, "__name__", type(function).__name__)

    def __call__(self, prompts: list, completions: list) -> list[float]:
        return check_rewards(self.function(prompts, completions), len(completions), f"reward function {self.name!r}")


class RewardModelScorer:
    """Scores with a sequence-classification reward model (one logit), as TRL's `RewardTrainer` trains it.

    The text scored is what `RewardTrainer` saw: prompt + completion + EOS for standard data, the chat template of
    prompt + completion messages for conversational data.

    Args:
        model: a checkpoint path / hub id, or a loaded `PreTrainedModel` with `num_labels == 1`.
        tokenizer: defaults to the checkpoint's.
        batch_size: sequences per forward.
        max_length: truncate longer sequences (keeping the start), None for no limit.
        device: defaults to the model's device (a path is loaded on CUDA when available).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ):
        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        elif tokenizer is None:
            raise ValueError("Pass the reward model's `tokenizer` together with a loaded model.")
        if model.config.num_labels != 1:
            raise ValueError(f"A reward model has one output (num_labels=1); this one has {model.config.num_labels}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.name = getattr(model.config, "_name_or_path", "reward model") or "reward model"

    def _text(self, prompt: Any, completion: Any) -> str:
        if is_conversational({"prompt": prompt}):
            return self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        eos = self.tokenizer.eos_token or ""
        return prompt + completion + ("" if completion.endswith(eos) else eos)

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        texts = [self._text(p, c) for p, c in zip(prompts, completions)]
        rewards = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                add_special_tokens=False,
                return_tensors="pt",
            ).to(self.device)
            rewards.append(self.model(**batch).logits.float().cpu())
        logits = torch.cat(rewards) if rewards else torch.zeros(0, 1)
        return check_rewards(logits, len(completions), f"reward model {self.name!r}")


def as_scorer(
    reward: str | PreTrainedModel | Callable[..., Any], tokenizer: PreTrainedTokenizerBase | None = None, **kwargs
) -> Scorer:
    """A scorer from a reward-model path, a loaded reward model (with its `tokenizer`) or a Python callable."""
    if isinstance(reward, RewardModelScorer | CallableScorer):
        return reward
    if isinstance(reward, str | PreTrainedModel):
        return RewardModelScorer(reward, tokenizer=tokenizer, **kwargs)
    if callable(reward):
        return CallableScorer(reward)
    raise TypeError(f"Cannot score with a {type(reward).__name__}: pass a checkpoint path, a model or a callable.")
