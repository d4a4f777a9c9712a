"""The documentation a user reads: config help strings, `--help`, the mkdocs site, and the runnable examples.

- Every field a config of this package declares has a help string that says more than its name, and no bare `%`
  (argparse formats help strings with `%`).
- Every stage's `--help` names every option of its dataclasses; every option of the argparse commands has a help.
- The site builds with `mkdocs build --strict` (broken links, missing API objects and warnings fail).
- Every code block of README.md and docs/ preceded by `<!-- runnable -->` runs: Python blocks in a subprocess, bash
  blocks with `bash -e`, `--max_steps 1` added to each training-stage command, in a temporary folder, offline.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "NO_MKDOCS_2_WARNING": "1",
}

# ------------------------------------------------------------------------------------------------ config help strings
CONFIGS = [
    "trl_rankalign.ranked_preference_config:RankedPreferenceConfig",
    "trl_rankalign.rank_dpo_config:RankDPOConfig",
    "trl_rankalign.pro_config:PROConfig",
    "trl_rankalign.rrhf_config:RRHFConfig",
    "trl_rankalign.slic_config:SLiCConfig",
    "trl_rankalign.rso_config:RSOConfig",
    "trl_rankalign.raft:RAFTConfig",
    "trl_rankalign.iterative:IterativeConfig",
    "trl_rankalign.sampling.arguments:GenerationArguments",
    "trl_rankalign.cli.stage_args:RankAlignScriptArguments",
    "trl_rankalign.cli.stage_args:RewardScriptArguments",
]


def _load(name: str):
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def own_fields(cls) -> list[dataclasses.Field]:
    """The dataclass fields of `cls` that a class of this package declares (TRL's and transformers' are theirs)."""
    names = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("trl_rankalign"):
            names.update(klass.__dict__.get("__annotations__", {}))
    return [f for f in dataclasses.fields(cls) if f.name in names and f.init]


def _all_configs() -> list[type]:
    """CONFIGS plus every dataclass of this package that a CLI stage parses."""
    from trl_rankalign.cli.stages import STAGES

    found = {_load(name) for name in CONFIGS}
    for stage in STAGES.values():
        found.update(cls for cls in stage.dataclass_types() if cls.__module__.startswith("trl_rankalign"))
    return sorted(found, key=lambda cls: cls.__name__)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.mark.parametrize("config", _all_configs(), ids=lambda cls: cls.__name__)
def test_every_config_field_has_actionable_help(config):
    fields = own_fields(config)
    assert fields, f"{config.__name__} declares no field of its own"
    problems = []
    for f in fields:
        text = (f.metadata.get("help") or "").strip()
        if not text:
            problems.append(f"{f.name}: no help")
        elif _words(text) == _words(f.name.replace("_", " ")) or len(_words(text)) < 5:
            problems.append(f"{f.name}: help {text!r} says no more than the name")
        elif "%" in text:
            problems.append(f"{f.name}: '%' in help {text!r} (argparse formats it; write 'percent')")
    assert not problems, f"{config.__name__}: " + "; ".join(problems)


def test_every_stage_field_has_a_help_string():
    """TRL's fields included: `--help` of a stage shows every one."""
    from trl_rankalign.cli.stages import STAGES

    missing = [
        f"{stage}: {cls.__name__}.{f.name}"
        for stage, entry in STAGES.items()
        for cls in entry.dataclass_types()
        for f in dataclasses.fields(cls)
        if f.init and not (f.metadata.get("help") or "").strip()
    ]
    assert not missing, missing


# ------------------------------------------------------------------------------------------------------------ --help
def _stage_names() -> list[str]:
    from trl_rankalign.cli.stages import STAGES

    return sorted(STAGES)


@pytest.mark.parametrize("stage", _stage_names())
def test_stage_help_names_every_option(stage):
    from trl_rankalign.cli.main import make_parser
    from trl_rankalign.cli.stages import STAGES

    text = make_parser(stage).format_help()
    for cls in STAGES[stage].dataclass_types():
        for f in dataclasses.fields(cls):
            if f.init:
                assert f"--{f.name}" in text, f"`trl-rankalign {stage} --help` does not name --{f.name}"
        for f in own_fields(cls):  # this package's help text reaches the user (first words, as argparse wraps)
            first = " ".join(f.metadata["help"].split()[:3])
            assert first in " ".join(text.split()), f"{stage} --help lacks the help of --{f.name}"


