"""The `trl-rankalign` CLI: stage commands on the tiny recipes, the accelerate re-launch, the pipeline runner, W&B."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_rankalign.cli import main as cli
from trl_rankalign.cli.stage_runner import MARKER_FILE, is_finished
from trl_rankalign.data.adapters import ranked_to_pairwise


ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny"
# Nothing may reach a hub; each subprocess gets the same environment as the tests.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
}


def _run(args, env=None, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", "trl_rankalign", *args],
        cwd=ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def test_rankdpo_stage_in_process(tmp_path, capsys):
    """`main(argv)` runs a stage from its recipe with command-line overrides, saves the model and the marker."""
    output_dir = tmp_path / "rankdpo"
    argv = ["rankdpo", "--config", str(TINY / "rankdpo.yaml"), "--output_dir", str(output_dir)]
    assert cli.main([*argv, "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1"]) == 0
    assert is_finished(output_dir)
    summary = json.loads((output_dir / MARKER_FILE).read_text())
    assert summary["stage"] == "rankdpo" and summary["global_step"] == 2
    for key in ("eval_loss", "eval_rewards/margins", "eval_ranking/pairwise_accuracy", "eval_ranking/ndcg"):
        assert key in summary
    assert "[trl-rankalign] rankdpo metrics:" in capsys.readouterr().out


def test_unknown_argument_fails(tmp_path):
    with pytest.raises(ValueError, match="max_prompt_length"):
        cli.main(["rankdpo", "--config", str(TINY / "rankdpo.yaml"), "--max_prompt_length", "512"])


def test_converter_key_must_exist():
    with pytest.raises(ValueError, match="not a converter"):
        cli.parse_stage_args("rankdpo", ["--config", str(TINY / "rankdpo.yaml"), "--dataset_converter", "nope"])


def test_resolve_accelerate_config(tmp_path):
    assert cli.resolve_accelerate_config("zero3") == str(
        ROOT / "trl_rankalign" / "recipes" / "accelerate" / "zero3.yaml"
    )
    assert cli.resolve_accelerate_config("multi_gpu").endswith("trl/accelerate_configs/multi_gpu.yaml")  # TRL's
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: NO\n")
    assert cli.resolve_accelerate_config(str(own)) == str(own)
    with pytest.raises(ValueError, match="neither a file"):
        cli.resolve_accelerate_config("no_such_config")


def test_accelerate_config_relaunches(monkeypatch):
    """`--accelerate_config` re-launches the same command; unknown arguments go to `accelerate launch`, as TRL."""
    calls = []
    monkeypatch.setattr(cli, "launch_stage", lambda *args: calls.append(args) or 0)
    for name in (cli.LAUNCHED_ENV, "ACCELERATE_MIXED_PRECISION", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    config = str(TINY / "rankdpo.yaml")
    argv = ["rankdpo", "--config", config, "--accelerate_config", "zero2", "--num_processes", "2", "--max_steps", "3"]
    assert cli.main(argv) == 0
    stage, script_args, launch_args, config_file = calls[0]
    assert stage == "rankdpo"
    assert script_args == ["--config", config, "--max_steps", "3"]
    assert launch_args == ["--num_processes", "2"]
    assert config_file == str(ROOT / "trl_rankalign" / "recipes" / "accelerate" / "zero2.yaml")


def test_ranked_to_pairwise_drops_fully_tied_lists():
    from datasets import Dataset

    ranked = Dataset.from_list(
        [
            {"prompt": "p", "completions": ["b", "a", "c"], "scores": [1.0, 2.0, 0.0]},
            {"prompt": "q", "completions": ["x", "y"], "scores": [1.0, 1.0]},
        ]
    )
    assert ranked_to_pairwise(ranked).to_list() == [{"prompt": "p", "chosen": "a", "rejected": "c"}]


def _tiny_pipeline(tmp_path, stages) -> Path:
    spec = {"output_dir": str(tmp_path / "out"), "stages": stages}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_tiny_pipeline_end_to_end(tmp_path):
    """recipes/tiny/pipeline.yaml's stages (SFT -> RankDPO from the SFT model) through the CLI; a rerun skips both."""
    shipped = yaml.safe_load((TINY / "pipeline.yaml").read_text())
    stages = []
    for stage in shipped["stages"]:
        stage = {**stage, "config": str(TINY / stage["config"])}
        stage["overrides"] = {"max_steps": 3, "logging_steps": 1}
        if stage["stage"] == "rankdpo":
            stage["overrides"]["eval_steps"] = 3
        stages.append(stage)
    config = _tiny_pipeline(tmp_path, stages)
    out = _run(["pipeline", "--config", str(config)])
    sft_dir, rank_dir = tmp_path / "out" / "sft", tmp_path / "out" / "rankdpo"
    assert is_finished(sft_dir) and is_finished(rank_dir)
    rank_recipe = yaml.safe_load((rank_dir / "rankalign_recipe.yaml").read_text())
    assert rank_recipe["model_name_or_path"] == str(sft_dir)  # the SFT output fed the next stage
    summary = json.loads((rank_dir / MARKER_FILE).read_text())
    assert summary["model_name_or_path"] == str(sft_dir) and "eval_ranking/ndcg" in summary
    assert "pipeline (last stage: rankdpo) metrics" in out and str(tmp_path / "out") in out

    rerun = _run(["pipeline", "--config", str(config)])
    assert "sft: finished earlier, skipped" in rerun and "rankdpo: finished earlier, skipped" in rerun


def test_pipeline_rejects_bad_specs(tmp_path):
    from trl_rankalign.cli.pipeline import load_pipeline

    sft = str(TINY / "sft.yaml")
    bad = _tiny_pipeline(tmp_path, [{"name": "a", "stage": "nope", "config": sft}])
    with pytest.raises(ValueError, match="unknown stage"):
        load_pipeline(str(bad))
    bad = _tiny_pipeline(tmp_path, [{"name": "a", "stage": "sft", "config": sft, "inputs": {"x": "later"}}])
    with pytest.raises(ValueError, match="not an earlier stage"):
        load_pipeline(str(bad))


def test_wandb_offline_run(tmp_path):
    """`report_to: wandb` with WANDB_MODE=offline writes a run whose history holds the ranking keys."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[wandb]')")
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "trl-rankalign-test"}
    args = ["rankdpo", "--config", str(TINY / "rankdpo.yaml"), "--output_dir", str(tmp_path / "run")]
    _run([*args, "--report_to", "wandb", "--max_steps", "2", "--logging_steps", "1", "--eval_steps", "2"], env=env)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = b"".join(path.read_bytes() for path in runs[0].glob("*.wandb"))
    for key in (
        "rewards/chosen",
        "rewards/margins",
        "rewards/rank_1",
        "rewards/adjacent_margin",
        "ranking/pairwise_accuracy",
        "ranking/kendall_tau",
        "ranking/ndcg",
        "eval/ranking/ndcg",
    ):
        assert key.encode() in history, key


@pytest.mark.slow
def test_tiny_rso_pipeline(tmp_path):
    """SFT -> reward model -> RSO (recipes/tiny/rso_pipeline.yaml's stages), then the `sample` stage reuses the set."""
    shipped = yaml.safe_load((TINY / "rso_pipeline.yaml").read_text())
    stages = []
    for stage in shipped["stages"]:
        stages.append({**stage, "config": str(TINY / stage["config"]), "overrides": {"max_steps": 3}})
    config = _tiny_pipeline(tmp_path, stages)
    _run(["pipeline", "--config", str(config)])
    rso_dir = tmp_path / "out" / "rso"
    assert is_finished(rso_dir) and (rso_dir / "rso_samples" / "dataset").is_dir()
    recipe = rso_dir / "rankalign_recipe.yaml"
    sample_dir = tmp_path / "sample"
    _run(
        [
            "sample",
            "--config",
            str(recipe),
            "--output_dir",
            str(sample_dir),
            "--samples_dir",
            str(rso_dir / "rso_samples"),
        ]
    )
    assert is_finished(sample_dir)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("sft", "reward", "dpo", "rankdpo", "pro", "rso", "sample", "pipeline", "demo"):
        assert f"    {command} " in out


def test_converter_kwargs_from_the_command_line():
    script_args, *_ = cli.parse_stage_args(
        "rankdpo",
        ["--config", str(TINY / "rankdpo.yaml"), "--dataset_converter", "ultrafeedback"]
        + ["--converter_kwargs", '{"score": "helpfulness", "conversational": true}'],
    )
    assert script_args.converter_kwargs == {"score": "helpfulness", "conversational": True}


HELP_CASES = sorted(cli.command_parsers().items())  # (command path, its parser), from the CLI's own registry


@pytest.mark.parametrize("path,parser", HELP_CASES, ids=[" ".join(path) for path, _ in HELP_CASES])
def test_every_command_prints_its_help(path, parser, capsys):
    """`trl-rankalign <command> [<subcommand>] --help` exits 0 and names at least one of the command's own options
    (five stages' help once crashed on a bare `%` in a help string). The commands come from the CLI's own registry,
    so a new command is covered without touching this test."""
    with pytest.raises(SystemExit) as exited:
        cli.main([*path, "--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    options = {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}
    assert options and any(flag in printed for flag in options), f"`{' '.join(path)} --help` names none of {options}"


def test_the_help_registry_lists_every_command():
    """The registry behind the help test sees the stages, the nested `eval` subcommands and the other commands."""
    from trl_rankalign.cli.stages import STAGES

    paths = set(cli.command_parsers())
    assert {(name,) for name in STAGES} <= paths
    assert {("eval", "generate"), ("eval", "mt-bench"), ("rank",), ("pipeline",), ("demo",)} <= paths
    assert ("eval",) not in paths  # a group is not a command of its own
