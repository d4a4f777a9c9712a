"""TRL's DPO behaviour that a drop-in listwise trainer must keep, checked against `DPOTrainer` itself.

These are the cases of TRL's `tests/test_dpo_trainer.py` that the first audit found broken, as they apply to ranked
data (scripts/trl_contract/ runs TRL's own file against `RankDPOTrainer`). Each compares with a real `DPOTrainer` on
the same data, so a change of TRL's behaviour under this package fails here too.
"""

import json
import logging

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from trl_rankalign import PROConfig, PROTrainer, RankDPOConfig, RankDPOTrainer


# The tiny ChatML template, plus the tool schema and one template argument rendered into the system turn, as real
# tool-calling templates (Qwen2.5, Llama 3.1) do; and assistant tool calls rendered as JSON.
TOOL_TEMPLATE = (
    "{%- if tools -%}{{- '<|im_start|>system\nTools: ' + (tools | tojson) + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- if think is defined and think -%}{{- '<|im_start|>system\nThink first.<|im_end|>\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message.get('tool_calls') -%}{{- message['tool_calls'] | tojson -}}{%- else -%}"
    "{{- message['content'] -}}{%- endif -%}{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]


def tool_rows() -> list[dict]:
    """TRL's tool-calling preference rows: `tools` (a JSON string, as TRL's datasets store it), per-row
    `chat_template_kwargs`, and a chosen turn that calls a tool with no `content`."""
    prompt = [{"role": "user", "content": "Is it warm in Paris?"}]
    return [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "tool_calls": CALL}],
            "rejected": [{"role": "assistant", "content": "No idea."}],
            "tools": json.dumps(TOOLS),
            "chat_template_kwargs": {"think": think},
        }
        for think in (True, False)
    ]


