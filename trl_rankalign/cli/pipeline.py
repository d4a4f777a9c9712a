"""Multi-stage recipes: run stages in order, feed each stage's output_dir to the next, skip finished stages.

```yaml
# recipes/tldr/pipeline.yaml
output_dir: outputs/tldr          # stage NAME writes to <output_dir>/<NAME>
accelerate_config: null           # optional: launch every stage with it (a stage may set its own)
stages:
  - name: sft
    stage: sft                    # a `trl-rankalign` stage
    config: sft.yaml              # its recipe: beside this file, else in the current folder or the packaged recipes
  - name: reward
    stage: reward
    config: reward.yaml
  - name: rso
    stage: rso
    config: rso.yaml
    inputs:                       # recipe key -> the stage whose output_dir it receives
      model_name_or_path: sft
      reward_model_name_or_path: reward
    overrides: {max_steps: 10}    # optional extra recipe keys
```

Each stage runs as its own process (`python -m trl_rankalign STAGE --config <output_dir>/<NAME>/rankalign_recipe.yaml`,
through `accelerate launch` when an accelerate config is set), so a stage's memory is freed before the next starts.
The recipe actually run (the stage's YAML with `output_dir`, `inputs` and `overrides` applied) is saved as
`rankalign_recipe.yaml` in the stage's output_dir. A stage is skipped on a rerun when its output_dir holds a saved
model and the completion marker the stage writes when it ends ([`trl_rankalign.cli.stages.MARKER_FILE`]), its saved
recipe equals the one it would run now, and its inputs are the ones it ran on: `rankalign_inputs.json` holds, per input,
the fingerprint of the earlier stage's weights files and of its completion marker, so an earlier stage that was rerun
(retrained, even with the same recipe) reruns every stage that reads it. `force=True` reruns everything.
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from ..sampling.fingerprint import model_fingerprint, short_hash
from .stage_runner import MARKER_FILE, is_finished, print_summary
from .stages import STAGES


RECIPE_FILE = "rankalign_recipe.yaml"
INPUTS_FILE = "rankalign_inputs.json"
_STAGE_KEYS = {"name", "stage", "config", "inputs", "overrides", "accelerate_config"}
_PIPELINE_KEYS = {"output_dir", "accelerate_config", "stages"}


def _resolve_stage_config(config: str, pipeline_path: Path, where: str) -> str:
    """A stage's `config:` as an absolute path: relative to the pipeline file first (so a packaged pipeline finds its
    packaged recipes), else as [`trl_rankalign.cli.main.resolve_recipe`] does (the current folder, then the packaged
    recipes, as `recipes/tiny/sft.yaml` or `tiny/sft.yaml`)."""
    from .main import resolve_recipe

    recipe = Path(config).expanduser()
    if recipe.is_absolute():
        if not recipe.is_file():
            raise FileNotFoundError(f"{where}: recipe {recipe} not found.")
        return str(recipe)
    beside = (pipeline_path.parent / recipe).resolve()
    if beside.is_file():
        return str(beside)
    try:
        return str(Path(resolve_recipe(recipe)).resolve())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}: recipe {config!r} not found; looked at {beside}, then: {error}") from None


def load_pipeline(config_path: str) -> dict:
    """Read and check a pipeline YAML; returns it with every stage's `config` resolved to an absolute path."""
    path = Path(config_path)
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise ValueError(f"{path}: a pipeline is a mapping with a non-empty `stages` list.")
    unknown = set(spec) - _PIPELINE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown pipeline keys {sorted(unknown)}; valid: {sorted(_PIPELINE_KEYS)}")
    names = []
    for index, stage in enumerate(spec["stages"]):
        where = f"{path}: stages[{index}]"
        if not isinstance(stage, dict):
            raise ValueError(f"{where} must be a mapping.")
        unknown = set(stage) - _STAGE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(_STAGE_KEYS)}")
        for key in ("name", "stage", "config"):
            if key not in stage:
                raise ValueError(f"{where}: missing `{key}`.")
        if stage["stage"] not in STAGES:
            raise ValueError(f"{where}: unknown stage {stage['stage']!r}; registered stages: {sorted(STAGES)}")
        if stage["name"] in names:
            raise ValueError(f"{where}: duplicate stage name {stage['name']!r}.")
        for key, source in (stage.get("inputs") or {}).items():
            if source not in names:
                raise ValueError(f"{where}: input {key}: {source!r} is not an earlier stage ({names}).")
        stage["config"] = _resolve_stage_config(stage["config"], path, where)
        names.append(stage["name"])
    return spec


