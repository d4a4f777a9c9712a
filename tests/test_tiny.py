# Copyright 2025 The trl-rankalign authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Tests of the embedded default: the tiny review language, its shipped assets, the tiny tokenizer and model."""

import json
import random
import socket

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_rankalign import tiny
from trl_rankalign.tiny import (
    build_tiny_model,
    build_tiny_tokenizer,
    load_tiny,
    tiny_model_path,
    tiny_ranked_dataset,
    tiny_sft_dataset,
)
from trl_rankalign.tiny.language import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    make_corpus,
    make_ranked_dataset,
    make_sft_dataset,
    reward_fn,
    sample_completion,
    sample_prompt,
    true_reward,
)


ARCHS = ["qwen2", "llama"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------------------------
# The language
# ----------------------------------------------------------------------------------------------------------------


class TestTinyLanguage:
    @pytest.mark.parametrize(
        "text, expected",
        [
            (" The pasta was great.", 1.0),  # great
            (" The pasta was bland.", -1.0),  # bland
            (" The soup was okay.", 0.0),  # neutral adjective only
            (" Great, FRESH and lovely!", 3.0),  # case and punctuation do not matter
            (" The pasta was great, but the staff was rude and slow.", -1.0),  # 1 - 2
            (" Fresh bread; stale coffee. Cold soup!", -1.0),  # 1 - 2
            (" greatness and freshly", 0.0),  # whole words only
            ("", 0.0),
        ],
    )
    def test_true_reward(self, text, expected):
        assert true_reward(text) == expected
        assert isinstance(true_reward(text), float)

    def test_lexicons(self):
        assert isinstance(POSITIVE_WORDS, frozenset) and isinstance(NEGATIVE_WORDS, frozenset)
        assert len(POSITIVE_WORDS) >= 20 and len(NEGATIVE_WORDS) >= 20
        assert not POSITIVE_WORDS & NEGATIVE_WORDS

    def test_reward_fn_strings_and_messages(self):
        prompts = ["Review of the pasta:", [{"role": "user", "content": "Review of the pasta:"}]]
        completions = [
            " The pasta was great and fresh.",
            [{"role": "assistant", "content": " The staff was rude."}],
        ]
        # TRL passes extra keyword arguments (e.g. completion_ids) to reward functions
        assert reward_fn(prompts, completions, completion_ids=[[1], [2]]) == [2.0, -1.0]
        structured = [[{"role": "assistant", "content": [{"type": "text", "text": " Lovely!"}]}]]
        assert reward_fn(prompts[:1], structured) == [1.0]

    def test_samples_format(self):
        rng = random.Random(0)
        for _ in range(500):
            prompt = sample_prompt(rng)
            completion = sample_completion(rng, rng.uniform(-1, 1))
            assert prompt.endswith(":") and not prompt.endswith(" :")
            assert completion.startswith(" ") and not completion[1].isspace()
            assert 5 <= len(completion.split()) <= 25
            assert "<|" not in completion and "\n" not in completion

    def test_sentiment_bias(self):
        rng = random.Random(0)
        positive = [true_reward(sample_completion(rng, 1.0)) for _ in range(200)]
        negative = [true_reward(sample_completion(rng, -1.0)) for _ in range(200)]
        assert min(positive) >= 0 and max(negative) <= 0
        assert sum(positive) > 0 > sum(negative)

    def test_deterministic(self):
        assert make_corpus(50, seed=3) == make_corpus(50, seed=3)
        assert make_ranked_dataset(50, seed=3) == make_ranked_dataset(50, seed=3)
        assert make_sft_dataset(50, seed=3) == make_sft_dataset(50, seed=3)
        assert make_ranked_dataset(50, seed=3) != make_ranked_dataset(50, seed=4)


# ----------------------------------------------------------------------------------------------------------------
# Shipped assets
# ----------------------------------------------------------------------------------------------------------------


class TestShippedAssets:
    def test_ranked_rows(self):
        rows = _read_jsonl(tiny.RANKED_PATH)
        assert len(rows) == 300
        ks = set()
        num_with_ties = 0
        for row in rows:
            assert set(row) == {"prompt", "completions", "scores"}
            k = len(row["completions"])
            assert 2 <= k <= 6 and len(row["scores"]) == k
            ks.add(k)
            assert row["scores"] == [true_reward(c) for c in row["completions"]]
            assert all(isinstance(s, float) for s in row["scores"])
            assert len(set(row["completions"])) == k  # distinct completions
            assert len(set(row["scores"])) >= 2  # never fully tied
            num_with_ties += len(set(row["scores"])) < k
        assert ks == {2, 3, 4, 5, 6}
        assert num_with_ties >= 0.1 * len(rows)

    def test_sft_rows(self):
        rows = _read_jsonl(tiny.SFT_PATH)
        assert len(rows) == 300
        assert all(set(row) == {"prompt", "completion"} for row in rows)
        assert sum(true_reward(row["completion"]) for row in rows) > 0  # mildly positive

    def test_assets_match_generator(self):
        # The committed files are exactly what `scripts/make_tiny_assets.py` writes (seed 0)
        assert _read_jsonl(tiny.RANKED_PATH) == make_ranked_dataset(300, seed=0)
        assert _read_jsonl(tiny.SFT_PATH) == make_sft_dataset(300, seed=0)
        with open(tiny.CORPUS_PATH, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines == make_corpus(len(lines), seed=0)

    def test_assets_small(self):
        assert sum(p.stat().st_size for p in (tiny.CORPUS_PATH, tiny.RANKED_PATH, tiny.SFT_PATH)) < 400 * 1024

    def test_datasets(self):
        ranked = tiny_ranked_dataset()
        assert len(ranked) == 300 and set(ranked.column_names) == {"prompt", "completions", "scores"}
        assert len(tiny_ranked_dataset("train")) + len(tiny_ranked_dataset("test")) == 300
        assert tiny_ranked_dataset("test")[0] == ranked[270]
        sft = tiny_sft_dataset()
        assert len(sft) == 300 and set(sft.column_names) == {"prompt", "completion"}
        with pytest.raises(ValueError, match="split"):
            tiny_sft_dataset("validation")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


class TestTinyTokenizer:
    def test_deterministic(self, tokenizer):
        other = build_tiny_tokenizer()
        assert other.get_vocab() == tokenizer.get_vocab()
        assert other.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()

    def test_special_tokens(self, tokenizer):
        assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
        assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
        assert tokenizer.eos_token_id != tokenizer.pad_token_id
        assert tokenizer.bos_token is None
        assert len(tokenizer) <= 1024
        for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            assert tokenizer.tokenize(f"a{token}b") == ["a", token, "b"]  # never split

    def test_round_trip_text(self, tokenizer):
        for line in make_corpus(20, seed=5) + ["Unseen: ümlaut, digits 123 and emoji 🙂"]:
            assert tokenizer.decode(tokenizer(line)["input_ids"]) == line

    def test_prompt_is_token_prefix(self, tokenizer):
        # The trainers tokenize prompt and prompt + completion separately: the prompt's ids must be a prefix
        for row in make_ranked_dataset(50, seed=1):
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            for completion in row["completions"]:
                ids = tokenizer(row["prompt"] + completion + tokenizer.eos_token)["input_ids"]
                assert ids[: len(prompt_ids)] == prompt_ids
                assert ids[-1] == tokenizer.eos_token_id

    @pytest.mark.parametrize("system", [False, True])
    def test_chat_template_prefix(self, tokenizer, system):
        messages = [
            {"role": "user", "content": "Review of the pasta:"},
            {"role": "assistant", "content": " The pasta was great."},
            {"role": "user", "content": "Review of the cafe:"},
            {"role": "assistant", "content": " The cafe was rude!"},
        ]
        if system:
            messages.insert(0, {"role": "system", "content": "You write reviews."})
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt)
        assert full[len(prompt) :] == " The cafe was rude!<|im_end|>\n"
        prompt_ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False)
        full_ids = tokenizer.apply_chat_template(messages, return_dict=False)
        assert full_ids[: len(prompt_ids)] == prompt_ids  # also at the token level

    def test_chat_template_trl_compatible(self, tokenizer):
        from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

        assert has_generation_markers(tokenizer.chat_template)
        assert is_chat_template_stop_token_trained(tokenizer)  # <|im_end|> is inside the assistant mask


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class TestTinyModel:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_deterministic_and_small(self, tokenizer, arch):
        model = build_tiny_model(tokenizer, arch=arch, seed=0)
        again = build_tiny_model(tokenizer, arch=arch, seed=0)
        other = build_tiny_model(tokenizer, arch=arch, seed=1)
        assert model.config.model_type == arch
        assert sum(p.numel() for p in model.parameters()) <= 5_000_000
        assert all(p.dtype == torch.float32 for p in model.parameters())
        state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
        assert state.keys() == state_again.keys()
        assert all(torch.equal(state[name], state_again[name]) for name in state)
        assert not all(torch.equal(state[name], state_other[name]) for name in state)
        assert model.config.vocab_size == len(tokenizer)
        assert model.config.eos_token_id == tokenizer.eos_token_id
        assert model.config.pad_token_id == tokenizer.pad_token_id
        assert model.generation_config.pad_token_id == tokenizer.pad_token_id
        assert tokenizer.eos_token_id in model.generation_config.eos_token_id

    def test_unknown_arch(self, tokenizer):
        with pytest.raises(ValueError, match="arch"):
            build_tiny_model(tokenizer, arch="gpt2")

    @pytest.mark.parametrize("arch", ARCHS)
    def test_cache_round_trip(self, tokenizer, arch, tmp_path, monkeypatch, no_network):
        path = tiny_model_path(arch=arch, seed=0, cache_dir=tmp_path)
        assert arch in path and "seed0" in path
        assert [p.name for p in tmp_path.iterdir()] == [path.rsplit("/", 1)[-1]]  # no temporary folder left

        # A second call returns the cached folder without building anything
        def fail(*args, **kwargs):
            raise AssertionError("rebuilt a cached tiny model")

        monkeypatch.setattr(tiny, "build_tiny_model", fail)
        monkeypatch.setattr(tiny, "build_tiny_tokenizer", fail)
        assert tiny_model_path(arch=arch, seed=0, cache_dir=tmp_path) == path

        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        built = build_tiny_model(tokenizer, arch=arch, seed=0)
        assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in built.state_dict().items())

        loaded_tokenizer = AutoTokenizer.from_pretrained(path)
        assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
        assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id
        assert loaded_tokenizer.chat_template == tokenizer.chat_template
        # For qwen2, AutoTokenizer rebuilds a Qwen2Tokenizer from vocab and merges: it must tokenize identically
        for text in make_corpus(100, seed=7) + ["pasta:The 1234 it's Über\n\n  spaces<|im_end|>"]:
            assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]

    def test_load_tiny_uses_env_cache_and_generates(self, tmp_path, monkeypatch, no_network):
        monkeypatch.setenv("TRL_RANKALIGN_CACHE", str(tmp_path))
        model, tokenizer = load_tiny()
        assert len(list(tmp_path.iterdir())) == 1
        tokenizer.padding_side = "left"  # batched generation
        inputs = tokenizer(
            ["Review of the pasta:", "Write a review of the hotel room:"], return_tensors="pt", padding=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert out.shape == (2, inputs["input_ids"].shape[1] + 5)
        # Greedy: each first new token is the arg-max of the model's next-token logits for its (left-padded) prompt
        with torch.no_grad():
            next_token = model(**inputs).logits[:, -1].argmax(dim=-1)
        assert torch.equal(out[:, inputs["input_ids"].shape[1]], next_token)
        assert all(text.strip() for text in tokenizer.batch_decode(out[:, -5:], skip_special_tokens=True))
