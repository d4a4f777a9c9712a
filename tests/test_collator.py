import pytest
import torch

from trl_rankalign.data import DataCollatorForRankedPreference


EXAMPLES = [
    {"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "scores": [0.0, 1.0]},
    {"prompt_ids": [6], "completion_ids": [[7], [8], [9]], "scores": [2.0, 3.0, 2.0]},
]


def test_exact_tensors_sorted_completion_major_with_empty_slot():
    batch = DataCollatorForRankedPreference(pad_token_id=0)(EXAMPLES)
    # fmt: off
    expected_ids = torch.tensor([
        [1, 2, 4, 5],  # prompt 0, rank 1 (score 1.0)
        [6, 8, 0, 0],  # prompt 1, rank 1 (score 3.0)
        [1, 2, 3, 0],  # prompt 0, rank 2 (score 0.0)
        [6, 7, 0, 0],  # prompt 1, rank 2 (score 2.0, first of the tie: input order kept)
        [0, 0, 0, 0],  # prompt 0, empty slot: one attended pad token, no completion token
        [6, 9, 0, 0],  # prompt 1, rank 3 (score 2.0)
    ])
    expected_attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    expected_completion = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    # fmt: on
    assert torch.equal(batch["input_ids"], expected_ids)
    assert torch.equal(batch["attention_mask"], expected_attention)
    assert torch.equal(batch["completion_mask"], expected_completion)
    assert torch.equal(batch["list_mask"], torch.tensor([[True, True, False], [True, True, True]]))
    assert torch.equal(batch["scores"], torch.tensor([[1.0, 0.0, 0.0], [3.0, 2.0, 2.0]]))
    assert "ref_logps" not in batch
    # completion-major: per-sequence values (K*B,) reshape to (B, K) with view(K, B).T
    per_sequence = batch["completion_mask"].sum(dim=1).view(3, 2).T
    assert torch.equal(per_sequence, torch.tensor([[2, 1, 0], [1, 1, 1]]))


def test_ref_logps_follow_the_sort():
    examples = [dict(EXAMPLES[0], ref_logps=[-1.0, -2.0]), dict(EXAMPLES[1], ref_logps=[-3.0, -4.0, -5.0])]
    batch = DataCollatorForRankedPreference(pad_token_id=0)(examples)
    assert torch.equal(batch["ref_logps"], torch.tensor([[-2.0, -1.0, 0.0], [-4.0, -3.0, -5.0]]))


def test_truncation_pad_to_multiple_and_fixed_k():
    collator = DataCollatorForRankedPreference(
        pad_token_id=0, max_length=3, pad_to_multiple_of=4, pad_to_num_completions=4
    )
    batch = collator(EXAMPLES)
    assert batch["input_ids"].shape == (8, 4)  # K=4 slots x B=2, length 3 padded to 4
    assert torch.equal(batch["input_ids"][0], torch.tensor([1, 2, 4, 0]))  # keep_start truncation to 3 tokens
    assert torch.equal(batch["completion_mask"][0], torch.tensor([0, 0, 1, 0]))
    assert batch["list_mask"].shape == (2, 4) and not batch["list_mask"][:, 3].any()
    keep_end = DataCollatorForRankedPreference(pad_token_id=0, max_length=2, truncation_mode="keep_end")(EXAMPLES)
    assert torch.equal(keep_end["input_ids"][0], torch.tensor([4, 5]))


def test_bad_settings_fail_loudly():
    with pytest.raises(ValueError, match="truncation_mode"):
        DataCollatorForRankedPreference(pad_token_id=0, truncation_mode="middle")
    with pytest.raises(ValueError, match="pad_to_num_completions"):
        DataCollatorForRankedPreference(pad_token_id=0, pad_to_num_completions=2)(EXAMPLES)
