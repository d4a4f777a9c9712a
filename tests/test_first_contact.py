"""What broke at first contact with a real model and a new user's commands: fingerprints of tensors past 2**24
entries, a command-line `--dataset_name` against a recipe's `datasets:` mixture, a data file as `dataset_name`, and the
hint for an MT-Bench question file given without `--multi_turn`."""

import json
import logging
from pathlib import Path

import pytest
import torch

from trl_rankalign.cli import main as cli
from trl_rankalign.cli.stage_data import load_stage_dataset
from trl_rankalign.sampling.fingerprint import model_fingerprint, sample_indices
from trl_rankalign.sampling.prompts import load_prompts


ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


@pytest.mark.parametrize("numel", [1, 2, 63, 64, 65, 1000, 2**24 + 1, 49152 * 576, 151936 * 896, 2**40 + 7])
def test_sample_indices_are_exact_for_any_size(numel):
    index = sample_indices(numel)
    count = min(64, numel)
    # naive reference in exact integer arithmetic: floor(i * (numel - 1) / (count - 1))
    expected = [i * (numel - 1) // (count - 1) if count > 1 else 0 for i in range(count)]
    assert index.tolist() == expected
    assert index.dtype == torch.long and int(index.max()) == numel - 1 and int(index.min()) == 0


def test_fingerprint_of_a_tensor_past_float32_indices():
    """A float32 `linspace` rounds the last index of a 2**24+1 tensor up to `numel` (IndexError on every real LLM's
    embedding); the digest now reads the exact last entry, so changing it changes the fingerprint."""
    big = torch.nn.Embedding(2**24 + 1, 1)
    with torch.no_grad():
        big.weight.zero_()
    before = model_fingerprint(big)
    with torch.no_grad():
        big.weight[-1] = 1.0
    assert model_fingerprint(big) != before


def _ranked_rows(n: int, text: str) -> list[dict]:
    return [{"prompt": f"{text} {i}", "completions": [" good", " bad"], "scores": [1.0, 0.0]} for i in range(n)]


def test_command_line_dataset_name_wins_over_the_recipes_mixture(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    data = tmp_path / "ranked.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _ranked_rows(5, "mine")))
    script_args, _, _, dataset_args = cli.parse_stage_args(
        "rankdpo",
        ["--config", str(RECIPES / "ultrafeedback" / "rankdpo.yaml"), "--dataset_name", str(data), "--bf16", "false"],
    )
    assert not dataset_args.datasets and script_args.dataset_converter is None  # the recipe's UltraFeedback is gone
    dataset = load_stage_dataset(script_args, dataset_args)
    assert [row["prompt"] for row in dataset["train"]] == [f"mine {i}" for i in range(5)]
    assert "replaces the recipe's `datasets:` mixture (openbmb/UltraFeedback with dataset_converter=" in caplog.text

    # without `--dataset_name` typed, the recipe's mixture and converter stay
    script_args, _, _, dataset_args = cli.parse_stage_args(
        "rankdpo", ["--config", str(RECIPES / "ultrafeedback" / "rankdpo.yaml"), "--bf16", "false"]
    )
    assert [entry.path for entry in dataset_args.datasets] == ["openbmb/UltraFeedback"]
    assert script_args.dataset_converter == "ultrafeedback"
    # both in one recipe (no shipped recipe does it) is refused, not silently resolved
    script_args.dataset_name = str(data)
    with pytest.raises(ValueError, match="Both `datasets` .* and `dataset_name` are set"):
        load_stage_dataset(script_args, dataset_args)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_data_file_works_as_dataset_name(tmp_path, suffix):
    rows = _ranked_rows(3, "file")
    data = tmp_path / f"ranked{suffix}"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows) if suffix == ".jsonl" else json.dumps(rows))
    script_args, _, _, dataset_args = cli.parse_stage_args(
        "rankdpo", ["--config", str(RECIPES / "tiny" / "rankdpo.yaml"), "--dataset_name", str(data)]
    )
    dataset = load_stage_dataset(script_args, dataset_args)
    assert list(dataset) == ["train"] and dataset["train"].to_list() == rows


def test_an_mt_bench_question_file_names_multi_turn(tmp_path):
    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="row 0 has no 'prompt' column.*pass `--multi_turn`"):
        load_prompts(str(questions))
    with pytest.raises(ValueError, match="pass the right `prompt_column`"):
        load_prompts([{"text": "x"}])
