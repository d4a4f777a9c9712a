"""Every recipe under recipes/ parses into its dataclasses, so a stale key fails here and not on a GPU node.

Stage recipes are parsed with the exact stage named in their header's launch command; accelerate configs are loaded
with accelerate's own loader (unknown top-level keys raise) and their nested DeepSpeed/FSDP keys are checked against
`accelerate launch`'s arguments; pipelines are loaded and each stage's resolved recipe is parsed.
"""

import re
from pathlib import Path

import pytest
import yaml

from trl_rankalign.cli.main import parse_stage_args
from trl_rankalign.cli.pipeline import load_pipeline, stage_recipe
from trl_rankalign.cli.stages import STAGES


ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
ALL_YAML = sorted(RECIPES.rglob("*.yaml"))
ACCELERATE = [p for p in ALL_YAML if p.parent.name == "accelerate"]
PIPELINES = [p for p in ALL_YAML if p.name.endswith("pipeline.yaml")]
STAGE_RECIPES = [p for p in ALL_YAML if p not in ACCELERATE and p not in PIPELINES]
COMMAND = re.compile(r"trl-rankalign (\w+) --config (\S+)")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def _parse(stage: str, config: Path):
    # `use_cpu` only so that bf16 recipes can be validated on a machine without a GPU; it cannot hide a stale key.
    return parse_stage_args(stage, ["--config", str(config), "--use_cpu", "true"])


def test_recipes_exist():
    expected = [
        "accelerate/ddp.yaml",
        "accelerate/zero2.yaml",
        "accelerate/zero3.yaml",
        "accelerate/fsdp2.yaml",
        "accelerate/cpu2.yaml",
        "ultrachat/sft.yaml",
        "ultrafeedback/rankdpo.yaml",
        "ultrafeedback/pro.yaml",
        "ultrafeedback/lipo.yaml",
        "ultrafeedback/dpo.yaml",
        "tldr/sft.yaml",
        "tldr/reward.yaml",
        "tldr/rso.yaml",
        "tldr/pipeline.yaml",
        "tiny/sft.yaml",
        "tiny/reward.yaml",
        "tiny/rankdpo.yaml",
        "tiny/pro.yaml",
        "tiny/lipo.yaml",
        "tiny/dpo.yaml",
        "tiny/pipeline.yaml",
    ]
    missing = [name for name in expected if not (RECIPES / name).is_file()]
    assert not missing


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=_rel)
def test_stage_recipe_parses(path):
    """The header names the exact command for this file; the recipe parses into that stage's dataclasses."""
    header = _header(path)
    stages = [stage for stage, config in COMMAND.findall(header) if config == _rel(path)]
    assert stages, f"{_rel(path)}: the header must give `trl-rankalign STAGE --config {_rel(path)}`"
    for launch in re.findall(r"accelerate launch --config_file (\S+) -m trl_rankalign (\w+) --config (\S+)", header):
        assert (ROOT / launch[0]).is_file() and launch[2] == _rel(path)
        stages.append(launch[1])
    for stage in set(stages):
        assert stage in STAGES
        script_args, training_args, model_args, dataset_args = _parse(stage, path)
        assert type(training_args).__name__ == STAGES[stage].config.split(":")[1]
        assert model_args.model_name_or_path
        assert script_args.dataset_name or dataset_args.datasets


@pytest.mark.parametrize("path", [p for p in STAGE_RECIPES if p.parent.name == "tiny"], ids=_rel)
def test_tiny_recipes_run_on_cpu(path):
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert recipe["bf16"] is False and recipe["activation_checkpointing"] is False and recipe["use_cpu"] is True
    assert recipe["model_name_or_path"] == "tiny" and recipe["report_to"] == "none"


def test_stale_key_fails(tmp_path):
    recipe = yaml.safe_load((RECIPES / "tiny" / "rankdpo.yaml").read_text(encoding="utf-8"))
    recipe["max_prompt_length"] = 512  # gone from TRL's DPOConfig
    path = tmp_path / "stale.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="max_prompt_length"):
        _parse("rankdpo", path)


@pytest.mark.parametrize("path", ACCELERATE, ids=_rel)
def test_accelerate_config_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # raises on unknown top-level keys
    assert config.num_processes >= 1
    launch_options = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section in ("deepspeed_config", "fsdp_config"):
        unknown = set(raw.get(section) or {}) - launch_options
        assert not unknown, f"{section} keys that accelerate launch does not know: {unknown}"
    assert _rel(path) in _header(path) or path.stem in _header(path)


def test_zero3_config():
    raw = yaml.safe_load((RECIPES / "accelerate" / "zero3.yaml").read_text(encoding="utf-8"))
    assert raw["mixed_precision"] == "bf16"
    assert raw["deepspeed_config"]["zero3_init_flag"] is True
    assert raw["deepspeed_config"]["zero3_save_16bit_model"] is True


@pytest.mark.parametrize("path", PIPELINES, ids=_rel)
def test_pipeline_parses(path, tmp_path):
    spec = load_pipeline(str(path))
    assert f"trl-rankalign pipeline --config {_rel(path)}" in _header(path)
    output_dirs = {stage["name"]: str(tmp_path / stage["name"]) for stage in spec["stages"]}
    for stage in spec["stages"]:
        resolved = tmp_path / f"{stage['name']}.yaml"
        resolved.write_text(yaml.safe_dump(stage_recipe(stage, output_dirs)))
        _, training_args, model_args, _ = _parse(stage["stage"], resolved)
        assert training_args.output_dir == output_dirs[stage["name"]]
        for key, source in (stage.get("inputs") or {}).items():
            value = model_args.model_name_or_path if key == "model_name_or_path" else getattr(training_args, key)
            assert value == output_dirs[source]


FIXTURE_OF_CONVERTER = {
    "ultrafeedback": "ultrafeedback.json",
    "summarize_from_feedback": "summarize_from_feedback.json",
}


@pytest.mark.parametrize(
    "path",
    [p for p in STAGE_RECIPES if yaml.safe_load(p.read_text()).get("dataset_converter") in FIXTURE_OF_CONVERTER],
    ids=_rel,
)
def test_recipe_converter_runs_on_source_fixture(path):
    """The recipe's converter and its `converter_kwargs` accept a row of the real source schema."""
    import json

    from datasets import Dataset

    from trl_rankalign.data.converters import convert

    stage = next(stage for stage, config in COMMAND.findall(_header(path)) if config == _rel(path))
    script_args, *_ = _parse(stage, path)
    fixture = ROOT / "tests" / "fixtures" / FIXTURE_OF_CONVERTER[script_args.dataset_converter]
    source = Dataset.from_list(json.loads(fixture.read_text()))
    converted = convert(source, script_args.dataset_converter, **(script_args.converter_kwargs or {}))
    assert set(converted.column_names) == {"prompt", "completions", "scores"} and len(converted) > 0
