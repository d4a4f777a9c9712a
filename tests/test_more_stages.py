"""The rrhf, slic, cpo, raft and rloo stages and Preferred-FT through the CLI on the tiny recipes; `rank` through
`cli.main`; `dataset_name` as a `save_to_disk` folder; `dataset_converter` as an import string; the translation
adapters, recipes and metrics on fixtures in the exact schemas of haoranxu/ALMA-Human-Parallel and haoranxu/WMT22-Test;
COMET's missing-extra error."""

import json
import sys
from pathlib import Path

import pytest
import sacrebleu
import yaml
from datasets import Dataset, DatasetDict

from trl_rankalign.cli import main as cli
from trl_rankalign.cli.stage_data import load_stage_dataset
from trl_rankalign.cli.stage_runner import MARKER_FILE, is_finished
from trl_rankalign.data.adapters import prompts_of
from trl_rankalign.data.translation import from_alma_parallel, wmt_test_prompts


ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny"
TRANSLATION = ROOT / "recipes" / "translation"
FIXTURES = Path(__file__).parent / "fixtures"
REWARD_FN = "trl_rankalign.tiny.language:reward_fn"


def _stage(stage: str, recipe: str, output_dir: Path, *overrides: str) -> dict:
    assert cli.main([stage, "--config", str(TINY / recipe), "--output_dir", str(output_dir), *overrides]) == 0
    assert is_finished(output_dir)
    summary = json.loads((output_dir / MARKER_FILE).read_text())
    assert summary["stage"] == stage
    return summary


@pytest.mark.parametrize(
    "stage, recipe, eval_key",
    [
        ("rrhf", "rrhf.yaml", "eval_ranking/ndcg"),
        ("slic", "slic.yaml", "eval_ranking/pairwise_accuracy"),
        ("cpo", "cpo.yaml", "eval_rewards/margins"),
        ("sft", "preferred_ft.yaml", "eval_loss"),
    ],
)
def test_offline_stage_runs_from_its_tiny_recipe(tmp_path, stage, recipe, eval_key):
    steps = ["--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1"]
    summary = _stage(stage, recipe, tmp_path / stage, *steps)
    assert summary["global_step"] == 2 and summary["last_loss"] is not None and eval_key in summary


def test_preferred_ft_trains_on_the_top_ranked_completion():
    """The `sft` stage on ranked rows (recipes/tiny/preferred_ft.yaml) sees each list's best completion."""
    from trl_rankalign.data.adapters import to_sft as _to_sft

    ranked = Dataset.from_list([{"prompt": "p", "completions": [" ok", " best", " bad"], "scores": [1.0, 2.0, 0.0]}])
    assert _to_sft(ranked).to_list() == [{"prompt": "p", "completion": " best"}]


def test_raft_stage_with_a_callable_reward(tmp_path):
    output_dir = tmp_path / "raft"
    summary = _stage("raft", "raft.yaml", output_dir, "--num_rounds", "1", "--num_samples", "2", "--max_steps", "2")
    assert summary["prompts"] == len(prompts_of(load_stage_dataset(*_script_and_dataset_args("raft"))["train"]))
    assert summary["selected_reward_per_round"][0] >= summary["sampled_reward_per_round"][0]  # best of K
    assert (output_dir / "round_0" / "best").is_dir() and (output_dir / "config.json").is_file()


def test_rloo_stage_with_a_callable_reward(tmp_path):
    summary = _stage("rloo", "rloo.yaml", tmp_path / "rloo", "--max_steps", "1", "--per_device_train_batch_size", "8")
    assert summary["global_step"] == 1 and "last_reward" in summary


def _script_and_dataset_args(stage: str, recipe: str | None = None, *overrides: str):
    script_args, _, _, dataset_args = cli.parse_stage_args(
        stage, ["--config", str(recipe or TINY / f"{stage}.yaml"), *overrides]
    )
    return script_args, dataset_args


