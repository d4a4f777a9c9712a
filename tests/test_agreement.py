"""Agreement of automatic judges with human preferences (`trl_rankalign.evaluation.agreement`)."""

import itertools
import json
import random
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from trl_rankalign.evaluation.agreement import (
    agreement,
    load_comparisons,
    plot_agreement,
    score_items,
    write_agreement,
)
from trl_rankalign.sampling.llm_judge import JudgeClient


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def naive_agreement(items, scores):
    """Plain loop over every pair of every item."""
    agree = total = human_ties = judge_ties = 0
    for item, judged in zip(items, scores):
        for i, j in itertools.combinations(range(len(judged)), 2):
            h = item["human"][i] - item["human"][j]
            if h == 0:
                human_ties += 1
                continue
            total += 1
            d = judged[i] - judged[j]
            if d == 0:
                judge_ties += 1
                agree += 0.5
            elif (h > 0) == (d > 0):
                agree += 1
    return agree / total, total, human_ties, judge_ties


def test_agreement_against_a_naive_loop_and_scipy():
    rng = random.Random(0)
    items, scores = [], []
    for index in range(40):
        k = rng.choice([2, 3, 4, 5])
        items.append(
            {
                "prompts": ["p"] * k,
                "responses": ["r"] * k,
                "human": [rng.randint(0, 2) for _ in range(k)],
                "row": index,
            }
        )
        scores.append([rng.randint(0, 3) for _ in range(k)])
    result = agreement(items, scores, "random")
    expected, pairs, human_ties, judge_ties = naive_agreement(items, scores)
    assert result.agreement == pytest.approx(expected)
    assert (result.pairs, result.human_ties, result.judge_ties) == (pairs, human_ties, judge_ties)
    assert result.ci_low <= result.agreement <= result.ci_high
    taus = [kendalltau(s, item["human"]).statistic for item, s in zip(items, scores) if len(s) >= 3]
    taus = [t for t in taus if t == t]  # scipy gives NaN for a constant list, which is left out
    assert result.kendall_tau == pytest.approx(sum(taus) / len(taus), abs=1e-6)


def test_pairwise_items_and_reference_judges(tmp_path):
    rows = [
        {
            "prompt": "Summarise: the cat sat on the mat all day.",
            "chosen": "The cat sat on the mat.",
            "rejected": "Dogs bark loudly at night.",
            "reference": "A cat sat on the mat.",
        },
        {
            "prompt": "Translate: Guten Morgen",
            "chosen": "Good morning",
            "rejected": "Good night",
            "reference": ["Good morning", "Morning!"],
        },
    ]
    items = load_comparisons(rows)
    assert items[0]["human"] == [1.0, 0.0] and items[1]["reference"] == ["Good morning", "Morning!"]
    results = [agreement(items, score_items(items, judge), judge) for judge in ("bleu", "rouge", "chrf")]
    assert all(r.agreement == 1.0 and r.pairs == 2 and r.kendall_tau is None for r in results)
    write_agreement(results, tmp_path / "result.json")
    assert set(json.loads((tmp_path / "result.json").read_text())) == {"bleu", "rouge", "chrf"}
    assert Path(plot_agreement(results, tmp_path / "agreement.png")).stat().st_size > 0
    with pytest.raises(ValueError, match="row 0, field 'reference': the bleu judge needs a reference"):
        score_items(load_comparisons([{k: v for k, v in rows[0].items() if k != "reference"}]), "bleu")


def test_mt_bench_human_judgments_in_fastchats_schema():
    # raters kept apart as FastChat does: by default the authors here (no experts), never mixed with gpt4_pair
    default = load_comparisons(FIXTURES / "mt_bench_human_judgments.json")
    assert [item["rater"] for item in default] == ["author"] * 3
    items = load_comparisons(FIXTURES / "mt_bench_human_judgments.json", raters="all")
    assert [item["human"] for item in items] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]
    # turn 2 is judged in each model's own context: its first answer and the second question
    assert [m["role"] for m in items[1]["prompts"][0]] == ["user", "assistant", "user"]
    assert items[1]["prompts"][1][1]["content"] == "Hawaii is nice."
    assert items[2]["responses"] == ["Rome.", "The capital of Italy is Rome."]
    longer = [[float(len(r)) for r in item["responses"]] for item in items]  # "the longer answer wins"
    result = agreement(items, longer, "length")
    assert (result.pairs, result.human_ties, result.agreement) == (2, 2, 1.0)