# Options of the argparse commands that have no help yet; new options must come with one. Remove names as their
# owners add help.
KNOWN_WITHOUT_HELP: set[str] = set()  # options allowed without a help string: none


def _command_parsers():
    from trl_rankalign.cli.main import _build_parser

    found = {}

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    if any(isinstance(a, argparse._SubParsersAction) for a in subparser._actions) or any(
                        a.option_strings and a.dest != "help" for a in subparser._actions
                    ):
                        found[f"{name} {sub}".strip()] = subparser
                    walk(subparser, f"{name} {sub}".strip())

    walk(_build_parser(), "")
    return found


def test_command_help_names_every_option():
    """`pipeline`, `demo`, `rank` and every `eval` command: `--help` names each option, each with a help string."""
    parsers = _command_parsers()
    assert {"pipeline", "demo", "rank", "eval generate", "eval win-rate"} <= set(parsers)
    missing = []
    for name, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.option_strings[0] in text, f"`trl-rankalign {name} --help` omits {action.option_strings[0]}"
            key = f"{name} {action.option_strings[0]}"
            if not (action.help or "").strip() and key not in KNOWN_WITHOUT_HELP:
                missing.append(key)
            if action.help and "%" in action.help.replace("%(default)s", "").replace("%%", ""):
                missing.append(f"{key} (bare '%' in help)")
    assert not missing, f"options without a help string: {missing}"


# ------------------------------------------------------------------------------------------------------ the site
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert (tmp_path / "index.html").is_file()


PROCESS_PHRASES = (
    "honest reading",
    "this project's sessions",
    "the issue's",
    "lent to this task",
    "the goal compares",
)


def test_docs_speak_of_the_product():
    for path in [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8").lower()
        for phrase in PROCESS_PHRASES:
            assert phrase not in text, f"{path.relative_to(ROOT)} says {phrase!r}"


# ------------------------------------------------------------------------------------------------ runnable blocks
RUNNABLE = re.compile(r"<!-- runnable -->[ \t]*\n```(python|bash)[ \t]*\n(.*?)\n```", re.S)
TRAINING_STAGES = ("sft", "reward", "dpo", "cpo", "rankdpo", "pro", "rrhf", "slic", "rso", "raft", "rloo", "iterate")


def runnable_blocks() -> list[pytest.param]:
    seen, blocks = set(), []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            language, code = match.groups()
            if code in seen:  # the same example on two pages runs once
                continue
            seen.add(code)
            line = text.count("\n", 0, match.start()) + 2
            blocks.append(pytest.param(language, code, id=f"{path.relative_to(ROOT)}:{line}"))
    return blocks


def with_one_step(script: str) -> str:
    """`script` with `--max_steps 1` appended to every `trl-rankalign <training stage>` command (continuations joined)."""
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "trl-rankalign" and words[1] in TRAINING_STAGES:
            line = f"{line} --max_steps 1"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_runnable_blocks_are_found():
    ids = [param.id for param in runnable_blocks()]
    assert any(i.startswith("README.md") for i in ids), "README's quickstart must be marked runnable"
    assert sum(1 for param in runnable_blocks() if param.values[0] == "bash") >= 2


@pytest.mark.parametrize("language, code", runnable_blocks())
def test_runnable_block(language, code, tmp_path):
    env = {**os.environ, **OFFLINE_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if language == "python":
        script = tmp_path / "block.py"
        script.write_text(code + "\n", encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        script = tmp_path / "block.sh"
        script.write_text(with_one_step(code), encoding="utf-8")
        command = ["bash", "-euo", "pipefail", str(script)]
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{script.read_text()}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )


def test_with_one_step():
    script = "trl-rankalign rankdpo --config a.yaml \\\n    --beta 0.2\ntrl-rankalign rank --input x\necho ok"
    assert with_one_step(script).splitlines() == [
        "trl-rankalign rankdpo --config a.yaml      --beta 0.2 --max_steps 1",
        "trl-rankalign rank --input x",
        "echo ok",
    ]
