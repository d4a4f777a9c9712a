"""What a cached result depends on, as short stable strings: models, tokenizers, callables and scorers.

Cache keys of this package are built from these (with the decoding settings, judge model and template, ...), so a
result is reused only when everything that produced it is unchanged:

- a model: a checkpoint folder is fingerprinted from its files (config, generation config, and for each weight file its
  size and a hash of sampled blocks); a loaded model from its class, config and, per tensor, shape, dtype, sum and a
  sample of its values. A checkpoint overwritten or retrained in place, or a policy trained in memory, changes it;
  a hub id that is not a local folder is identified by its name (and revision) only.
- a tokenizer: its class, vocabulary, special tokens and chat template (the prompt the model sees).
- a callable (a reward function): its module, qualified name and source code (for a callable object, its class's), so
  another module's `reward_fn` or an edited function is a different scorer. A `functools.wraps` wrapper is the function
  it wraps; state held by a callable object is not part of its identity.
"""

import functools
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch


__all__ = ["callable_identity", "diff_settings", "model_fingerprint", "short_hash", "tokenizer_fingerprint"]

_SAMPLED_BLOCK = 1 << 16  # bytes hashed per sampled block of a weight file
_BLOCKS_PER_FILE = 16
_SAMPLES_PER_TENSOR = 64


def short_hash(data: Any) -> str:
    """16 hex digits of the SHA-256 of `data` (bytes, str, or anything JSON-serialisable with sorted keys)."""
    if not isinstance(data, bytes):
        if not isinstance(data, str):
            data = json.dumps(data, sort_keys=True, default=str)
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """Size plus the hash of evenly spaced blocks (first and last included): cheap on multi-GB weight files, and a
    retrained or replaced file changes it."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLED_BLOCK * _BLOCKS_PER_FILE:
            digest.update(f.read())
        else:
            step = (size - _SAMPLED_BLOCK) // (_BLOCKS_PER_FILE - 1)
            for block in range(_BLOCKS_PER_FILE):
                f.seek(block * step)
                digest.update(f.read(_SAMPLED_BLOCK))
    return digest.hexdigest()[:16]


def _folder_fingerprint(folder: Path) -> str:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and (
            path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")
            or path.name in ("config.json", "generation_config.json", "adapter_config.json")
        ):
            files[path.name] = _file_digest(path)
    return short_hash(files)


def sample_indices(numel: int, count: int = _SAMPLES_PER_TENSOR) -> torch.Tensor:
    """`min(count, numel)` evenly spaced indices into a flat tensor of `numel` entries, first and last included.

    Integer arithmetic (int64), so exact for any size: a float32 `linspace` cannot hold indices above 2**24 and
    rounds the last one up to `numel` on any real LLM's embedding."""
    count = min(count, numel)
    if count <= 1:
        return torch.zeros(count, dtype=torch.long)
    return torch.arange(count, dtype=torch.long) * (numel - 1) // (count - 1)


def _tensor_digest(tensor: torch.Tensor) -> list:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return [list(tensor.shape), str(tensor.dtype)]
    flat = tensor.detach().reshape(-1)
    index = sample_indices(flat.numel()).to(flat.device)
    sample = flat.index_select(0, index).double().cpu()
    total = flat.double().sum().item() if flat.is_floating_point() else flat.long().sum().item()
    return [list(tensor.shape), str(tensor.dtype), total, short_hash(sample.numpy().tobytes())]


@torch.no_grad()
def model_fingerprint(model: Any) -> str:
    """A short fingerprint of a model: a checkpoint folder (from its files), a hub id (its name), or a loaded model
    (class, config and a digest of every parameter and buffer). `None` gives `"none"`."""
    if model is None:
        return "none"
    if isinstance(model, str | os.PathLike):
        folder = Path(os.path.expanduser(str(model)))
        if folder.is_dir():
            return "files:" + _folder_fingerprint(folder)
        return "name:" + str(model)
    config = getattr(model, "config", None)
    config_text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    config_data = json.loads(config_text) if config_text.startswith("{") else config_text
    if isinstance(config_data, dict):
        config_data.pop("_name_or_path", None)  # where it was loaded from does not change what it computes
        config_data.pop("transformers_version", None)
    tensors = {}
    if isinstance(model, torch.nn.Module):
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensors[name] = _tensor_digest(tensor)
    return "weights:" + short_hash([type(model).__name__, config_data, tensors])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short fingerprint of what a tokenizer turns a prompt into: class, vocabulary, special tokens, chat template."""
    if tokenizer is None:
        return "none"
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return short_hash(
        [
            type(tokenizer).__name__,
            sorted(vocab.items()),
            getattr(tokenizer, "chat_template", None),
            {k: str(v) for k, v in sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())},
        ]
    )


def callable_identity(function: Any) -> str:
    """`module.qualname@<hash of its source>` of a function, method, `functools.partial` or callable object."""
    if isinstance(function, functools.partial):
        inner = callable_identity(function.func)
        return f"partial({inner})@{short_hash(repr((function.args, sorted(function.keywords.items()))))}"
    function = inspect.unwrap(function) if callable(function) else function
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else type(function)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):  # defined in a REPL or a builtin: fall back to the compiled code
        code = getattr(getattr(target, "__func__", target), "__code__", None)
        source = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else ""
    return f"{module}.{qualname}@{short_hash(source)}"


def diff_settings(old: dict | None, new: dict) -> list[str]:
    """The settings that differ, as `"name: old -> new"` strings (nested keys joined by dots)."""
    if not isinstance(old, dict):
        return ["(made by an older version, without recorded settings)"]
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(f"{key}.{change}" for change in diff_settings(a, b))
        elif a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes
