"""Converters from public preference datasets to the ranked schema.

Each fixture in ``tests/fixtures/`` reproduces its source's field names, nesting and types (UltraFeedback's string
ratings with "N/A" and NaN scores, a CNN/DM comparison whose ``post`` is None, a multi-turn hh-rlhf dialogue, a tied
ultrafeedback_binarized pair). Every bad-row case asserts the row index and the field in the error message.
"""

import json
import logging
import math
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset, disable_progress_bars

from trl_rankalign.data.converters import (
    CONVERTERS,
    convert,
    from_hh_rlhf,
    from_pairwise,
    from_summarize_from_feedback,
    from_ultrafeedback,
    from_ultrafeedback_binarized,
    group_pairwise,
    parse_hh_dialogue,
    to_ranked,
    top_ranked_completions,
)


disable_progress_bars()

FIXTURES = Path(__file__).parent / "fixtures"
LOGGER = "trl_rankalign.data.converters"


def load_rows(name: str):
    with open(FIXTURES / f"{name}.json") as f:  # Python's json reads the NaN literal
        return json.load(f)


def dataset(name: str) -> Dataset:
    return Dataset.from_list(load_rows(name))


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def as_list(ds):
    return [dict(row) for row in ds]


# ---------------------------------------------------------------------------------------------------------------------
# TRL pairwise
# ---------------------------------------------------------------------------------------------------------------------
SKY_STANDARD = [
    {"prompt": "The sky is", "completions": [" blue.", " green."], "scores": [1.0, 0.0]},
    {"prompt": "The sun rises in the", "completions": [" east.", " west."], "scores": [1.0, 0.0]},
]
SKY_CONVERSATIONAL = [
    {
        "prompt": [user("What color is the sky?")],
        "completions": [[assistant("It is blue.")], [assistant("It is green.")]],
        "scores": [1.0, 0.0],
    },
    {
        "prompt": [{"role": "system", "content": "Answer briefly."}, user("Where does the sun rise?")],
        "completions": [[assistant("In the east.")], [assistant("In the west.")]],
        "scores": [1.0, 0.0],
    },
]


@pytest.mark.parametrize(
    "form, expected",
    [
        ("standard", SKY_STANDARD),
        ("conversational", SKY_CONVERSATIONAL),
        ("implicit_standard", SKY_STANDARD),  # extract_prompt keeps the space on the completion side
        (
            "implicit_conversational",
            [SKY_CONVERSATIONAL[0], {**SKY_CONVERSATIONAL[1], "prompt": SKY_CONVERSATIONAL[1]["prompt"][1:]}],
        ),
    ],
)
def test_from_pairwise(form, expected):
    out = from_pairwise(Dataset.from_list(load_rows("trl_pairwise")[form]))
    assert out.column_names == ["prompt", "completions", "scores"]
    assert as_list(out) == expected


def test_from_pairwise_keeps_every_other_column():
    """`tools` and `chat_template_kwargs` (which TRL's DPO tokenises with) and any other column survive conversion."""
    tools = json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    extra = {"score_chosen": 9.0, "source": "x", "tools": tools, "chat_template_kwargs": {"enable_thinking": False}}
    rows = [{**row, **extra} for row in load_rows("trl_pairwise")["standard"]]
    converted = from_pairwise(Dataset.from_list(rows))
    assert as_list(converted.select_columns(["prompt", "completions", "scores"])) == SKY_STANDARD
    assert all({key: row[key] for key in extra} == extra for row in converted)