def test_online_stages_read_distinct_prompts():
    ranked = Dataset.from_list(
        [
            {"prompt": "a", "completions": ["x", "y"], "scores": [1.0, 0.0]},
            {"prompt": "b", "completions": ["x", "y"], "scores": [0.0, 1.0]},
            {"prompt": "a", "completions": ["z", "y"], "scores": [1.0, 0.0]},
        ]
    )
    assert prompts_of(ranked).to_list() == [{"prompt": "a"}, {"prompt": "b"}]
    with pytest.raises(ValueError, match="no 'prompt' column"):
        prompts_of(Dataset.from_list([{"chosen": "x", "rejected": "y"}]))


def test_reward_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exactly one reward"):
        cli.main(["raft", "--config", str(TINY / "raft.yaml"), "--reward_model_path", "some/rm"])
    with pytest.raises(ValueError, match="needs a reward"):
        cli.main(["rloo", "--config", str(TINY / "rloo.yaml"), "--reward_function", "null"])
    with pytest.raises(ValueError, match="Cannot import reward_function"):
        cli.parse_stage_args("rloo", ["--config", str(TINY / "rloo.yaml"), "--reward_function", "nope:fn"])


def test_rank_command_then_a_stage_on_its_output_folder(tmp_path, capsys):
    """`trl-rankalign rank` through `cli.main`, then `rankdpo --dataset_name <rank output_dir>` trains on it."""
    candidates = tmp_path / "candidates.jsonl"
    rows = [
        {"prompt": "Review of the soup:", "completions": [" lovely warm tasty", " cold bland rude", " fine"]},
        {"prompt": "Review of the pasta:", "completions": [" bland", " delicious fresh"]},
    ]
    candidates.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ranked_dir = tmp_path / "ranked"
    argv = ["rank", "--input", str(candidates), "--output_dir", str(ranked_dir), "--reward_fn", REWARD_FN]
    assert cli.main(argv) == 0
    assert "2 ranked rows" in capsys.readouterr().out

    overrides = ["--dataset_name", str(ranked_dir), "--eval_strategy", "no", "--max_steps", "1"]
    _stage("rankdpo", "rankdpo.yaml", tmp_path / "rankdpo", *overrides, "--per_device_train_batch_size", "2")
    missing = ["rank", "--input", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "x")]
    assert cli.main([*missing, "--reward_fn", REWARD_FN]) == 1  # one `error:` line, as the other commands


def test_dataset_name_as_a_saved_folder(tmp_path, caplog):
    ranked = Dataset.from_list([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 0.0]}] * 3)
    DatasetDict(train=ranked, test=ranked.select([0])).save_to_disk(str(tmp_path / "dict"))
    ranked.save_to_disk(str(tmp_path / "single"))
    loaded = load_stage_dataset(*_script_and_dataset_args("rankdpo", None, "--dataset_name", str(tmp_path / "dict")))
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 3, "test": 1}
    single = load_stage_dataset(*_script_and_dataset_args("rankdpo", None, "--dataset_name", str(tmp_path / "single")))
    assert list(single) == ["train"] and single["train"].to_list() == ranked.to_list()
    # a single saved Dataset has no test split: the evaluating recipe warns, trains, and evaluates nothing
    with caplog.at_level("WARNING"):
        summary = _stage("rankdpo", "rankdpo.yaml", tmp_path / "out", "--dataset_name", str(tmp_path / "single"),
                         "--max_steps", "1", "--per_device_train_batch_size", "2")  # fmt: skip
    assert "no 'test' split" in caplog.text and "training without evaluation" in caplog.text
    assert summary["global_step"] == 1 and not any(key.startswith("eval_") for key in summary)


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("rrhf", "slic", "cpo", "raft", "rloo", "rank", "eval"):
        assert f"    {command} " in out


# ------------------------------------------------------------------------------------------------------ translation
def _fixture(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())


