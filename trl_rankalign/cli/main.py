"""`trl-rankalign` console script (also `python -m trl_rankalign`).

```bash
trl-rankalign rankdpo --config recipes/ultrafeedback/rankdpo.yaml                          # this process
trl-rankalign rankdpo --config recipes/ultrafeedback/rankdpo.yaml --accelerate_config zero3  # accelerate launch
accelerate launch --config_file recipes/accelerate/zero3.yaml -m trl_rankalign rankdpo --config ...
trl-rankalign pipeline --config recipes/tldr/pipeline.yaml                                   # SFT -> RM -> RSO
trl-rankalign demo                                                                           # the tiny pipeline
trl-rankalign rank --input prompts.jsonl --policy sft/ --num_samples 4 --reward_model rm/ --output_dir data/ranked
trl-rankalign rankdpo --config recipes/tiny/rankdpo.yaml --dataset_name data/ranked         # its ranked/ folder
trl-rankalign eval text-metrics --answers answers/policy.jsonl --prompts prompts.jsonl        # evaluation
```

A stage command parses its recipe with TRL's `TrlParser` (`--config` YAML, then command-line overrides) into the
stage's dataclasses ([`trl_rankalign.cli.stages.STAGES`]); an unknown key is an error. `--accelerate_config NAME`
(on the command line or as a recipe key) re-launches the same command through `accelerate launch`, as TRL's CLI
does: NAME is a file, else `recipes/accelerate/NAME.yaml`, else one of TRL's bundled configs; other arguments that
no dataclass knows (`--num_processes 2`, `--main_process_port ...`) go to `accelerate launch`.

The recipes ship inside the package (`trl_rankalign/recipes/`, the `recipes` folder of a checkout links to it), so an
installed wheel runs them from any folder: a `--config` path that does not exist relative to the current folder is
looked up in the packaged recipes, as `recipes/tiny/rankdpo.yaml` or `tiny/rankdpo.yaml` ([`resolve_recipe`]).
"""

import argparse
import importlib.resources as resources
import os
import sys
from pathlib import Path


# The packaged recipes (package data of the wheel; a regular directory in both a checkout and an install).
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ACCELERATE_CONFIGS_DIR = RECIPES_DIR / "accelerate"
# Set in the environment of the processes this CLI launches, so that they run the stage instead of launching again.
LAUNCHED_ENV = "TRL_RANKALIGN_LAUNCHED"


def _packaged_recipe_candidates(path: str | os.PathLike) -> list[Path]:
    """Where a relative `path` lies in the packaged recipes: `RECIPES_DIR/...` for `recipes/...` (the spelling of a
    checkout), else `RECIPES_DIR/path`. Absolute paths have none."""
    given = Path(path)
    if given.is_absolute() or not given.parts:
        return []
    if given.parts[0] == "recipes" and len(given.parts) > 1:
        return [RECIPES_DIR.joinpath(*given.parts[1:])]
    return [RECIPES_DIR / given]


def resolve_recipe(path: str | os.PathLike) -> str:
    """The file a recipe path names: `path` itself if it is a file (relative to the current folder), else the
    packaged recipe it names (`recipes/tiny/rankdpo.yaml` or `tiny/rankdpo.yaml`, both in `trl_rankalign/recipes/`).

    Raises `FileNotFoundError` listing every place it looked."""
    given = Path(path).expanduser()
    if given.is_file():
        return str(path)
    candidates = _packaged_recipe_candidates(given)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    looked = [str(given.resolve())] + [str(candidate) for candidate in candidates]
    raise FileNotFoundError(
        f"Recipe {str(path)!r} not found; looked at: {', '.join(looked)}. The packaged recipes are in {RECIPES_DIR}."
    )


def _resolve_config_arg(args: list[str]) -> list[str]:
    """`args` with the value of `--config` (the occurrence TRL's parser reads) resolved by [`resolve_recipe`]."""
    if "--config" not in args:
        return args
    index = args.index("--config")
    if index + 1 >= len(args):
        raise ValueError("Expected a recipe path after `--config`.")
    resolved = resolve_recipe(args[index + 1])
    return args[: index + 1] + [resolved] + args[index + 2 :]


def _resolve_recipe_assets(parsed: tuple) -> None:
    """Point a recipe's `chat_template_path` (written relative to a checkout, `recipes/...`) at the packaged file when
    it is not found relative to the current folder. Anything else (a tokenizer folder, a Hub id) is left alone."""
    for args in parsed:
        value = getattr(args, "chat_template_path", None)
        if not isinstance(value, str) or not value or Path(value).exists():
            continue
        for candidate in _packaged_recipe_candidates(value):
            if candidate.is_file():
                args.chat_template_path = str(candidate)
                break