def test_from_pairwise_bad_rows():
    with pytest.raises(ValueError, match=r"field 'rejected': missing column"):
        from_pairwise(Dataset.from_list([{"prompt": "a", "chosen": "b"}]))
    rows = load_rows("trl_pairwise")["standard"] + [{"prompt": "x", "chosen": " y", "rejected": None}]
    with pytest.raises(ValueError, match=r"row 2, field 'rejected': missing or null"):
        from_pairwise(Dataset.from_list(rows))
    with pytest.raises(ValueError, match=r"row 0, field 'chosen': expected str or list, got int"):
        from_pairwise(Dataset.from_list([{"prompt": "x", "chosen": 3, "rejected": 4}]))
    # ultrafeedback_binarized's layout (string prompt, full conversations) is named in the error
    with pytest.raises(
        ValueError, match=r"row 0, field 'chosen': mixes standard and conversational.*ultrafeedback_binarized"
    ):
        from_pairwise(Dataset.from_list([load_rows("ultrafeedback_binarized")[0]]))
    with pytest.raises(ValueError, match=r"row 0, field 'chosen': .*no common prefix"):
        from_pairwise(Dataset.from_list([{"chosen": "Yes.", "rejected": "No."}]))
    # an empty completion is caught by the ranked validation, which also names the source field
    rows = load_rows("trl_pairwise")["standard"]
    rows[1]["chosen"] = "  "
    with pytest.raises(ValueError, match=r"row 1, field 'completions\[0\]': empty completion.*'chosen'"):
        from_pairwise(Dataset.from_list(rows))


# ---------------------------------------------------------------------------------------------------------------------
# openbmb/UltraFeedback
# ---------------------------------------------------------------------------------------------------------------------
HAIKU = [
    "Crimson leaves descend,\nwhispering to the cold earth -\nautumn's last letter.",
    "Leaves falling down, red and yellow on the ground, autumn is here now.",
    "Sure! Here is a haiku about autumn leaves:\n\nGolden leaves drift down\nDancing on the autumn breeze\nNature's last hurrah",
    "Autumn leaves are red. They fall from the trees in the fall season every year.",
]
CANBERRA = [
    "The capital of Australia is Canberra.",
    "The capital of Australia is Sydney.",
    "Canberra.",
    "Australia's capital is Canberra, which was purpose-built as a compromise between Sydney and Melbourne.",
]
FRENCH = ["Bonjour.", "Bon matin.", "Bonjour !", 'Good morning in French is "Buenos dias".']
PROMPTS = [
    "Write a haiku about autumn leaves.",
    "What is the capital of Australia?",
    'Translate to French: "Good morning".',
]


def test_fixture_reproduces_ultrafeedback_quirks():
    rows = load_rows("ultrafeedback")
    completion = rows[0]["completions"][0]
    assert set(rows[0]) == {"source", "instruction", "models", "correct_answers", "incorrect_answers", "completions"}
    assert set(completion) == {
        "model", "principle", "custom_system_prompt", "response", "annotations", "fine-grained_score",
        "overall_score", "critique",
    }  # fmt: skip
    assert set(completion["annotations"]) == {"helpfulness", "honesty", "instruction_following", "truthfulness"}
    assert set(completion["annotations"]["helpfulness"]) == {"Rating", "Rationale", "Rationale For Rating", "Type"}
    assert set(completion["annotations"]["honesty"]) == {"Rating", "Rationale"}
    assert isinstance(completion["annotations"]["helpfulness"]["Rating"], str)
    assert rows[1]["completions"][2]["annotations"]["helpfulness"]["Rating"] == "N/A"
    assert math.isnan(rows[1]["completions"][1]["overall_score"])


