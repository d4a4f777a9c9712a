"""MT-Bench grading and agreement as FastChat computes them, checked with FastChat's own code (fschat, `--no-deps`):
`show_result.py`'s `display_result_single` / `display_result_pairwise` read the judgment files `eval mt-bench` writes,
and `compute_agreement.py`'s functions count agreement on the same votes as `eval agreement`.

The judge prompts are a fixture in FastChat's `judge_prompts.jsonl` schema with short texts of our own
(`fixtures/fastchat_judge_prompts.jsonl`); answers, reference answers and human judgments are built in FastChat's
published schemas."""

import argparse
import contextlib
import io
import itertools
import json
from pathlib import Path

import pytest


show_result = pytest.importorskip("fastchat.llm_judge.show_result")
compute_agreement = pytest.importorskip("fastchat.llm_judge.compute_agreement")

from trl_rankalign.evaluation import fastchat  # noqa: E402
from trl_rankalign.evaluation.agreement import agreement, load_comparisons, score_items  # noqa: E402
from trl_rankalign.evaluation.mt_bench import judge_pairwise, judge_single  # noqa: E402
from trl_rankalign.sampling.llm_judge import JudgeClient  # noqa: E402


FIXTURES = Path(__file__).resolve().parent / "fixtures"
JUDGE_PROMPTS = FIXTURES / "fastchat_judge_prompts.jsonl"

# multi-turn answers as `eval generate --multi_turn` writes them: a writing, a math and a one-turn question
OURS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."], "answers": ["P1", "P2"]},
    {"question_id": 111, "category": "math", "turns": ["2 + 2?", "3 + 3?"], "answers": ["4", "7"]},
    {"question_id": 130, "category": "stem", "turns": ["Why is the sky blue?"], "answers": ["Scattering."]},
]


def fastchat_answer(question_id, model_id, turns) -> dict:
    """One line of FastChat's `model_answer/<model>.jsonl` / `reference_answer/gpt-4.jsonl`."""
    return {
        "question_id": question_id,
        "answer_id": f"id{question_id}",
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": 1.0,
    }