def stage_recipe(stage: dict, output_dirs: dict[str, str]) -> dict:
    """The recipe a stage runs: its YAML, then `overrides`, its output_dir and the output_dirs of its `inputs`."""
    recipe = yaml.safe_load(Path(stage["config"]).read_text(encoding="utf-8")) or {}
    recipe.update(stage.get("overrides") or {})
    recipe["output_dir"] = output_dirs[stage["name"]]
    for key, source in (stage.get("inputs") or {}).items():
        recipe[key] = output_dirs[source]
    return recipe


def input_fingerprints(stage: dict, output_dirs: dict[str, str]) -> dict:
    """`{recipe key: fingerprint}` of a stage's inputs: the earlier stage's weights files (and config) and its completion
    marker, which every run of a stage rewrites; an input without a marker yet is `"unfinished"`."""
    fingerprints = {}
    for key, source in sorted((stage.get("inputs") or {}).items()):
        folder = Path(output_dirs[source])
        marker = folder / MARKER_FILE
        if not marker.is_file():
            fingerprints[key] = "unfinished"
            continue
        fingerprints[key] = f"{model_fingerprint(str(folder))}:{short_hash(marker.read_bytes())}"
    return fingerprints


def run_pipeline(
    config_path: str, output_dir: str | None = None, accelerate_config: str | None = None, force: bool = False
) -> dict:
    """Run the pipeline of `config_path` and return the summary (completion marker) of its last stage."""
    spec = load_pipeline(config_path)
    root = Path(output_dir or spec.get("output_dir") or "outputs/pipeline").resolve()
    output_dirs = {stage["name"]: str(root / stage["name"]) for stage in spec["stages"]}
    for stage in spec["stages"]:
        name, stage_output = stage["name"], Path(output_dirs[stage["name"]])
        recipe_text = yaml.safe_dump(stage_recipe(stage, output_dirs), sort_keys=False)
        saved_recipe = stage_output / RECIPE_FILE
        same_recipe = saved_recipe.is_file() and saved_recipe.read_text(encoding="utf-8") == recipe_text
        inputs_text = json.dumps(input_fingerprints(stage, output_dirs), sort_keys=True)
        saved_inputs = stage_output / INPUTS_FILE
        same_inputs = saved_inputs.is_file() and saved_inputs.read_text(encoding="utf-8") == inputs_text
        if not force and is_finished(stage_output) and same_recipe and same_inputs:
            print(f"[pipeline] {name}: finished earlier, skipped ({stage_output})", flush=True)
            continue
        if is_finished(stage_output) and not force:
            reason = "its recipe changed" if not same_recipe else "an earlier stage it reads was rerun"
            print(f"[pipeline] {name}: {reason} since it finished, rerunning", flush=True)
        (stage_output / MARKER_FILE).unlink(missing_ok=True)
        stage_output.mkdir(parents=True, exist_ok=True)
        saved_recipe.write_text(recipe_text, encoding="utf-8")
        saved_inputs.write_text(inputs_text, encoding="utf-8")
        command = [sys.executable, "-m", "trl_rankalign", stage["stage"], "--config", str(saved_recipe)]
        launcher = stage.get("accelerate_config") or accelerate_config or spec.get("accelerate_config")
        if launcher:
            command += ["--accelerate_config", launcher]
        print(f"[pipeline] {name}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        if not is_finished(stage_output):
            raise RuntimeError(f"Stage {name} exited without writing its model and {MARKER_FILE} to {stage_output}.")
    last = spec["stages"][-1]["name"]
    summary = json.loads(Path(output_dirs[last], MARKER_FILE).read_text(encoding="utf-8"))
    print_summary(summary, title=f"pipeline (last stage: {last})")
    print(f"[pipeline] outputs: {root}", flush=True)
    return summary
