import math

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset

from trl_rankalign.data import is_pairwise, is_ranked, rank_order, validate_ranked_dataset, validate_ranked_example
from trl_rankalign.data.schema import FLOAT32_MAX, require_non_empty, validate_tokenized_example


GOOD = {"prompt": "Review of the soup:", "completions": [" Lovely.", " Cold."], "scores": [1.0, 0.0]}
CHAT = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review the soup."}],
    "completions": [[{"role": "assistant", "content": "Lovely."}], [{"role": "assistant", "content": "Cold."}]],
    "scores": [2, 2],
}


def test_good_rows_pass():
    validate_ranked_example(GOOD, 0)
    validate_ranked_example(CHAT, 1)
    validate_ranked_example(dict(GOOD, completions=[" a", " b", " c", " d"], scores=[3, 1, 2, 1]), 2)


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "p", "completions": [" a", " b"]}, "scores", "missing column"),
        (dict(GOOD, completions=[" a"], scores=[1.0]), "completions", "K >= 2"),
        (dict(GOOD, scores=[1.0]), "scores", "len\\(scores\\)=1 != len\\(completions\\)=2"),
        (dict(GOOD, scores=[1.0, math.nan]), "scores\\[1\\]", "non-finite"),
        (dict(GOOD, scores=[math.inf, 0.0]), "scores\\[0\\]", "non-finite"),
        (dict(GOOD, scores=["high", 0.0]), "scores\\[0\\]", "expected a finite number"),
        (dict(GOOD, scores=[True, 0.0]), "scores\\[0\\]", "expected a finite number"),
        (dict(GOOD, scores=[1.0, 1e39]), "scores\\[1\\]", "score 1e\\+39 overflows float32"),
        (dict(GOOD, scores=[-1e39, 0.0]), "scores\\[0\\]", "overflows float32"),
        (dict(GOOD, scores=[10**400, 0]), "scores\\[0\\]", "overflows float32"),
        (dict(GOOD, completions=[" a", "  "]), "completions\\[1\\]", "empty completion"),
        (dict(GOOD, completions=[" a", 3]), "completions\\[1\\]", "expected a string"),
        (dict(GOOD, prompt=None), "prompt", "expected a string or a list of messages"),
        (dict(GOOD, prompt=" "), "prompt", "empty prompt"),
        (
            dict(CHAT, prompt=[{"role": "wizard", "content": "hi"}]),
            "prompt\\[0\\].role",
            "unknown chat role 'wizard'",
        ),
        (
            dict(CHAT, completions=[[{"role": "user", "content": "x"}], CHAT["completions"][1]]),
            "completions\\[0\\]\\[0\\].role",
            "unknown chat role 'user'",
        ),
        (dict(CHAT, completions=[" a", " b"]), "completions\\[0\\]", "must be a list of messages"),
        (dict(CHAT, prompt=[{"role": "user"}]), "prompt\\[0\\]", "'role' and 'content'"),
    ],
)
def test_bad_rows_name_row_and_field(row, field, message):
    with pytest.raises(ValueError, match=f"row 7, field '{field}': .*{message}"):
        validate_ranked_example(row, 7)


def test_dataset_validation_reports_the_bad_row_index():
    rows = [GOOD, GOOD, dict(GOOD, scores=[1.0, 2.0, 3.0])]
    with pytest.raises(ValueError, match="row 2, field 'scores'"):
        validate_ranked_dataset(Dataset.from_list(rows))
    with pytest.raises(ValueError, match="field 'scores': missing column"):
        validate_ranked_dataset(Dataset.from_list([{"prompt": "p", "completions": [" a", " b"]}]))


def test_schema_detection_and_rank_order():
    assert is_ranked(GOOD) and not is_pairwise(GOOD)
    assert is_pairwise(["prompt", "chosen", "rejected"]) and not is_ranked(["prompt", "chosen", "rejected"])
    assert rank_order([1.0, 3.0, 1.0, 2.0]) == [1, 3, 0, 2]  # stable: tied indices keep input order


def test_float32_bound_is_torch_float32_max_and_inclusive():
    assert FLOAT32_MAX == torch.finfo(torch.float32).max
    validate_ranked_example(dict(GOOD, scores=[FLOAT32_MAX, -FLOAT32_MAX]), 0)  # representable: accepted
    assert torch.isfinite(torch.tensor([FLOAT32_MAX, -FLOAT32_MAX], dtype=torch.float32)).all()
    validate_ranked_example(dict(GOOD, scores=[np.float32(2.5), np.int64(-3)]), 0)  # numpy scalars are numbers


# ---------------------------------------------------------------------------------------------- pre-tokenised rows