def show(function, **options) -> str:
    """Run one of FastChat's `show_result.py` displays and return what it prints."""
    args = argparse.Namespace(bench_name="mt_bench", judge_model="judge", model_list=None, baseline_model=None)
    for key, value in options.items():
        setattr(args, key, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function(args)
    return out.getvalue()


def section(printed: str, title: str) -> str:
    return printed.split(f"########## {title} ##########")[1].split("##########")[0]


def test_parsers_follow_fastchat():
    # the FIRST [[n]], then the [n] fallback, -1 when none; no range check
    assert fastchat.parse_rating("Rating: [[8]] ... on reflection [[3]]") == 8
    assert fastchat.parse_rating("I give it [7.5] overall") == 7.5
    assert fastchat.parse_rating("[2] points, so Rating: [[6]]") == 6  # [[n]] is searched first
    assert fastchat.parse_rating("no rating here") == -1
    # [[A]] before [[B]] before [[C]], whatever their order in the text
    assert fastchat.parse_verdict("[[B]] no wait [[A]]") == "A"
    assert fastchat.parse_verdict("tie: [[C]]") == "tie"
    assert fastchat.parse_verdict("A is better") == "error"
    assert fastchat.judge_prompt_name("single", "reasoning", 2) == "single-math-v1-multi-turn"
    assert fastchat.judge_prompt_name("pair", "writing", 1) == "pair-v2"


def test_pair_rule_matches_show_result_on_all_nine_combinations(tmp_path):
    winners = ("model_1", "model_2", "tie")
    combos = list(itertools.product(winners, winners))
    lines = [
        {"question_id": i, "model_1": f"m{i}", "model_2": "base", "g1_winner": g1, "g2_winner": g2, "turn": 1}
        for i, (g1, g2) in enumerate(combos)
    ]
    path = tmp_path / "judge_pair.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    printed = show(show_result.display_result_pairwise, input_file=str(path), baseline_model="base")
    for i, (g1, g2) in enumerate(combos):  # one match per model: its row reads "win loss tie ..."
        (row,) = [line.split() for line in printed.splitlines() if line.startswith(f"m{i} ")]
        expected = fastchat.pair_outcome(g1, g2)
        assert [int(x) for x in row[1:4]] == [expected == "win", expected == "loss", expected == "tie"], (g1, g2)
    assert fastchat.pair_outcome("model_1", "error") == "error"


def test_single_grading_writes_what_show_result_reads(judge_server, tmp_path):
    def judge(request):
        system, user = request["messages"][0]["content"], request["messages"][-1]["content"]
        assert request["max_tokens"] == 2048
        if "[REF]" in user:  # math: the reference answer is shown (both turns for turn 2)
            assert "REF-4" in user and ("REF-6" in user) == ("second" in system)
            return 200, "Compared with the reference: [[3]]"
        if "P2" in user:  # turn 2 of the writing question: the whole conversation
            assert "Write a poem." in user and "P1" in user
            return 200, "I would say [9]"  # FastChat's [n] fallback
        if "Scattering" in user:
            return 200, "no rating at all"  # an error: -1, left out by show_result
        return 200, "Rating: [[8]], not [[2]]"

    judge_server.reply = judge
    references = tmp_path / "gpt-4.jsonl"
    references.write_text(json.dumps(fastchat_answer(111, "gpt-4", ["REF-4", "REF-6"])) + "\n")
    client = JudgeClient(judge_server.base_url, "judge", max_tokens=2048, timeout=5.0, max_retries=0)
    path = tmp_path / "mt_bench" / "model_judgment" / "judge_single.jsonl"
    options = dict(model_name="ours", judge_prompts=JUDGE_PROMPTS, reference_answers=references)
    result = judge_single(OURS, client, path, **options)
    assert (result.per_turn, result.errors, result.judged, result.prompts) == ({1: 5.5, 2: 6.0}, 1, 4, "fastchat")

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(records[0]) == sorted(
        ["question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"]
    )
    prompts = {(r["question_id"], r["turn"]): r["judge"][1] for r in records}
    assert prompts == {
        (81, 1): "single-v1",
        (81, 2): "single-v1-multi-turn",
        (111, 1): "single-math-v1",
        (111, 2): "single-math-v1-multi-turn",
        (130, 1): "single-v1",  # one turn: no turn-2 judgment, as gen_judgment.py
    }
    printed = show(show_result.display_result_single, input_file=str(path))
    assert "5.5" in section(printed, "First turn") and "6.0" in section(printed, "Second turn")
    (average,) = [line.split() for line in section(printed, "Average").splitlines() if line.startswith("ours")]
    assert float(average[1]) == pytest.approx(result.overall) == pytest.approx(23 / 4)

    asked = len(judge_server.requests)
    judge_single(OURS, client, path, **options)  # cached: only the unparsed judgment is asked again
    assert len(judge_server.requests) == asked + 1
    assert len(path.read_text().splitlines()) == 5  # the superseded -1 record is dropped

    with pytest.raises(ValueError, match="reference answers"):
        judge_single(OURS, client, tmp_path / "other.jsonl", judge_prompts=JUDGE_PROMPTS)


def test_pairwise_against_a_fastchat_answer_file(judge_server, tmp_path):
    """The baseline is FastChat's own answer schema (model_answer/gpt-3.5-turbo.jsonl); turn 2 shows each model's
    own conversation; a win needs both orders."""
    baseline = tmp_path / "gpt-3.5-turbo.jsonl"
    theirs = {81: ["Q1", "Q2"], 111: ["5", "6"], 130: ["Rayleigh."]}
    baseline.write_text("".join(json.dumps(fastchat_answer(q, "gpt-3.5-turbo", t)) + "\n" for q, t in theirs.items()))
    references = [fastchat_answer(111, "gpt-4", ["REF-4", "REF-6"])]

    def judge(request):
        user = request["messages"][-1]["content"]
        a_side = user.split("[B")[0]
        if "[A conversation]" in user and "Write a poem" in user:  # turn 2: each model's own conversation
            assert ("P1" in a_side and "Q1" not in a_side) or ("Q1" in a_side and "P1" not in a_side)
        if "Write a poem" in user:
            return 200, "[[A]]" if "P1" in a_side else "[[B]]"  # ours wins both orders, both turns
        if "Rayleigh" in user:
            return 200, "[[A]]"  # position bias: A wins in both orders -> a tie
        return 200, "[[C]]" if "[A conversation]" in user else ("[[B]]" if "[A]\n4\n" in a_side else "[[A]]")

    judge_server.reply = judge
    client = JudgeClient(judge_server.base_url, "judge", timeout=5.0, max_retries=0)
    path = tmp_path / "model_judgment" / "judge_pair.jsonl"
    result = judge_pairwise(
        OURS,
        baseline,
        client,
        path,
        model_name="ours",
        baseline_name="gpt-3.5-turbo",
        judge_prompts=JUDGE_PROMPTS,
        reference_answers=references,
    )
    # 81: win, win; 111 turn 1: loss, turn 2: tie; 130: tie (the orders disagree)
    assert (result.wins, result.ties, result.losses, result.errors) == (2, 2, 1, 0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["judge"][1] for r in records} == {
        "pair-v2",
        "pair-v2-multi-turn",
        "pair-math-v1",
        "pair-math-v1-multi-turn",
    }
    printed = show(show_result.display_result_pairwise, input_file=str(path), baseline_model="gpt-3.5-turbo")
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("ours")]
    assert [int(x) for x in row[1:4]] == [2, 1, 2]  # win, loss, tie
    assert float(row[-1]) == pytest.approx(result.overall) == pytest.approx(3 / 5)  # win_rate_adjusted


