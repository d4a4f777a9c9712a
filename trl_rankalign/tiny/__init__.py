"""The embedded tiny default: a review language with a known reward, a tiny model and tokenizer, shipped datasets.

- `language`: the tiny review language and its true reward ([`true_reward`], [`reward_fn`]);
- `model`: the tiny Qwen2/Llama model and byte-level BPE tokenizer, built offline and cached ([`tiny_model_path`]);
- `datasets`: the shipped ranked and SFT rows, the prompt set and reward-model pairs.
"""

from .datasets import tiny_prompt_dataset, tiny_ranked_dataset, tiny_reward_dataset, tiny_sft_dataset
from .language import reward_fn, true_reward
from .model import (
    ASSETS_DIR,
    CHAT_TEMPLATE,
    CORPUS_PATH,
    RANKED_PATH,
    SFT_PATH,
    build_tiny_model,
    build_tiny_tokenizer,
    load_tiny,
    tiny_model_path,
)
from .reward_model import train_tiny_reward_model


__all__ = [
    "ASSETS_DIR",
    "CHAT_TEMPLATE",
    "CORPUS_PATH",
    "RANKED_PATH",
    "SFT_PATH",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "load_tiny",
    "reward_fn",
    "tiny_model_path",
    "tiny_prompt_dataset",
    "tiny_ranked_dataset",
    "tiny_reward_dataset",
    "tiny_sft_dataset",
    "train_tiny_reward_model",
    "true_reward",
]