def test_from_alma_parallel_rows():
    rows = from_alma_parallel(Dataset.from_list(_fixture("alma_human_parallel_de_en.json")), "de", "en").to_list()
    assert rows[0] == {
        "prompt": "Translate this from German to English:\nGerman: Der Zug hat zehn Minuten Verspätung.\nEnglish:",
        "completion": " The train is ten minutes late.",
    }
    assert rows[2]["prompt"].endswith("German: Das Wetter ist heute schön.\nEnglish:")  # stripped
    reverse = from_alma_parallel(Dataset.from_list(_fixture("alma_human_parallel_de_en.json")), "en", "de")
    assert reverse[1]["completion"] == " Ich habe meinen Schlüssel im Büro vergessen."
    broken = _fixture("alma_human_parallel_de_en.json")
    broken[1]["translation"]["en"] = None
    with pytest.raises(ValueError, match="row 1, field 'translation.en'"):
        from_alma_parallel(Dataset.from_list(broken), "de", "en")
    with pytest.raises(ValueError, match="unknown language"):
        from_alma_parallel(Dataset.from_list(broken), "de", "xx")


def test_translation_recipes_convert_their_source_schema(tmp_path):
    """Each translation recipe parses, and its converter (registry name or import string) with its kwargs turns a
    `save_to_disk` copy of the source fixture into what the stage trains on."""
    sources = {
        "sft.yaml": ("sft", "alma_human_parallel_de_en.json", {"prompt", "completion"}),
        "cpo.yaml": ("cpo", "alma_r_de_en.json", {"prompt", "completions", "scores"}),
        "dpo.yaml": ("dpo", "alma_r_de_en.json", {"prompt", "completions", "scores"}),
        "rankdpo.yaml": ("rankdpo", "alma_r_de_en.json", {"prompt", "completions", "scores"}),
    }
    for recipe, (stage, fixture, columns) in sources.items():
        folder = tmp_path / fixture
        if not folder.exists():
            DatasetDict(train=Dataset.from_list(_fixture(fixture))).save_to_disk(str(folder))
        script_args, dataset_args = _script_and_dataset_args(
            stage, TRANSLATION / recipe, "--dataset_name", str(folder), "--use_cpu", "true"
        )
        converted = load_stage_dataset(script_args, dataset_args)["train"]
        assert set(converted.column_names) == columns and len(converted) > 0, recipe
        assert converted[0]["prompt"].startswith("Translate this from German to English:\nGerman: ")


def test_dataset_converter_import_string_is_checked_when_parsed():
    with pytest.raises(ValueError, match="Cannot import dataset_converter"):
        cli.parse_stage_args("sft", ["--config", str(TINY / "sft.yaml"), "--dataset_converter", "nope.mod:fn"])