def resolve_accelerate_config(name: str) -> str:
    """A path to an accelerate config file: `name` itself if it is a file, else the packaged
    `recipes/accelerate/<name>.yaml` (or the packaged recipe `name` names, e.g. `recipes/accelerate/zero3.yaml` run
    outside a checkout), else TRL's bundled `trl/accelerate_configs/<name>.yaml`."""
    if Path(name).is_file():
        return str(name)
    for candidate in (
        ACCELERATE_CONFIGS_DIR / f"{name}.yaml",
        *(_packaged_recipe_candidates(name) if name.endswith((".yaml", ".yml")) else []),
        resources.files("trl.accelerate_configs") / f"{name}.yaml",
    ):
        if candidate.is_file():
            return str(candidate)
    ours = sorted(p.stem for p in ACCELERATE_CONFIGS_DIR.glob("*.yaml")) if ACCELERATE_CONFIGS_DIR.is_dir() else []
    theirs = sorted(
        Path(str(p)).stem for p in resources.files("trl.accelerate_configs").iterdir() if p.name.endswith(".yaml")
    )
    raise ValueError(
        f"Accelerate config {name!r} is neither a file, nor recipes/accelerate/{name}.yaml ({ours}), nor one of TRL's "
        f"bundled configs ({theirs})."
    )


def _pop_option(args: list[str], option: str) -> tuple[list[str], str | None]:
    """`args` without `option VALUE` (its last occurrence), and VALUE."""
    if option not in args:
        return args, None
    index = len(args) - 1 - args[::-1].index(option)
    if index + 1 >= len(args):
        raise ValueError(f"Expected a value after `{option}`.")
    return args[:index] + args[index + 2 :], args[index + 1]