@pytest.mark.parametrize(
    "score, expected_scores, removed",
    [
        # row 1 loses its NaN overall_score completion; row 2 keeps 1 of 2 completions and is removed
        ("overall", [[8.5, 6.0, 7.5, 3.0], [9.0, 7.0, 9.5], [8.0, 4.0, 8.0, 2.0]], (2, 14, 1, 4)),
        ("helpfulness", [[4.0, 3.0, 4.0, 2.0], [4.0, 1.0, 5.0], [4.0, 2.0, 4.0, 1.0]], (2, 14, 1, 4)),
        (
            "fine_grained",
            [[4.75, 3.75, 4.5, 2.5], [4.75, 1.75, 4.666666666666667, 5.0], [4.75, 3.0, 4.75, 1.5]],
            (1, 14, 1, 4),
        ),
    ],
)
def test_from_ultrafeedback(score, expected_scores, removed, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = from_ultrafeedback(dataset("ultrafeedback"), score=score)
    kept_canberra = {
        "overall": [CANBERRA[0], CANBERRA[2], CANBERRA[3]],
        "helpfulness": [CANBERRA[0], CANBERRA[1], CANBERRA[3]],
        "fine_grained": CANBERRA,
    }[score]
    assert as_list(out) == [
        {"prompt": PROMPTS[0], "completions": HAIKU, "scores": expected_scores[0]},
        {"prompt": PROMPTS[1], "completions": kept_canberra, "scores": expected_scores[1]},
        {"prompt": PROMPTS[2], "completions": FRENCH, "scores": expected_scores[2]},  # 8.0/8.0 stays a tie
    ]
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"removed {removed[0]} of {removed[1]} completions" in message
    assert f"removed {removed[2]} of {removed[3]} rows left with fewer than 2 scored completions" in message


def test_from_ultrafeedback_conversational_and_aliases():
    out = from_ultrafeedback(dataset("ultrafeedback"), score="instruction-following", conversational=True)
    assert out[0] == {
        "prompt": [user(PROMPTS[0])],
        "completions": [[assistant(text)] for text in HAIKU],
        "scores": [5.0, 3.0, 4.0, 1.0],
    }
    assert len(out) == 4  # no "N/A" instruction-following rating in the fixture: nothing removed


def test_from_ultrafeedback_logs_info_when_nothing_removed(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    from_ultrafeedback(Dataset.from_list([load_rows("ultrafeedback")[0]]))
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    assert "removed 0 of 4 completions" in record.getMessage()


def test_from_ultrafeedback_every_row_removed_gives_an_empty_ranked_dataset(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = from_ultrafeedback(Dataset.from_list([load_rows("ultrafeedback")[2]]))
    assert len(out) == 0 and out.column_names == ["prompt", "completions", "scores"]
    assert "removed 1 of 1 rows" in caplog.text


def test_from_ultrafeedback_bad_rows():
    with pytest.raises(ValueError, match=r"unknown UltraFeedback score 'overall_score'"):
        from_ultrafeedback(dataset("ultrafeedback"), score="overall_score")

    rows = load_rows("ultrafeedback")
    del rows[2]["completions"][0]["annotations"]  # missing key: becomes null in the Arrow struct
    with pytest.raises(ValueError, match=r"row 2, field 'completions\[0\]\.annotations': missing or null"):
        from_ultrafeedback(Dataset.from_list(rows), score="helpfulness")

    rows = load_rows("ultrafeedback")
    rows[3]["completions"][1]["annotations"]["helpfulness"]["Rating"] = "four"
    with pytest.raises(ValueError, match=r"row 3, field 'completions\[1\]\.annotations\.helpfulness\.Rating'"):
        from_ultrafeedback(Dataset.from_list(rows), score="helpfulness")

    rows = load_rows("ultrafeedback")
    del rows[1]["completions"][3]["response"]
    with pytest.raises(ValueError, match=r"row 1, field 'completions\[3\]\.response': missing or null"):
        from_ultrafeedback(Dataset.from_list(rows))

    row = load_rows("ultrafeedback")[0]
    for completion in row["completions"]:
        completion["overall_score"] = str(completion["overall_score"])  # wrong type: "8.5"
    with pytest.raises(
        ValueError, match=r"row 0, field 'completions\[0\]\.overall_score': expected a number, got str"
    ):
        from_ultrafeedback(Dataset.from_list([row]))

    row = {**load_rows("ultrafeedback")[0], "completions": "four completions"}
    with pytest.raises(ValueError, match=r"row 0, field 'completions': expected list, got str"):
        from_ultrafeedback(Dataset.from_list([row]))

    rows = load_rows("ultrafeedback")
    rows[0]["completions"][1]["response"] = " "
    with pytest.raises(ValueError, match=r"row 0, field 'completions\[1\]\.response': empty response"):
        from_ultrafeedback(Dataset.from_list(rows))


# ---------------------------------------------------------------------------------------------------------------------
# HuggingFaceH4/ultrafeedback_binarized
# ---------------------------------------------------------------------------------------------------------------------
def test_from_ultrafeedback_binarized():
    out = from_ultrafeedback_binarized(dataset("ultrafeedback_binarized"))
    assert out.column_names == ["prompt", "completions", "scores"]
    assert as_list(out) == [
        {
            "prompt": [user("Which is larger, 7/8 or 5/6?")],
            "completions": [
                [assistant("7/8 is larger: 7/8 = 21/24 and 5/6 = 20/24.")],
                [assistant("5/6 is larger because 6 is less than 8.")],
            ],
            "scores": [9.0, 3.0],
        },
        {
            "prompt": [user('Give me a synonym for "happy".')],
            "completions": [[assistant("Joyful.")], [assistant("Cheerful.")]],
            "scores": [8.0, 8.0],  # tie kept
        },
        {
            "prompt": [user("Write a SQL query that counts the rows of the table users.")],
            "completions": [[assistant("SELECT COUNT(*) FROM users;")], [assistant("SELECT * FROM users;")]],
            "scores": [8.5, 5.0],
        },
    ]


def test_from_ultrafeedback_binarized_bad_rows():
    rows = load_rows("ultrafeedback_binarized")
    rows[2]["rejected"][0]["content"] = "Write a SQL query."
    with pytest.raises(ValueError, match=r"row 2, field 'rejected': its prompt messages differ"):
        from_ultrafeedback_binarized(Dataset.from_list(rows))

    rows = load_rows("ultrafeedback_binarized")
    rows[0]["chosen"][1]["role"] = "user"
    with pytest.raises(ValueError, match=r"row 0, field 'chosen\[1\]\.role': the last message must be 'assistant'"):
        from_ultrafeedback_binarized(Dataset.from_list(rows))

    rows = load_rows("ultrafeedback_binarized")
    rows[1]["score_rejected"] = None
    with pytest.raises(ValueError, match=r"row 1, field 'score_rejected': missing or null"):
        from_ultrafeedback_binarized(Dataset.from_list(rows))

    rows = load_rows("ultrafeedback_binarized")
    rows[1]["score_chosen"] = float("nan")
    with pytest.raises(ValueError, match=r"row 1, field 'scores\[0\]': non-finite score.*'score_chosen'"):
        from_ultrafeedback_binarized(Dataset.from_list(rows))


# ---------------------------------------------------------------------------------------------------------------------
# openai/summarize_from_feedback (comparisons)
# ---------------------------------------------------------------------------------------------------------------------
def test_from_summarize_from_feedback():
    rows = load_rows("summarize_from_feedback")
    assert rows[2]["info"]["post"] is None and rows[2]["batch"] == "cnndm0"  # the CNN/DM quirk is in the fixture
    out = from_summarize_from_feedback(Dataset.from_list(rows))
    assert as_list(out) == [
        {
            "prompt": (
                "SUBREDDIT: r/relationships\n\nTITLE: Roommate's boyfriend basically lives with us, how do I ask for "
                "help with bills?\n\nPOST: My roommate and I split rent evenly, but she has her boyfriend over five "
                "nights a week and he showers, cooks and uses the wifi. I like him, but the utility bill has gone up "
                "by a third. How do I bring it up without making things weird?\n\nTL;DR:"
            ),
            "completions": [
                " Roommate's boyfriend is over most nights and our bills went up. How do I ask them to chip in?",
                " roommate boyfriend stays over a lot",
            ],
            "scores": [1.0, 0.0],
        },
        {
            "prompt": (
                "SUBREDDIT: r/Guitar\n\nTITLE: Six months in and I can't sing and play at once\n\nPOST: I've been "
                "learning guitar for six months. I can play chords but switching between them is slow and my "
                "strumming falls apart whenever I try to sing at the same time.\n\nTL;DR:"
            ),
            "completions": [  # choice = 1: the second summary comes first
                " Six months of guitar: chord changes are slow and strumming breaks down when I sing. Tips?",
                " I can play chords but can't sing and strum.",
            ],
            "scores": [1.0, 0.0],
        },
        {
            "prompt": (
                "Article:\nA Victorian pier has reopened to the public after a two-year restoration costing 4 million "
                "pounds.\n\nVolunteers raised a quarter of the money through local events, and the council says the "
                "pier will host a summer festival.\n\nTL;DR:"
            ),
            "completions": [
                " Victorian pier reopens after a 4m pound, two-year restoration partly funded by volunteers.",
                " A pier reopened.",
            ],
            "scores": [1.0, 0.0],
        },
    ]


def test_from_summarize_from_feedback_single_leading_space():
    row = load_rows("summarize_from_feedback")[0]
    row["summaries"][0]["text"] = "No leading space here.  "
    out = from_summarize_from_feedback(Dataset.from_list([row]))
    assert out[0]["completions"][0] == " No leading space here."


def test_from_summarize_from_feedback_bad_rows():
    rows = load_rows("summarize_from_feedback")
    rows[1]["choice"] = 2
    with pytest.raises(ValueError, match=r"row 1, field 'choice': expected 0 or 1, got 2"):
        from_summarize_from_feedback(Dataset.from_list(rows))

    rows = load_rows("summarize_from_feedback")
    rows[2]["info"]["article"] = None
    with pytest.raises(ValueError, match=r"row 2, field 'info\.post': both 'info\.post' .* are missing or null"):
        from_summarize_from_feedback(Dataset.from_list(rows))

    rows = load_rows("summarize_from_feedback")
    rows[0]["info"]["subreddit"] = None
    with pytest.raises(ValueError, match=r"row 0, field 'info\.subreddit': missing or null"):
        from_summarize_from_feedback(Dataset.from_list(rows))

    rows = load_rows("summarize_from_feedback")
    rows[0]["summaries"] = rows[0]["summaries"][:1]
    with pytest.raises(ValueError, match=r"row 0, field 'summaries': expected 2 summaries, got 1"):
        from_summarize_from_feedback(Dataset.from_list(rows))

    rows = load_rows("summarize_from_feedback")
    del rows[1]["summaries"][1]["text"]
    with pytest.raises(ValueError, match=r"row 1, field 'summaries\[1\]\.text': missing or null"):
        from_summarize_from_feedback(Dataset.from_list(rows))


# ---------------------------------------------------------------------------------------------------------------------
# Anthropic/hh-rlhf
# ---------------------------------------------------------------------------------------------------------------------
def test_parse_hh_dialogue_keeps_paragraphs_inside_a_turn():
    text = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nSecond paragraph.\n\nHuman: Bye\n\nAssistant:"
    assert parse_hh_dialogue(text) == [
        user("Hi"),
        assistant("Hello.\n\nSecond paragraph."),
        user("Bye"),
        assistant(""),
    ]


def test_from_hh_rlhf():
    out = from_hh_rlhf(dataset("hh_rlhf"))
    assert as_list(out) == [
        {
            "prompt": [user("What are some good vegetables to plant in early spring?")],
            "completions": [
                [
                    assistant(
                        "Peas, spinach, lettuce and radishes all tolerate cool soil, so they can go in a few weeks "
                        "before the last frost."
                    )
                ],
                [assistant("Tomatoes.")],
            ],
            "scores": [1.0, 0.0],
        },
        {  # multi-turn: the earlier assistant turn belongs to the prompt
            "prompt": [
                user("How do I make a cup of tea?"),
                assistant("Do you want black tea or herbal tea?"),
                user("Black tea."),
            ],
            "completions": [
                [
                    assistant(
                        "Boil water, pour it over the tea bag and steep for three to five minutes.\n\n"
                        "Add milk or sugar if you like."
                    )
                ],
                [assistant("Put the tea bag in cold water.")],
            ],
            "scores": [1.0, 0.0],
        },
        {
            "prompt": [user("Can you tell me a joke?")],
            "completions": [
                [assistant("Why don't scientists trust atoms? Because they make up everything!")],
                [assistant("No.")],
            ],
            "scores": [1.0, 0.0],
        },
    ]


def test_from_hh_rlhf_bad_rows():
    rows = load_rows("hh_rlhf")
    rows[1]["rejected"] = rows[1]["rejected"].replace("Black tea.", "Green tea.")
    with pytest.raises(
        ValueError, match=r"row 1, field 'rejected': its dialogue before the final Assistant turn differs"
    ):
        from_hh_rlhf(Dataset.from_list(rows))

    rows = load_rows("hh_rlhf")
    rows[0]["chosen"] += "\n\nHuman: Thanks!"
    with pytest.raises(
        ValueError, match=r"row 0, field 'chosen': the dialogue does not end with an 'Assistant:' turn"
    ):
        from_hh_rlhf(Dataset.from_list(rows))

    rows = load_rows("hh_rlhf")
    rows[2]["chosen"] = "Tell me a joke. Sure: ..."
    with pytest.raises(ValueError, match=r"row 2, field 'chosen': expected a transcript"):
        from_hh_rlhf(Dataset.from_list(rows))

    rows = load_rows("hh_rlhf")
    rows[0]["rejected"] = "\n\nHuman: What are some good vegetables to plant in early spring?\n\nAssistant:"
    with pytest.raises(ValueError, match=r"row 0, field 'completions\[1\]\[0\]\.content': empty.*'rejected'"):
        from_hh_rlhf(Dataset.from_list(rows))


# ---------------------------------------------------------------------------------------------------------------------
# group_pairwise
# ---------------------------------------------------------------------------------------------------------------------
def test_group_pairwise():
    # prime pairs: 7>9, 9>10, 7>10, 2>10, 7>9 (duplicate) -> levels 7:0, 2:0, 9:1, 10:2
    out = group_pairwise(dataset("trl_pairwise_grouped"))
    assert as_list(out) == [
        {"prompt": "Name a prime number.", "completions": [" 7", " 2", " 9", " 10"], "scores": [2.0, 2.0, 1.0, 0.0]},
        {"prompt": "Name a primary color.", "completions": [" Red", " Green"], "scores": [1.0, 0.0]},
    ]


def test_group_pairwise_conversational_prompts_group_by_exact_messages():
    sky = [user("What color is the sky?")]
    rows = [
        {"prompt": sky, "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]},
        {"prompt": [user("What color is the sky? ")], "chosen": [assistant("Blue.")], "rejected": [assistant("Red.")]},
        {"prompt": sky, "chosen": [assistant("Green.")], "rejected": [assistant("Red.")]},
    ]
    assert as_list(group_pairwise(Dataset.from_list(rows))) == [
        {
            "prompt": sky,
            "completions": [[assistant(c)] for c in ("Blue.", "Green.", "Red.")],
            "scores": [2.0, 1.0, 0.0],
        },
        {
            "prompt": [user("What color is the sky? ")],
            "completions": [[assistant("Blue.")], [assistant("Red.")]],
            "scores": [1.0, 0.0],
        },
    ]


def test_group_pairwise_cycle_names_the_rows():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},  # row 0
        {"prompt": "q", "chosen": "x", "rejected": "y"},  # row 1, another prompt
        {"prompt": "p", "chosen": "b", "rejected": "c"},  # row 2
        {"prompt": "p", "chosen": "c", "rejected": "a"},  # row 3 closes a > b > c > a
        {"prompt": "p", "chosen": "c", "rejected": "d"},  # row 4 hangs off the cycle, not part of it
    ]
    with pytest.raises(ValueError, match=r"rows 0, 2, 3, fields 'chosen'/'rejected': .*cycle") as error:
        group_pairwise(Dataset.from_list(rows))
    assert "'a' > 'b' > 'c' > 'a'" in str(error.value)

    contradicting = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "b", "rejected": "a"}]
    with pytest.raises(ValueError, match=r"rows 0, 1, fields 'chosen'/'rejected'"):
        group_pairwise(Dataset.from_list(contradicting))

    itself = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"}]
    with pytest.raises(ValueError, match=r"row 1, field 'rejected': identical to 'chosen'"):
        group_pairwise(Dataset.from_list(itself))


