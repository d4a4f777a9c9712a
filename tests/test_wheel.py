"""The package runs from a built wheel, not only from a checkout: recipes, accelerate configs, the chat template and
the tiny assets are package data, and recipe paths resolve against the packaged recipes from any folder.

The slow test builds the wheel from a copy of the sources, installs it (`--no-deps --no-index`) into a fresh
virtualenv that sees this environment's dependencies but not the checkout (nor its editable install), and runs
`trl-rankalign demo` from an empty folder.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from trl_rankalign.cli import main as cli
from trl_rankalign.cli.pipeline import load_pipeline
from trl_rankalign.cli.stage_runner import MARKER_FILE


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trl_rankalign"
PACKAGE_DATA_SUFFIXES = (".yaml", ".jinja", ".md")


def _package_data_files() -> list[str]:
    """Every recipe / accelerate config / template / tiny asset of the source tree, as wheel member names."""
    files = [
        path
        for path in (PACKAGE / "recipes").rglob("*")
        if path.is_file() and path.suffix in PACKAGE_DATA_SUFFIXES and "__pycache__" not in path.parts
    ]
    files += [path for path in (PACKAGE / "tiny" / "assets").iterdir() if path.is_file()]
    return sorted(path.relative_to(ROOT).as_posix() for path in files)


# ---- fast: the packaged recipes resolve from any folder ---------------------------------------------------------


def test_recipes_resolve_from_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = cli.RECIPES_DIR
    assert packaged == PACKAGE.resolve() / "recipes"
    assert cli.resolve_recipe("recipes/tiny/pipeline.yaml") == str(packaged / "tiny" / "pipeline.yaml")
    assert cli.resolve_recipe("tiny/rankdpo.yaml") == str(packaged / "tiny" / "rankdpo.yaml")
    assert cli.resolve_recipe("recipes/accelerate/zero3.yaml") == str(packaged / "accelerate" / "zero3.yaml")
    assert cli.resolve_accelerate_config("zero3") == str(packaged / "accelerate" / "zero3.yaml")
    assert cli.resolve_accelerate_config("recipes/accelerate/zero2.yaml") == str(
        packaged / "accelerate" / "zero2.yaml"
    )
    # The tiny pipeline's stages resolve beside the packaged pipeline file.
    spec = load_pipeline(cli.resolve_recipe("recipes/tiny/pipeline.yaml"))
    assert [stage["config"] for stage in spec["stages"]] == [
        str(packaged / "tiny" / "sft.yaml"),
        str(packaged / "tiny" / "rankdpo.yaml"),
    ]
    # A stage recipe named the checkout way parses from here too.
    script_args, training_args, *_ = cli.parse_stage_args("rankdpo", ["--config", "recipes/tiny/rankdpo.yaml"])
    assert training_args.max_steps == 40


def test_existing_path_wins_over_the_packaged_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "rankdpo.yaml").write_text("max_steps: 1\n")
    assert cli.resolve_recipe("tiny/rankdpo.yaml") == "tiny/rankdpo.yaml"
    assert cli.resolve_recipe(str(tmp_path / "tiny" / "rankdpo.yaml")) == str(tmp_path / "tiny" / "rankdpo.yaml")


def test_missing_recipe_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        cli.resolve_recipe("recipes/tiny/no_such_recipe.yaml")
    message = str(error.value)
    assert str(tmp_path / "recipes" / "tiny" / "no_such_recipe.yaml") in message
    assert str(cli.RECIPES_DIR / "tiny" / "no_such_recipe.yaml") in message
    with pytest.raises(FileNotFoundError, match="no_such_recipe"):
        cli.main(["rankdpo", "--config", "tiny/no_such_recipe.yaml"])


def test_pipeline_stage_configs_fall_back_to_the_packaged_recipes(tmp_path, monkeypatch):
    """A user's pipeline outside a checkout may name packaged stage recipes (`recipes/tiny/sft.yaml`, `tiny/...`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipeline.yaml").write_text(
        "stages:\n"
        "  - {name: sft, stage: sft, config: recipes/tiny/sft.yaml}\n"
        "  - {name: rankdpo, stage: rankdpo, config: tiny/rankdpo.yaml, inputs: {model_name_or_path: sft}}\n"
    )
    spec = load_pipeline("pipeline.yaml")
    assert [stage["config"] for stage in spec["stages"]] == [
        str(cli.RECIPES_DIR / "tiny" / "sft.yaml"),
        str(cli.RECIPES_DIR / "tiny" / "rankdpo.yaml"),
    ]
    (tmp_path / "bad.yaml").write_text("stages:\n  - {name: a, stage: sft, config: tiny/nope.yaml}\n")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_pipeline("bad.yaml")