def _subtract_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` with the ordered `subsequence` removed (as TRL's CLI)."""
    remaining = iter(subsequence)
    current = next(remaining, None)
    result = []
    for item in items:
        if current is not None and item == current:
            current = next(remaining, None)
        else:
            result.append(item)
    return result


def _under_launcher() -> bool:
    return (
        bool(os.environ.get(LAUNCHED_ENV)) or "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ
    )


def make_parser(stage: str):
    from trl import TrlParser

    from .stages import STAGES

    return TrlParser(STAGES[stage].dataclass_types(), prog=f"trl-rankalign {stage}")


def parse_stage_args(stage: str, args: list[str]) -> tuple:
    """Parse a stage's arguments strictly: `(script_args, training_args, model_args, dataset_args)`.

    `--accelerate_config` (command line or recipe key) is accepted and ignored here; any other unknown key or
    argument raises `ValueError`, so a stale recipe key fails before any model is loaded. A `--dataset_name` typed on
    the command line replaces the recipe's `datasets:` mixture (`stage_data.prefer_command_line_dataset`).
    """
    from .stage_data import prefer_command_line_dataset

    parser = make_parser(stage)
    *parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        _resolve_config_arg(list(args)), return_remaining_strings=True, separate_remaining_strings=True
    )
    config_remaining, _ = _pop_option(config_remaining, "--accelerate_config")
    cli_remaining, _ = _pop_option(cli_remaining, "--accelerate_config")
    if config_remaining:
        raise ValueError(f"Unknown keys in the recipe of `{stage}`: {config_remaining[::2]}")
    if cli_remaining:
        raise ValueError(f"Unknown arguments of `{stage}`: {cli_remaining}")
    _resolve_recipe_assets(tuple(parsed))
    script_args, _, _, dataset_args = parsed
    prefer_command_line_dataset(script_args, dataset_args, list(args))  # `args` holds what was typed; the recipe not
    return tuple(parsed)


def launch_stage(stage: str, args: list[str], launch_args: list[str], config_file: str) -> int:
    """Re-run `trl-rankalign STAGE args` under `accelerate launch --config_file CONFIG launch_args -m trl_rankalign`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    accelerate_args = launch_command_parser().parse_args(
        ["--config_file", config_file, *launch_args, "--module", "trl_rankalign", stage, *args]
    )
    os.environ[LAUNCHED_ENV] = "1"
    try:
        launch_command(accelerate_args)
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
    return 0


def run_stage(stage: str, args: list[str]) -> int:
    from .stages import STAGES

    args = _resolve_config_arg(list(args))  # the launched processes get the resolved recipe path too
    if not _under_launcher():
        # As TRL's CLI: arguments that no dataclass knows are `accelerate launch` arguments.
        parser = make_parser(stage)
        *_, config_remaining, cli_remaining = parser.parse_args_and_config(
            list(args), return_remaining_strings=True, separate_remaining_strings=True
        )
        launch_args = config_remaining + cli_remaining
        launch_args, config_name = _pop_option(launch_args, "--accelerate_config")
        if config_name is not None:
            script_args = _subtract_subsequence(list(args), cli_remaining)
            return launch_stage(stage, script_args, launch_args, resolve_accelerate_config(config_name))
    parsed = parse_stage_args(stage, list(args))
    STAGES[stage].run_function()(*parsed)
    return 0


def _build_parser():
    from .stages import STAGES

    parser = argparse.ArgumentParser(prog="trl-rankalign", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, stage in STAGES.items():
        commands.add_parser(
            name, help=f"{stage.help}; --config RECIPE.yaml [--accelerate_config NAME]", add_help=False
        )
    pipeline = commands.add_parser("pipeline", help="Run a multi-stage recipe, skipping finished stages")
    pipeline.add_argument("--config", required=True, help="Pipeline YAML (e.g. recipes/tldr/pipeline.yaml)")
    pipeline.add_argument("--output_dir", default=None, help="Root folder of the stage outputs (overrides the YAML)")
    pipeline.add_argument("--accelerate_config", default=None, help="Launch every stage with this accelerate config")
    pipeline.add_argument("--force", action="store_true", help="Rerun finished stages too")
    demo = commands.add_parser("demo", help="The tiny pipeline: SFT then RankDPO on the embedded default (CPU)")
    demo.add_argument("--output_dir", default="outputs/demo", help="Root folder of the demo's stage outputs")
    demo.add_argument("--force", action="store_true", help="Rerun finished stages too")
    try:  # registration point of the evaluation command (trl_rankalign/evaluation/cli.py)
        from .eval import add_eval_parser
    except ImportError:
        add_eval_parser = None
    if add_eval_parser is not None:
        add_eval_parser(commands)
    from .rank import add_rank_parser

    add_rank_parser(commands)
    from .launch import make_parser as make_launch_parser

    # listed here for `--help`; `main` hands `launch` its arguments before this parser reads them
    commands.add_parser(
        "launch",
        parents=[make_launch_parser()],
        add_help=False,
        help="Run a stage or pipeline on several machines (SLURM or not): one `accelerate launch` per machine",
    )
    return parser


def command_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command and subcommand of the CLI with the parser that reads its arguments, e.g. `("rankdpo",)` (the
    stage's `TrlParser`) or `("eval", "generate")`: what `trl-rankalign ... --help` prints. Read from the registries
    themselves (the stages and the subparsers of [`_build_parser`]), so a new command is listed without a change here."""
    from .stages import STAGES

    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        # a subcommand action is the one whose choices are parsers (argparse lists a parser's actions in `_actions`
        # and has no public accessor; its subparser class is private, hence the duck-typing)
        subparsers = [
            action
            for action in parser._actions
            if isinstance(getattr(action, "choices", None), dict)
            and all(isinstance(child, argparse.ArgumentParser) for child in action.choices.values())
            and action.choices
        ]
        if not subparsers:
            found[path] = parser
        for action in subparsers:
            for name, child in action.choices.items():
                walk(make_parser(name) if not path and name in STAGES else child, (*path, name))

    walk(_build_parser(), ())
    return found


def main(argv: list[str] | None = None) -> int:
    from .stages import STAGES

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STAGES:
        return run_stage(argv[0], argv[1:])
    if argv and argv[0] == "launch":  # multi-node: one `accelerate launch` per machine (cli/launch.py)
        from .launch import main as launch_main

        return launch_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("pipeline", "demo"):
        from .pipeline import run_pipeline

        if args.command == "demo":
            config = RECIPES_DIR / "tiny" / "pipeline.yaml"  # packaged: the demo never depends on the current folder
            if not config.is_file():
                raise FileNotFoundError(f"{config} not found: the package was installed without its recipes.")
            run_pipeline(str(config), output_dir=args.output_dir, force=args.force)
        else:
            run_pipeline(
                resolve_recipe(args.config),
                output_dir=args.output_dir,
                accelerate_config=args.accelerate_config,
                force=args.force,
            )
        return 0
    if args.command == "eval":
        from .eval import run_eval

        return run_eval(args) or 0
    if args.command == "rank":
        from .rank import run_rank

        return run_rank(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