# ---------------------------------------------------------------------------------------------------------------------
# Registry, auto-detection, Preferred-FT view
# ---------------------------------------------------------------------------------------------------------------------
def test_registry():
    assert set(CONVERTERS) == {
        "ranked", "pairwise", "ultrafeedback", "ultrafeedback_binarized", "summarize_from_feedback", "hh_rlhf",
        "group_pairwise", "alma_r",
    }  # fmt: skip
    out = convert(dataset("ultrafeedback"), "ultrafeedback", score="helpfulness")
    assert out["scores"][1] == [4.0, 1.0, 5.0]
    assert as_list(convert(dataset("hh_rlhf"), "hh_rlhf")) == as_list(from_hh_rlhf(dataset("hh_rlhf")))
    with pytest.raises(ValueError, match=r"unknown converter 'ultra'; valid keys: \[.*'hh_rlhf'.*'ultrafeedback'"):
        convert(dataset("ultrafeedback"), "ultra")


def test_convert_ranked_validates_every_row():
    ranked = [
        {"prompt": "p", "completions": ["a", "b", "c"], "scores": [1.0, 0.5, 0.0]},
        {"prompt": "q", "completions": ["a", "b"], "scores": [1.0]},
    ]
    with pytest.raises(ValueError, match=r"row 1, field 'scores': len\(scores\)=1 != len\(completions\)=2"):
        convert(Dataset.from_list(ranked), "ranked")
    ok = Dataset.from_list(ranked[:1])
    assert convert(ok, "ranked") is ok