TOKENIZED = {"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5], [6]], "scores": [0.0, 1.0, 0.5]}


def test_good_tokenized_rows_pass():
    validate_tokenized_example(TOKENIZED, 0)
    validate_tokenized_example(dict(TOKENIZED, ref_logps=[-1.0, -2.5, -0.5], prompt="p", completions=["a"] * 3), 1)
    validate_tokenized_example(dict(TOKENIZED, prompt_ids=[], ref_logps=None), 2)  # empty prompt, no ref_logps
    validate_tokenized_example(dict(TOKENIZED, prompt_ids=[np.int64(1)], scores=[1, 2, np.float32(3)]), 3)


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt_ids": [1], "completion_ids": [[2], [3]]}, "scores", "missing column"),
        ({"completion_ids": [[2], [3]], "scores": [1, 0]}, "prompt_ids", "missing column"),
        (dict(TOKENIZED, prompt_ids="1 2"), "prompt_ids", "expected a list of token ids"),
        (dict(TOKENIZED, prompt_ids=[1, 2.0]), "prompt_ids\\[1\\]", "expected an int token id, got 2.0"),
        (dict(TOKENIZED, prompt_ids=[1, True]), "prompt_ids\\[1\\]", "expected an int token id"),
        (dict(TOKENIZED, prompt_ids=[1, -1]), "prompt_ids\\[1\\]", "non-negative, got -1"),
        (dict(TOKENIZED, completion_ids=[[3]], scores=[1.0]), "completion_ids", "K >= 2"),
        (dict(TOKENIZED, completion_ids=[[3], [], [6]]), "completion_ids\\[1\\]", "empty list of token ids"),
        (dict(TOKENIZED, completion_ids=[[3], [4, "5"], [6]]), "completion_ids\\[1\\]\\[1\\]", "expected an int"),
        (dict(TOKENIZED, completion_ids=[[3], 4, [6]]), "completion_ids\\[1\\]", "expected a list of token ids"),
        (dict(TOKENIZED, scores=[0.0, 1.0]), "scores", "len\\(scores\\)=2 != the number of completions 3"),
        (dict(TOKENIZED, scores=[0.0, math.nan, 1.0]), "scores\\[1\\]", "non-finite score nan"),
        (dict(TOKENIZED, scores=[0.0, 1.0, -math.inf]), "scores\\[2\\]", "non-finite score -inf"),
        (dict(TOKENIZED, scores=[1e39, 1.0, 0.0]), "scores\\[0\\]", "score 1e\\+39 overflows float32"),
        (dict(TOKENIZED, scores=[None, 1.0, 0.0]), "scores\\[0\\]", "expected a finite number"),
        (dict(TOKENIZED, scores="high"), "scores", "expected a list of numbers"),
        (dict(TOKENIZED, ref_logps=[-1.0, math.nan, -2.0]), "ref_logps\\[1\\]", "non-finite log-prob nan"),
        (dict(TOKENIZED, ref_logps=[-1.0, -2.0, -1e39]), "ref_logps\\[2\\]", "overflows float32"),
        (dict(TOKENIZED, ref_logps=[-1.0]), "ref_logps", "len\\(ref_logps\\)=1"),
    ],
)
def test_bad_tokenized_rows_name_row_and_field(row, field, message):
    with pytest.raises(ValueError, match=f"row 12, field '{field}': .*{message}"):
        validate_tokenized_example(row, 12)


# --------------------------------------------------------------------------------------------------- empty datasets


def _empty_iterable() -> IterableDataset:
    def rows():
        yield from ()

    return IterableDataset.from_generator(rows)


def test_validate_ranked_dataset_rejects_an_empty_dataset():
    empty = Dataset.from_dict({"prompt": [], "completions": [], "scores": []})
    for dataset in (empty, [], _empty_iterable()):
        with pytest.raises(ValueError, match="the dataset is empty"):
            validate_ranked_dataset(dataset)
    validate_ranked_dataset(empty, allow_empty=True)


def test_require_non_empty():
    require_non_empty(Dataset.from_list([GOOD]), "train")
    require_non_empty(Dataset.from_list([GOOD]).to_iterable_dataset(), "train")
    empty = Dataset.from_dict({"prompt": [], "completions": [], "scores": []})
    filtered = Dataset.from_list([GOOD]).to_iterable_dataset().filter(lambda row: False)
    for dataset in (empty, _empty_iterable(), filtered, []):
        with pytest.raises(ValueError, match="^The eval dataset is empty: "):
            require_non_empty(dataset, "eval")


def test_tool_calling_turns_are_valid():
    """TRL's tool-calling format: an assistant turn with `tool_calls` may have no (or null) content; a tool reply
    follows. A `tool_calls` that is not a list is named."""
    call = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    calling = [
        {"role": "assistant", "tool_calls": call},
        {"role": "tool", "name": "get_weather", "content": "22 C"},
        {"role": "assistant", "content": "It is warm."},
    ]
    validate_ranked_example(
        dict(CHAT, completions=[calling, [{"role": "assistant", "content": None, "tool_calls": call}]]), 0
    )
    bad = dict(CHAT, completions=[[{"role": "assistant", "tool_calls": "get_weather()"}], CHAT["completions"][1]])
    with pytest.raises(ValueError, match=r"row 4, field 'completions\[0\]\[0\].tool_calls': expected a list"):
        validate_ranked_example(bad, 4)
    with pytest.raises(ValueError, match=r"row 5, field 'completions\[0\]\[0\]': expected a message"):
        validate_ranked_example(dict(CHAT, completions=[[{"role": "assistant"}], CHAT["completions"][1]]), 5)
