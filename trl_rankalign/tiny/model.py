# Copyright 2025 The trl-rankalign authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
The embedded default: a tiny causal LM and its tokenizer, built locally from text this package ships.

What is built:

- a byte-level BPE tokenizer trained on `assets/tiny_corpus.txt`, the text of the tiny review language
  ([`trl_rankalign.tiny.language`]): 256 byte symbols, 4 special tokens `<|pad|>`, `<|endoftext|>` (EOS),
  `<|im_start|>`, `<|im_end|>`, and merges, up to 1024 tokens (707 with the shipped corpus, whose small vocabulary
  is exhausted before 1024: every word of the language is then a single token); a ChatML chat template with
  `{% generation %}` markers around assistant turns, prefix-preserving as TRL requires;
- a randomly initialised Qwen2 (default) or Llama causal LM: hidden size 64, 2 layers, 4 attention heads, 2 key/value
  heads, MLP 128, max 512 positions, tied embeddings, float32 — about 0.12M parameters, about 0.5 MB on disk.

Both are deterministic: the same corpus gives the same vocabulary, the same seed gives the same weights. Building takes
about a second on a CPU. [`tiny_model_path`] saves both with `save_pretrained` in a local cache folder (once; later
calls reuse it), so the tiny recipes can pass a plain path as `model_name_or_path`. Nothing here, or in loading the
result, reaches a model hub.

The shipped ranked-preference and SFT data of the tiny language are loaded with [`tiny_ranked_dataset`] and
[`tiny_sft_dataset`]. To regenerate the assets: `python scripts/make_tiny_assets.py`.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


__all__ = [
    "TINY_BUILDER_VERSION",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "load_tiny",
    "tiny_model_path",
]

# Bump when anything that changes the built tokenizer or model changes (sizes, template, special tokens, init): it is
# part of the cache key, so stale cached models are never reused.
TINY_BUILDER_VERSION = "1"

ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # trl_rankalign/tiny/assets
CORPUS_PATH = ASSETS_DIR / "tiny_corpus.txt"
RANKED_PATH = ASSETS_DIR / "tiny_ranked.jsonl"
SFT_PATH = ASSETS_DIR / "tiny_sft.jsonl"

VOCAB_SIZE = 1024
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN]

# ChatML. Assistant content and its `<|im_end|>` sit inside `{% generation %}` so that TRL's `assistant_only_loss`
# trains the end-of-turn token. Rendering `messages[:-1]` with `add_generation_prompt=True` is an exact prefix of
# rendering `messages` when the last message is an assistant turn (no content is stripped or rewritten).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' + '\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# Pre-tokenization split of Qwen2 (GPT-2's byte-level regex with case-insensitive contractions, single digits, and
# newlines kept with the preceding punctuation). `AutoTokenizer` loads any folder whose config says `qwen2` as
# `Qwen2Tokenizer`, which rebuilds the pipeline as NFC + this split + byte-level (it keeps only vocab and merges); the
# tiny tokenizer uses that same pipeline, so the tokenizer built here, the one loaded for `arch="qwen2"` and the one
# loaded for `arch="llama"` (which reads `tokenizer.json` as is) all produce identical ids on any text.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Role names the chat template renders: added to the tokenizer's training text so each is a single token.
_EXTRA_TRAINING_TEXT = ["system", "user", "assistant"]

MODEL_KWARGS = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
MAX_PARAMETERS = 5_000_000
_CONFIG_CLASSES = {"qwen2": Qwen2Config, "llama": LlamaConfig}


