"""Few-shot prompting baselines: exact prompts, stop at the next example, bad example files named."""

import pytest

from trl_rankalign.sampling.few_shot import TEMPLATES, build_few_shot_prompts, cut_at_stop


EXAMPLES = [
    {"prompt": "What is 2 + 2?", "completion": "4."},
    {"prompt": "Name a colour.", "completion": "Blue."},
    {"prompt": "Say hi.", "completion": "Hi!"},
]


def test_two_shot_dialogue_prompt_is_exact():
    (prompt,) = build_few_shot_prompts(["How are you?"], EXAMPLES, 2, "dialogue")
    assert prompt == (
        "Human: What is 2 + 2?\n\nAssistant: 4.\n\n"
        "Human: Name a colour.\n\nAssistant: Blue.\n\n"
        "Human: How are you?\n\nAssistant:"
    )
    chat = [{"role": "user", "content": "How are you?"}]  # a chat prompt's last message is the query
    assert build_few_shot_prompts([chat], EXAMPLES, 2, "dialogue") == [prompt]


def test_zero_shot_summarisation_is_the_tldr_prompt():
    assert build_few_shot_prompts(["A long post."], [], 0, "summarization") == ["A long post.\n\nTL;DR:"]
    (one_shot,) = build_few_shot_prompts(["Post B."], [{"prompt": "Post A.", "completion": "A."}], 1, "summarization")
    assert one_shot == "Post A.\n\nTL;DR: A.\n\n===\n\nPost B.\n\nTL;DR:"


def test_generation_stops_at_the_next_example():
    stop = TEMPLATES["dialogue"].stop
    assert cut_at_stop(" Fine, thanks.\n\nHuman: And you?\n\nAssistant: Good.", stop) == "Fine, thanks."
    assert cut_at_stop(" Fine.", stop) == "Fine."
    assert cut_at_stop(" A cat.\n\n===\n\nNext post", TEMPLATES["summarization"].stop) == "A cat."


def test_bad_examples_are_named():
    with pytest.raises(ValueError, match="few-shot example row 1, field 'completion': missing or empty"):
        build_few_shot_prompts(["q"], [EXAMPLES[0], {"prompt": "x"}], 2, "dialogue")
    with pytest.raises(ValueError, match="2-shot prompts need 2 examples, got 1"):
        build_few_shot_prompts(["q"], EXAMPLES[:1], 2)
    with pytest.raises(ValueError, match="Unknown few-shot template 'poetry'"):
        build_few_shot_prompts(["q"], EXAMPLES, 1, "poetry")
