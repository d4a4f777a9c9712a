import math

import pytest
from datasets import Dataset

from trl_rankalign.data import is_pairwise, is_ranked, rank_order, validate_ranked_dataset, validate_ranked_example


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