@pytest.fixture(scope="module")
def tool_tokenizer(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def pairwise_config(config_class, tmp_path, **overrides):
    return cpu_config(config_class, tmp_path, **overrides)


def test_tokenisation_equals_dpo_on_tool_calling_data(tiny_path, tmp_path, tool_tokenizer):
    """Same prompt and completion ids as `DPOTrainer`: the tool schema and template arguments reach the template
    (a conversion that dropped those columns tokenised a much shorter prompt), tool calls without content are valid."""
    data = Dataset.from_list(tool_rows())
    dpo = DPOTrainer(
        tiny_path, args=pairwise_config(DPOConfig, tmp_path / "d"), train_dataset=data, processing_class=tool_tokenizer
    )
    rank = RankDPOTrainer(
        tiny_path,
        args=pairwise_config(RankDPOConfig, tmp_path / "r"),
        train_dataset=data,
        processing_class=tool_tokenizer,
    )
    for ours, theirs in zip(rank.train_dataset, dpo.train_dataset):
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        assert ours["completion_ids"] == [theirs["chosen_ids"], theirs["rejected_ids"]]
    without_tools = tool_tokenizer.apply_chat_template(tool_rows()[0]["prompt"], add_generation_prompt=True)
    assert len(rank.train_dataset[0]["prompt_ids"]) > len(without_tools) + 20  # the schema is in the prompt
    assert rank.train_dataset[0]["prompt_ids"] != rank.train_dataset[1]["prompt_ids"]  # per-row template kwargs


def test_tokenisation_equals_dpo_on_standard_data(tiny_path, tmp_path):
    rows = [{"prompt": "Review of the soup:", "chosen": " Lovely and warm.", "rejected": " Cold."}] * 2
    data = Dataset.from_list(rows)
    dpo = DPOTrainer(tiny_path, args=pairwise_config(DPOConfig, tmp_path / "d"), train_dataset=data)
    rank = RankDPOTrainer(tiny_path, args=pairwise_config(RankDPOConfig, tmp_path / "r"), train_dataset=data)
    ours, theirs = rank.train_dataset[0], dpo.train_dataset[0]
    assert ours["prompt_ids"] == theirs["prompt_ids"]
    assert ours["completion_ids"] == [theirs["chosen_ids"], theirs["rejected_ids"]]


def test_long_prompts_are_dropped_as_dpo_drops_them(tiny_path, tmp_path, caplog):
    rows = [
        {"prompt": "Review of the pasta: " * (1 + 10 * (i % 2)), "chosen": " Good.", "rejected": " Bad."}
        for i in range(6)
    ]
    data = Dataset.from_list(rows)
    dpo = DPOTrainer(tiny_path, args=pairwise_config(DPOConfig, tmp_path / "d", max_length=24), train_dataset=data)
    with caplog.at_level(logging.WARNING, logger="trl_rankalign.ranked_preference_trainer"):
        rank = RankDPOTrainer(
            tiny_path, args=pairwise_config(RankDPOConfig, tmp_path / "r", max_length=24), train_dataset=data
        )
    assert rank.train_dataset["prompt_ids"] == dpo.train_dataset["prompt_ids"]
    assert len(rank.train_dataset) == 3 and "Dropped 3 of 6 train lists" in caplog.text


@pytest.mark.parametrize("split", ["train", "eval"])
def test_precompute_with_an_iterable_dataset_raises_trls_error(tiny_path, tmp_path, split):
    rows = [{"prompt": "Soup:", "completions": [" Good.", " Bad.", " Meh."], "scores": [2.0, 0.0, 1.0]}] * 4
    iterable = IterableDataset.from_generator(lambda: iter(rows))
    datasets = {"train_dataset": Dataset.from_list(rows), "eval_dataset": Dataset.from_list(rows)}
    datasets[f"{split}_dataset"] = iterable
    args = pairwise_config(RankDPOConfig, tmp_path, precompute_ref_log_probs=True, max_steps=1)
    with pytest.raises(ValueError, match="not supported with IterableDataset"):
        RankDPOTrainer(tiny_path, args=args, **datasets)


@pytest.mark.parametrize("shared_prompt_forward", [False, True])
def test_evaluate_on_an_iterable_dataset_equals_dpo(tiny_path, tmp_path, shared_prompt_forward):
    """`evaluate(IterableDataset)` (TRL's test_evaluate_with_eval_dataset): accelerate dispatches such batches and
    slices every tensor by the first one's size, so every tensor of a ranked batch must lead with the same dimension.
    Five pairs in batches of two: the last batch is a short one."""
    rows = [{"prompt": f"Soup number {i} was", "chosen": " lovely and warm.", "rejected": " cold."} for i in range(5)]
    config = dict(per_device_eval_batch_size=2)
    dpo = DPOTrainer(
        tiny_path, args=pairwise_config(DPOConfig, tmp_path / "d", **config), train_dataset=Dataset.from_list(rows[:1])
    )
    rank = RankDPOTrainer(
        tiny_path,
        args=pairwise_config(RankDPOConfig, tmp_path / "r", shared_prompt_forward=shared_prompt_forward, **config),
        train_dataset=Dataset.from_list(rows[:1]),
    )
    theirs = dpo.evaluate(eval_dataset=IterableDataset.from_generator(lambda: iter(rows)))
    ours = rank.evaluate(eval_dataset=IterableDataset.from_generator(lambda: iter(rows)))
    for key in ("eval_loss", "eval_logps/chosen", "eval_logps/rejected", "eval_mean_token_accuracy"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


def test_vision_data_is_refused_clearly(tiny_path, tmp_path):
    """A text model with image data gets DPOTrainer's own error (TRL's test expects its wording); a reference-free
    trainer refuses vision data up front (DPOTrainer would blame `precompute_ref_log_probs`)."""
    rows = [{"images": [[0]], "prompt": "What is it?", "completions": [" A cat.", " A dog."], "scores": [1.0, 0.0]}]
    with pytest.raises(ValueError, match="vision-related.*vision-language model"):
        RankDPOTrainer(tiny_path, args=pairwise_config(RankDPOConfig, tmp_path), train_dataset=Dataset.from_list(rows))
    with pytest.raises(ValueError, match="does not train on vision datasets"):
        PROTrainer(tiny_path, args=pairwise_config(PROConfig, tmp_path), train_dataset=Dataset.from_list(rows))


@pytest.mark.parametrize("shared_prompt_forward", [False, True])
def test_logs_what_dpo_logs_with_the_same_token_count(tiny_path, tmp_path, shared_prompt_forward):
    """On pairs (K=2) every key TRL's DPO logs is logged, and `num_tokens`, `logits/*`, `mean_token_accuracy`,
    `entropy`, `rewards/*` and the loss equal DPO's (the shared-prompt forward counts the unshared tokens too)."""
    rows = [
        {"prompt": f"Review number {i} of the soup:", "chosen": " Lovely and warm.", "rejected": " Cold and bland."}
        for i in range(4)
    ]
    data = Dataset.from_list(rows)
    overrides = dict(max_steps=1, learning_rate=0.0, per_device_train_batch_size=4)
    dpo = DPOTrainer(tiny_path, args=pairwise_config(DPOConfig, tmp_path / "d", **overrides), train_dataset=data)
    rank = RankDPOTrainer(
        tiny_path,
        args=pairwise_config(RankDPOConfig, tmp_path / "r", shared_prompt_forward=shared_prompt_forward, **overrides),
        train_dataset=data,
    )
    assert rank.shared_prompt_forward is shared_prompt_forward
    dpo.train()
    rank.train()
    theirs, ours = dpo.state.log_history[0], rank.state.log_history[0]
    missing = set(theirs) - set(ours)
    assert not missing, missing
    for key in (
        "loss",
        "num_tokens",
        "logits/chosen",
        "logits/rejected",
        "mean_token_accuracy",
        "entropy",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


def test_reference_free_trainer_holds_no_reference_model(tiny_path, tmp_path):
    """Reference-free trainers keep no reference copy through DPOTrainer's public switch
    (`precompute_ref_log_probs`), not by patching TRL: if TRL loaded one anyway, `ref_model` would be set."""
    rows = [{"prompt": "Soup:", "completions": [" Good.", " Bad."], "scores": [1.0, 0.0]}] * 4
    trainer = PROTrainer(tiny_path, args=pairwise_config(PROConfig, tmp_path), train_dataset=Dataset.from_list(rows))
    assert trainer.ref_model is None and not trainer.precompute_ref_logps
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names  # nothing was computed
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