def test_chat_template_path_resolves_to_the_packaged_template(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, training_args, *_ = cli.parse_stage_args("sft", ["--config", "recipes/ultrachat/sft.yaml", "--use_cpu", "true"])
    assert training_args.chat_template_path == str(cli.RECIPES_DIR / "ultrachat" / "zephyr_chat_template.jinja")


# ---- slow: build the wheel, install it into a fresh virtualenv, run the demo from an empty folder ------------------


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so no build/ or egg-info (stale or new) touches the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("LICENSE", "MANIFEST.in", "setup.py", "setup.cfg"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "trl_rankalign", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    try:
        import build  # noqa: F401

        command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
        command += ["--outdir", str(dist), str(source)]
    except ImportError:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist)]
        command += [str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(dist.glob("trl_rankalign-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A virtualenv (no system site-packages) that also sees this environment's dependencies, minus the package itself
    and its editable install; returns (its python, its site-packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=600)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = Path(purelib)
    # Links to this environment's site-packages entries, inside the venv: dill (which `datasets` hashes with) pickles
    # a module by reference only when its path starts with sys.prefix, so the dependencies must appear under it.
    deps = venv / "test-deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("__editable__", "trl_rankalign", "trl-rankalign", "__pycache__")):
            continue
        (deps / entry.name).symlink_to(entry)
    # Processed after the venv's own site-packages (where the wheel goes), so the installed package wins; addsitedir
    # also runs the dependencies' own .pth files.
    (site / "zz_rankalign_test_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return python, site


def _clean_env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
        PYTHONNOUSERSITE="1",
        **extra,
    )
    return env


@pytest.mark.slow
def test_wheel_ships_recipes_and_runs_demo_from_an_empty_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    expected = _package_data_files()
    assert not [name for name in expected if name not in members], "package data missing from the wheel"
    for name in (
        "trl_rankalign/recipes/tiny/pipeline.yaml",
        "trl_rankalign/recipes/accelerate/zero3.yaml",
        "trl_rankalign/recipes/ultrachat/zephyr_chat_template.jinja",
        "trl_rankalign/tiny/assets/tiny_ranked.jsonl",
    ):
        assert name in members, name

    python, site = _fresh_venv(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    env = _clean_env(TRL_RANKALIGN_CACHE=str(tmp_path / "cache"), VIRTUAL_ENV=str(python.parent.parent))
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check"]
    result = subprocess.run([*install, str(wheel)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The installed package, not the checkout, is what runs.
    probe = (
        "import trl_rankalign, trl_rankalign.cli.main as m; "
        "print(trl_rankalign.__file__); print(m.resolve_accelerate_config('zero3')); "
        "print(m.resolve_recipe('recipes/tiny/pipeline.yaml')); print(m.resolve_recipe('tiny/rankdpo.yaml'))"
    )
    result = subprocess.run([str(python), "-c", probe], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, zero3, pipeline, rankdpo = result.stdout.split()
    installed = site.resolve() / "trl_rankalign"
    assert Path(package_file).resolve().is_relative_to(installed), package_file
    assert not Path(package_file).resolve().is_relative_to(ROOT)
    assert Path(zero3) == installed / "recipes" / "accelerate" / "zero3.yaml"
    assert Path(pipeline) == installed / "recipes" / "tiny" / "pipeline.yaml"
    assert Path(rankdpo) == installed / "recipes" / "tiny" / "rankdpo.yaml"

    script = python.parent / "trl-rankalign"
    assert script.is_file()
    result = subprocess.run([str(script), "demo"], cwd=work, env=env, capture_output=True, text=True, timeout=15 * 60)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    demo = work / "outputs" / "demo"
    for stage in ("sft", "rankdpo"):
        assert (demo / stage / MARKER_FILE).is_file(), stage
    assert "pipeline (last stage: rankdpo) metrics" in result.stdout
    assert sorted(path.name for path in work.iterdir()) == ["outputs"]  # nothing else written to the folder