def test_reward_and_llm_judges(judge_server):
    items = load_comparisons(
        [{"prompt": "Review:", "completions": [" great food", " bad food", " ok"], "scores": [2, 0, 1]}]
    )
    reward = lambda prompts, completions: [c.count("great") - c.count("bad") for c in completions]  # noqa: E731
    result = agreement(items, score_items(items, "reward", reward=reward), "reward")
    assert result.agreement == 1.0 and result.kendall_tau == pytest.approx(1.0)

    def judge(request):  # prefers the answer that says "great", in whichever position it is
        text = request["messages"][-1]["content"]
        first = text.split("[The Start of Assistant B's Answer]")[0]
        return 200, "[[A]]" if "great" in first else "[[B]]"

    judge_server.reply = judge
    client = JudgeClient(judge_server.base_url, "stub-judge", timeout=5.0, max_retries=1, backoff=0.01)
    scores = score_items(items, "llm", client=client)
    assert len(judge_server.requests) == 6  # 3 pairs x 2 orders
    assert scores[0][0] == 2.0  # "great" beats both others


def test_bad_comparisons_name_the_row_and_field():
    rows = json.loads((FIXTURES / "mt_bench_human_judgments.json").read_text())
    rows[2]["winner"] = "model_c"
    with pytest.raises(ValueError, match="row 2, field 'winner': unknown label 'model_c'"):
        load_comparisons(rows)
    with pytest.raises(ValueError, match="row 1, field 'rejected'"):
        load_comparisons(
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": ""}]
        )
    with pytest.raises(ValueError, match=r"row 0, field 'scores\[1\]'"):
        load_comparisons([{"prompt": "a", "completions": ["b", "c"], "scores": [1.0, float("nan")]}])
    with pytest.raises(ValueError, match="empty"):
        load_comparisons([])
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_comparisons([{"question": "a"}])


@pytest.mark.parametrize("name", ["hh_rlhf", "summarize_from_feedback"])
def test_human_comparison_sources_through_the_converters(name):
    """Anthropic/hh-rlhf (test split) and openai/summarize_from_feedback (validation comparisons), in their exact
    schemas, become pairs with the human's choice first."""
    rows = json.loads((FIXTURES / f"{name}.json").read_text())
    items = load_comparisons(rows, format=name)
    assert len(items) == len(rows) and all(item["human"] == [1.0, 0.0] for item in items)
    assert all(isinstance(r, str) and r for item in items for r in item["responses"])


def test_llm_judge_sees_each_models_own_conversation_on_turn_2(judge_server):
    rows = json.loads((FIXTURES / "mt_bench_human_judgments.json").read_text())
    (item,) = load_comparisons([rows[1]])  # turn 2
    first_a, first_b = (item["prompts"][k][1]["content"] for k in (0, 1))
    assert first_a != first_b
    judge_server.reply = lambda request: (200, "[[A]]")  # position bias: A in both orders -> a tie
    client = JudgeClient(judge_server.base_url, "stub-judge", timeout=5.0, max_retries=0)
    assert score_items([item], "llm", client=client) == [[0.5, 0.5]]
    for request, (a, b) in zip(judge_server.requests, [(first_a, first_b), (first_b, first_a)]):
        text = request["messages"][-1]["content"]
        assert text.index(a) < text.index(b)  # A's own first answer, then B's own, in each order
    judge_server.requests.clear()
    prompts = FIXTURES / "fastchat_judge_prompts.jsonl"  # FastChat's schema: pair-v2-multi-turn on turn 2
    assert score_items([item], "llm", client=client, judge_prompts=prompts) == [[0.5, 0.5]]
    assert all(r["messages"][-1]["content"].startswith("[A conversation]") for r in judge_server.requests)