def _read_corpus(corpus_path: str | os.PathLike | None) -> list[str]:
    path = Path(corpus_path) if corpus_path is not None else CORPUS_PATH
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def build_tiny_tokenizer(corpus_path: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """
    Train the tiny byte-level BPE tokenizer on the shipped corpus (or `corpus_path`, one text per line).

    The tokenizer has at most 1024 tokens; special tokens `<|pad|>` (id 0, padding), `<|endoftext|>` (id 1, EOS),
    `<|im_start|>` and `<|im_end|>` (ids 2 and 3, ChatML); no BOS token; a ChatML chat template. Pre-tokenization is
    Qwen2's byte-level split (a GPT-2 style regex, no prefix space), so that `AutoTokenizer`, which loads a Qwen2
    folder as `Qwen2Tokenizer`, reproduces it exactly; a prompt ending with `":"` followed by a completion starting
    with `" "` tokenizes as the prompt's tokens followed by the completion's. Training is deterministic: the same
    corpus always gives the same vocabulary and merges.

    Args:
        corpus_path (`str` or `os.PathLike`, *optional*):
            Text file to train on; defaults to `assets/tiny_corpus.txt`.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: the tokenizer, padding on the right.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_read_corpus(corpus_path) + _EXTRA_TRAINING_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        extra_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_KWARGS["max_position_embeddings"],
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, arch: str = "qwen2", seed: int = 0) -> PreTrainedModel:
    """
    Build the tiny causal LM, randomly initialised with `seed`, in float32.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerFast`]):
            Tokenizer from [`build_tiny_tokenizer`]; sets the vocabulary size and the special token ids.
        arch (`str`, *optional*, defaults to `"qwen2"`):
            `"qwen2"` ([`~transformers.Qwen2Config`]) or `"llama"` ([`~transformers.LlamaConfig`]).
        seed (`int`, *optional*, defaults to `0`):
            Seed of `torch.manual_seed` before initialisation: the same seed gives the same weights.

    Returns:
        [`~transformers.PreTrainedModel`]: the model (hidden 64, 2 layers, ~0.12M parameters) in eval mode. Its
        generation config stops on `<|endoftext|>` or `<|im_end|>` and pads with `<|pad|>`.
    """
    if arch not in _CONFIG_CLASSES:
        raise ValueError(f"Unknown arch {arch!r}; expected one of {sorted(_CONFIG_CLASSES)}.")
    config = _CONFIG_CLASSES[arch](
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_KWARGS,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    num_parameters = sum(p.numel() for p in model.parameters())
    if num_parameters > MAX_PARAMETERS:
        raise AssertionError(f"The tiny model has {num_parameters} parameters, more than {MAX_PARAMETERS}.")
    # Stop on either end marker: `<|endoftext|>` ends a plain completion, `<|im_end|>` ends a ChatML assistant turn.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END_TOKEN)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model


def _cache_key(corpus_path: str | os.PathLike | None) -> str:
    """Short hash of everything the build depends on: corpus, builder version, template, sizes."""
    digest = hashlib.sha256()
    digest.update(TINY_BUILDER_VERSION.encode())
    digest.update(CHAT_TEMPLATE.encode())
    digest.update(json.dumps(MODEL_KWARGS, sort_keys=True).encode())
    digest.update(Path(corpus_path if corpus_path is not None else CORPUS_PATH).read_bytes())
    return digest.hexdigest()[:10]


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TRL_RANKALIGN_CACHE"):
        return Path(os.environ["TRL_RANKALIGN_CACHE"])
    return Path.home() / ".cache" / "trl_rankalign"


def tiny_model_path(arch: str = "qwen2", seed: int = 0, cache_dir: str | os.PathLike | None = None) -> str:
    """
    Path of a folder holding the tiny model and tokenizer (`save_pretrained` format), built on the first call.

    The folder is `<cache>/tiny-<arch>-seed<seed>-<hash>`, where `<cache>` is `cache_dir`, else the environment
    variable `TRL_RANKALIGN_CACHE`, else `~/.cache/trl_rankalign`, and `<hash>` covers the shipped corpus and
    `TINY_BUILDER_VERSION`. A later call finds the folder and returns it without rebuilding. The build writes to a
    temporary folder that is renamed into place with `os.replace`, so concurrent processes never see a partial
    folder; when two race, the first rename wins and the other's build is discarded.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2"`):
            `"qwen2"` or `"llama"`.
        seed (`int`, *optional*, defaults to `0`):
            Initialisation seed.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Where to cache; see above.

    Returns:
        `str`: the folder, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    if arch not in _CONFIG_CLASSES:
        raise ValueError(f"Unknown arch {arch!r}; expected one of {sorted(_CONFIG_CLASSES)}.")
    path = _cache_root(cache_dir) / f"tiny-{arch}-seed{seed}-{_cache_key(None)}"

    def build(folder: Path) -> None:
        tokenizer = build_tiny_tokenizer()
        build_tiny_model(tokenizer, arch=arch, seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder_once(path, build)


def build_folder_once(path: Path, build: Callable[[Path], None]) -> str:
    """`path` as a model folder (it holds `config.json`), built by `build(temporary folder)` unless it exists. The build
    writes a temporary folder beside it that is renamed into place with `os.replace`, so concurrent processes never see a
    partial folder; when two race, the first rename wins and the other's build is discarded."""
    if (path / "config.json").is_file():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process renamed its build into place first (a non-empty target cannot be replaced): use it.
            if not (path / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


def load_tiny(arch: str = "qwen2", seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Load the tiny model (float32) and tokenizer from [`tiny_model_path`], building and caching them if needed.

    Returns:
        `tuple`: `(model, tokenizer)`.
    """
    path = tiny_model_path(arch=arch, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