def test_convert_iterable_dataset_is_lazy():
    stream = dataset("hh_rlhf").to_iterable_dataset()
    out = convert(stream, "hh_rlhf")
    assert isinstance(out, IterableDataset)
    assert list(out) == as_list(from_hh_rlhf(dataset("hh_rlhf")))

    rows = load_rows("hh_rlhf")
    rows[2]["rejected"] = rows[2]["rejected"].replace("a joke", "a story")
    out = convert(Dataset.from_list(rows).to_iterable_dataset(), "hh_rlhf")  # nothing raised before iterating
    with pytest.raises(ValueError, match=r"row 2, field 'rejected'"):
        list(out)


def test_to_ranked_auto_detects():
    ranked = Dataset.from_list(SKY_STANDARD)
    assert to_ranked(ranked) is ranked
    assert as_list(to_ranked(Dataset.from_list(load_rows("trl_pairwise")["conversational"]))) == SKY_CONVERSATIONAL
    with pytest.raises(ValueError, match=r"cannot detect the format from the columns \['instruction', 'completions'"):
        to_ranked(Dataset.from_list([{"instruction": "x", "completions": ["a", "b"]}]))
    with pytest.raises(ValueError, match=r"row 0, field 'scores\[1\]'"):
        to_ranked(Dataset.from_list([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, float("inf")]}]))


def test_top_ranked_completions():
    ranked = Dataset.from_list(
        [
            {"prompt": "p", "completions": ["low", "high", "mid"], "scores": [0.0, 2.0, 1.0]},
            {"prompt": "q", "completions": ["first", "second"], "scores": [1.0, 1.0]},  # tie: first wins
        ]
    )
    assert as_list(top_ranked_completions(ranked)) == [
        {"prompt": "p", "completion": "high"},
        {"prompt": "q", "completion": "first"},
    ]
    pairwise = Dataset.from_list(load_rows("trl_pairwise")["conversational"])
    assert as_list(top_ranked_completions(pairwise)) == [
        {"prompt": SKY_CONVERSATIONAL[0]["prompt"], "completion": [assistant("It is blue.")]},
        {"prompt": SKY_CONVERSATIONAL[1]["prompt"], "completion": [assistant("In the east.")]},
    ]
