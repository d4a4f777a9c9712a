"""lm-evaluation-harness on a saved checkpoint: a local custom task (no hub), and the Open LLM Leaderboard v1 set."""

import json

import pytest


pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[harness]')")

from trl_rankalign.evaluation.harness import OPEN_LLM_LEADERBOARD_V1, run_harness  # noqa: E402


TASK = """task: tiny_sentiment
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{review}}}}\\nSentiment:"
doc_to_choice: [" good", " bad"]
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture
def local_task(tmp_path):
    rows = [{"review": "The soup was lovely and warm.", "label": 0}, {"review": "Cold and bland soup.", "label": 1}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows * 3))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_sentiment.yaml").write_text(TASK.format(data=data))
    return tmp_path / "tasks"


def test_local_task_on_a_checkpoint(tiny_path, tmp_path, local_task):
    results = run_harness(
        tiny_path,
        ["tiny_sentiment"],
        tmp_path / "eval",
        include_path=local_task,
        batch_size=4,
        device="cpu",
        dtype="float32",
        name="tiny",
    )
    assert results["tiny_sentiment"]["sample_len"] == 6
    assert 0.0 <= results["tiny_sentiment"]["acc,none"] <= 1.0
    saved = json.loads((tmp_path / "eval" / "harness" / "tiny.json").read_text())
    assert saved["results"] == results and "tiny_sentiment" in saved["configs"]


def test_open_llm_leaderboard_v1_runs_each_task_with_its_shots(tiny_path, tmp_path, monkeypatch):
    import lm_eval

    calls = []

    def fake_evaluate(**kwargs):
        calls.append((kwargs["tasks"], kwargs["num_fewshot"]))
        return {"results": {task: {"acc,none": 0.5} for task in kwargs["tasks"]}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_evaluate)
    results = run_harness(tiny_path, ["open_llm_leaderboard_v1"], tmp_path, device="cpu")
    assert sorted(calls) == sorted(([task], shots) for task, shots in OPEN_LLM_LEADERBOARD_V1.items())
    assert set(results) == set(OPEN_LLM_LEADERBOARD_V1)


def test_bad_input(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="Unknown harness tasks \\['no_such_task'\\]"):
        run_harness(tiny_path, ["no_such_task"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run_harness(tmp_path, ["hellaswag"], tmp_path)
