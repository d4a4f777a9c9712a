"""`pipeline` keys each stage on its inputs: an earlier stage retrained (same recipe) reruns the stages that read it.

The stages are stood in for by a fake launcher that writes what a stage writes (a model file and the completion marker),
so the test exercises only the pipeline's skip logic."""

import json
import types
from pathlib import Path

import yaml

from trl_rankalign.cli import pipeline
from trl_rankalign.cli.stage_runner import MARKER_FILE


TINY = Path(pipeline.__file__).resolve().parents[1] / "recipes" / "tiny"


def _fake_stage(runs: list):
    def run(command, check):
        stage, recipe = command[3], yaml.safe_load(Path(command[5]).read_text())
        output = Path(recipe["output_dir"])
        runs.append(stage)
        weights = output / "model.safetensors"
        weights.write_bytes((weights.read_bytes() if weights.exists() else b"") + b"w")  # trained again: new weights
        (output / "config.json").write_text("{}")
        (output / MARKER_FILE).write_text(json.dumps({"stage": stage, "run": len(runs)}))

    return types.SimpleNamespace(run=run)


def test_a_stage_reruns_when_an_earlier_stage_it_reads_was_retrained(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(pipeline, "subprocess", _fake_stage(runs))
    spec = {
        "output_dir": str(tmp_path / "out"),
        "stages": [
            {"name": "sft", "stage": "sft", "config": str(TINY / "sft.yaml")},
            {"name": "rankdpo", "stage": "rankdpo", "config": str(TINY / "rankdpo.yaml"),
             "inputs": {"model_name_or_path": "sft"}},
        ],
    }  # fmt: skip
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(spec))
    pipeline.run_pipeline(str(config))
    assert runs == ["sft", "rankdpo"]
    pipeline.run_pipeline(str(config))  # nothing changed: both skipped
    assert runs == ["sft", "rankdpo"]

    # The SFT stage retrained in place with the same recipe (e.g. `trl-rankalign sft --config ...` run again)
    sft_recipe = tmp_path / "out" / "sft" / pipeline.RECIPE_FILE
    _fake_stage(runs).run([None, None, None, "sft", "--config", str(sft_recipe)], check=True)
    pipeline.run_pipeline(str(config))
    assert runs == ["sft", "rankdpo", "sft", "rankdpo"]  # the SFT stage is finished; the stage reading it reruns
    saved = json.loads((tmp_path / "out" / "rankdpo" / pipeline.INPUTS_FILE).read_text())
    assert set(saved) == {"model_name_or_path"} and saved["model_name_or_path"].startswith("files:")