def test_wmt_prompt_set_and_bleu_chrf_equal_sacrebleu(tmp_path, capsys):
    """WMT22-Test rows -> prompt set -> `eval text-metrics` gives sacrebleu's own corpus BLEU and chrF."""
    prompts = wmt_test_prompts(Dataset.from_list(_fixture("wmt22_de_en.json")), "de", "en")
    assert prompts[0] == {
        "prompt": "Translate this from German to English:\nGerman: Die Katze sitzt auf der Matte.\nEnglish:",
        "reference": "The cat is sitting on the mat.",
        "source": "Die Katze sitzt auf der Matte.",
    }
    prompt_file = tmp_path / "wmt22_de-en.jsonl"
    prompt_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prompts))
    hypotheses = [
        "The cat sits on the mat.",
        "It has rained since this morning.",
        "We have eaten delicious pasta.",
        "The train station is five minutes away from here.",
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"index": i, "prompt": row["prompt"], "completions": [" " + hypothesis]}) + "\n"
            for i, (row, hypothesis) in enumerate(zip(prompts, hypotheses))
        )
    )
    output = tmp_path / "metrics.json"
    argv = ["eval", "text-metrics", "--answers", str(answers), "--prompts", str(prompt_file)]
    assert cli.main([*argv, "--metrics", "bleu", "chrf", "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    references = [[row["reference"] for row in prompts]]
    assert metrics["bleu"] == sacrebleu.corpus_bleu(hypotheses, references).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hypotheses, references).score
    assert 0 < metrics["bleu"] < 100

    column = Dataset.from_list([{"translation": row["de-en"]} for row in _fixture("wmt22_de_en.json")])
    assert wmt_test_prompts(column, "de", "en")["reference"] == [row["reference"] for row in prompts]
    with pytest.raises(ValueError, match="field .en-de.: missing column"):
        wmt_test_prompts(Dataset.from_list(_fixture("wmt22_de_en.json")), "en", "de", column="en-de")


def test_comet_names_the_extra_when_missing(monkeypatch):
    from trl_rankalign.evaluation.comet import comet_score

    monkeypatch.setitem(sys.modules, "comet", None)  # `import comet` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "trl-rankalign\[comet\]"'):
        comet_score(["Die Katze."], ["The cat."], ["The cat."])
    with pytest.raises(ValueError, match="1 sources, 2 hypotheses"):
        comet_score(["a"], ["b", "c"], ["d"])


def test_tiny_recipes_of_the_new_stages_are_registered():
    for recipe, stage in [
        ("rrhf.yaml", "rrhf"),
        ("slic.yaml", "slic"),
        ("preferred_ft.yaml", "sft"),
        ("raft.yaml", "raft"),
        ("rloo.yaml", "rloo"),
        ("cpo.yaml", "cpo"),
    ]:
        header = (TINY / recipe).read_text().splitlines()[:6]
        assert any(f"trl-rankalign {stage} --config recipes/tiny/{recipe}" in line for line in header)
        assert yaml.safe_load((TINY / recipe).read_text())["model_name_or_path"] == "tiny"


def test_wmt_prompt_file_command(tmp_path, monkeypatch, capsys):
    """`python -m trl_rankalign.data.translation --pair de-en --output F` (the hub download stubbed by the fixture)."""
    import datasets

    from trl_rankalign.data import translation

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return Dataset.from_list(_fixture("wmt22_de_en.json"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    output = tmp_path / "wmt22_de-en.jsonl"
    assert translation.main(["--pair", "de-en", "--output", str(output)]) == 0
    assert calls == [("haoranxu/WMT22-Test", "de-en", "test")]
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 and rows[3]["source"] == "Der Bahnhof ist fünf Minuten von hier entfernt."
    assert "4 prompts" in capsys.readouterr().out


def test_comet_plumbing_with_a_stub_package(tmp_path, monkeypatch):
    """`answers_comet_score` joins answers to sources and references by index and passes COMET's own triplets."""
    import types

    from trl_rankalign.evaluation.comet import answers_comet_score

    seen = {}

    class StubModel:
        def predict(self, data, batch_size, gpus, progress_bar):
            seen.update(data=data, gpus=gpus)
            scores = [0.5 + 0.1 * i for i in range(len(data))]
            return types.SimpleNamespace(scores=scores, system_score=sum(scores) / len(scores))

    stub = types.SimpleNamespace(
        download_model=lambda name: f"/ckpt/{name}", load_from_checkpoint=lambda p: StubModel()
    )
    monkeypatch.setitem(sys.modules, "comet", stub)
    prompts = wmt_test_prompts(Dataset.from_list(_fixture("wmt22_de_en.json")), "de", "en").to_list()[:2]
    answers = [{"index": i, "prompt": row["prompt"], "completions": [f" hyp {i} "]} for i, row in enumerate(prompts)]
    result = answers_comet_score(answers, prompts, gpus=0)
    assert seen["data"] == [
        {"src": "Die Katze sitzt auf der Matte.", "mt": "hyp 0", "ref": "The cat is sitting on the mat."},
        {"src": "Es regnet seit heute Morgen.", "mt": "hyp 1", "ref": "It has been raining since this morning."},
    ]
    assert result == {"comet": pytest.approx(0.55), "scores": pytest.approx([0.5, 0.6]),
                      "model": "Unbabel/wmt22-comet-da", "num_examples": 2}  # fmt: skip
