"""The recipe dataclasses every stage parses besides its trainer config, and the `Stage` registry entry.

[`RankAlignScriptArguments`] is TRL's `ScriptArguments` plus the dataset converter; [`RewardScriptArguments`] adds the
reward of an online stage. A [`Stage`] names its dataclasses and run function as import strings, resolved lazily.
"""

import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from trl import ScriptArguments


@dataclass
class RankAlignScriptArguments(ScriptArguments):
    r"""
    TRL's [`~trl.ScriptArguments`] plus the converter that turns the loaded dataset into the stage's format.

    Parameters:
        dataset_converter (`str`, *optional*):
            Name of a converter in `trl_rankalign.data.converters.CONVERTERS` (`"ranked"`, `"pairwise"`,
            `"ultrafeedback"`, `"ultrafeedback_binarized"`, `"summarize_from_feedback"`, `"hh_rlhf"`,
            `"group_pairwise"`, `"alma_r"`), applied to every split and validated as ranked data; or any function as
            an import string `"module:function"` (e.g. `"trl_rankalign.data.translation:from_alma_parallel"`),
            called as `function(split, **converter_kwargs)` and used as it returns (no ranked validation: it may
            produce SFT or prompt rows). `None`: the data is used as loaded (the listwise trainers accept ranked and
            TRL pairwise data). Ranked output is then adapted to the stage: `sft` trains on each list's top
            completion, `reward`, `dpo` and `cpo` on (best, worst) pairs, `raft` and `rloo` on its prompts.
        converter_kwargs (`dict` or `str`, *optional*):
            Keyword arguments of the converter, e.g. `{"score": "overall", "conversational": true}`; a JSON string on
            the command line.
    """

    dataset_converter: str | None = field(
        default=None,
        metadata={
            "help": "Converter applied to every split: ranked, pairwise, ultrafeedback, ultrafeedback_binarized, "
            "summarize_from_feedback, hh_rlhf, group_pairwise, alma_r, or any 'module:function'. None: "
            "the data is used as loaded."
        },
    )
    converter_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Keyword arguments of the converter, e.g. {"score": "overall"}; a JSON string on the command line.'
        },
    )

    def __post_init__(self):
        if isinstance(self.converter_kwargs, str):
            self.converter_kwargs = json.loads(self.converter_kwargs)
        if self.dataset_converter is not None:
            from ..data.converters import CONVERTERS

            if ":" in self.dataset_converter:  # an import string: resolved now, so a stale recipe fails early
                import_callable(self.dataset_converter, "dataset_converter")
            elif self.dataset_converter not in CONVERTERS:
                raise ValueError(
                    f"dataset_converter={self.dataset_converter!r} is not a converter; valid: {sorted(CONVERTERS)} "
                    "or a 'module:function' import string"
                )
        elif self.converter_kwargs:
            raise ValueError("converter_kwargs is set but dataset_converter is not.")


@dataclass(frozen=True)
class Stage:
    """A CLI stage: import strings (`"module:attribute"`) of its dataclasses and run function, resolved lazily."""

    help: str
    run: str
    config: str
    script_args: str = "trl_rankalign.cli.stage_args:RankAlignScriptArguments"
    model_args: str = "trl:ModelConfig"
    dataset_args: str = "trl:DatasetMixtureConfig"

    def dataclass_types(self) -> tuple[type, ...]:
        return tuple(
            import_string(name) for name in (self.script_args, self.config, self.model_args, self.dataset_args)
        )

    def run_function(self):
        return import_string(self.run)


def import_string(name: str) -> Any:
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def import_callable(name: str, key: str):
    """The callable named by the import string `name` (`"module:function"`); `ValueError` naming the recipe `key`."""
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ValueError(f"{key}={name!r} must be an import string 'module:function'.")
    try:
        function = import_string(name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {key}={name!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"{key}={name!r} is not callable.")
    return function


@dataclass
class RewardScriptArguments(RankAlignScriptArguments):
    r"""
    [`RankAlignScriptArguments`] plus the reward of an online stage (`rloo`): a reward model and/or a Python function.

    Parameters:
        reward_model_path (`str`, *optional*):
            Sequence-classification reward model (a folder, e.g. the `reward` stage's output, or a hub id).
        reward_function (`str`, *optional*):
            A reward callable as an import string `"module:function"` with TRL's reward-function signature
            `(prompts, completions, **kwargs) -> list[float]`, e.g. `"trl_rankalign.tiny.language:reward_fn"`.
            With both set, TRL sums the two rewards (weighted by `reward_weights`).
    """

    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Sequence-classification reward model (a folder, e.g. the reward stage's output, or a hub id) "
            "that scores the online samples."
        },
    )
    reward_function: str | None = field(
        default=None,
        metadata={
            "help": "Python reward as 'module:function' with TRL's signature (prompts, completions, **kwargs) -> "
            "list of floats, e.g. trl_rankalign.tiny.language:reward_fn; with reward_model_path too, TRL "
            "sums both (reward_weights)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.reward_model_path = unset(self.reward_model_path)
        self.reward_function = unset(self.reward_function)
        if self.reward_function is not None:
            import_callable(self.reward_function, "reward_function")


def unset(value: str | None) -> str | None:
    """`None` for an option switched off on the command line (`--reward_function null`; YAML `null` is already None)."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value