def test_agreement_matches_compute_agreement(tmp_path):
    """Experts, authors and turns 1 and 2 in lmsys/mt_bench_human_judgments' schema; the judge (a length reward) is
    compared with the experts' votes exactly as `compute_agreement.py` compares gpt4-pair with human."""

    def conversation(question, answer_1, answer_2):
        return [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer_1},
            {"role": "user", "content": "Again."},
            {"role": "assistant", "content": answer_2},
        ]

    answers = {"m1": ("a long answer", "x"), "m2": ("short", "a longer second answer")}
    votes = [  # (question_id, judge, turn, winner)
        (81, "expert_0", 1, "model_a"),
        (81, "expert_1", 1, "tie"),
        (81, "expert_2", 1, "model_b"),
        (81, "author_0", 1, "model_b"),  # authors are another group: never compared with the judge
        (81, "expert_0", 2, "model_b"),
        (81, "expert_1", 2, "tie (bothbad)"),
        (82, "expert_0", 1, "model_a"),
        (82, "expert_3", 2, "model_a"),
    ]
    rows = [
        {
            "question_id": qid,
            "model_a": "m1",
            "model_b": "m2",
            "winner": winner,
            "judge": judge,
            "conversation_a": conversation(f"q{qid}", *answers["m1"]),
            "conversation_b": conversation(f"q{qid}", *answers["m2"]),
            "turn": turn,
        }
        for qid, judge, turn, winner in votes
    ]
    items = load_comparisons(rows)
    assert {item["rater"] for item in items} == {"expert"} and len(items) == 7
    length = [[float(len(r)) for r in item["responses"]] for item in items]
    ours = agreement(items, length, "length").fastchat

    # the judge's votes in the gpt4_pair split's schema, one per question, model pair and turn
    judge_votes = []
    for qid, turn in sorted({(q, t) for q, _, t, _ in votes}):
        a, b = (len(answers[m][turn - 1]) for m in ("m1", "m2"))
        winner = "model_a" if a > b else "model_b" if a < b else "tie"
        judge_votes.append({"question_id": qid, "model_a": "m1", "model_b": "m2", "winner": winner,
                            "judge": ["gpt-4", "pair-v2"], "turn": turn})  # fmt: skip
    data = compute_agreement.get_mt_bench_votes_data([judge_votes, rows])
    for turn in (1, 2):
        for kind, ban in (("with_ties", []), ("without_ties", ["tie"])):
            agree, total = compute_agreement.get_mt_bench_agreement(data[turn - 1], "gpt4-pair", "human", ban=ban)
            assert (ours[f"turn_{turn}"][kind]["agree"], ours[f"turn_{turn}"][kind]["total"]) == (agree, total)
    assert ours["overall"]["with_ties"] == {"agree": 3, "total": 7, "ratio": 3 / 7}

    # the gpt4_pair split itself: "tie (inconsistent)" is a label
    gpt4 = [dict(rows[0], judge=["gpt-4", "pair-v2"], winner="tie (inconsistent)")]
    assert load_comparisons(gpt4)[0]["human"] == [0.5, 0.5]


def test_public_schemas_are_detected_from_their_columns():
    hh = json.loads((FIXTURES / "hh_rlhf.json").read_text())
    tldr = json.loads((FIXTURES / "summarize_from_feedback.json").read_text())
    assert len(load_comparisons(hh)) == len(hh) and len(load_comparisons(tldr)) == len(tldr)
    with pytest.raises(ValueError, match="needs a reference answer.*--reward_model"):
        score_items(load_comparisons(tldr), "rouge")


@pytest.mark.real
def test_real_judge_mt_bench_run_read_by_show_result(smollm2_server, tmp_path):
    """A 2-question MT-Bench grading run against SmolLM2 served by `transformers serve`, FastChat's prompts (schema
    fixture) and layout. A 135M judge rarely writes `[[n]]` (and 8 tokens cut most replies: errors, by design here, to
    stay fast): the file must be valid and read by FastChat, and every unparsed reply counted as an error, not a score.
    """
    rows = [OURS[0], dict(OURS[0], question_id=82)]
    client = JudgeClient(
        smollm2_server.base_url, smollm2_server.model, max_tokens=8, timeout=300.0, max_retries=0, truncated_retries=0
    )
    path = fastchat.judgment_file(tmp_path / "mt_bench", smollm2_server.model, "single")
    result = judge_single(rows, client, path, model_name="ours", judge_prompts=JUDGE_PROMPTS)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["question_id"], r["turn"]) for r in records) == [(81, 1), (81, 2), (82, 1), (82, 2)]
    assert all(r["judge"] == [smollm2_server.model, r["judge"][1]] and r["model"] == "ours" for r in records)
    assert all(isinstance(r["judgment"], str) and isinstance(r["score"], int | float) for r in records)
    assert result.errors == sum(r["score"] == -1 for r in records) and result.judged + result.errors == 4
    printed = show(show_result.display_result_single, input_file=str(path))
    assert "First turn" in printed and "Average" in printed
