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

"""
The tiny review language: a synthetic prompt/completion language with a known ground-truth reward.

Prompts ask for a review of a subject (`"Review of the pasta:"`); completions are short review sentences (5-25 words)
generated from a small grammar that mixes a positive lexicon, a negative lexicon and neutral filler words. The
ground-truth reward of a completion is

    true_reward(y) = #positive words in y - #negative words in y

counted on lowercase word tokens with punctuation stripped, so different completions for the same prompt get
different (integer) rewards and lists of completions naturally contain ties.

Everything is pure Python (stdlib `random` only) and deterministic for a seed. Conventions that the trainers rely on:

- every prompt ends with `":"`, every completion starts with exactly one space (`" The pasta was great."`), so the
  plain string concatenation `prompt + completion` reads naturally and the byte-level BPE of [`trl_rankalign.tiny`]
  never merges tokens across the boundary;
- completions never contain an EOS token (the trainers append it).

[`reward_fn`] has the signature of a TRL reward function (`prompts`, `completions`, `**kwargs`) and accepts plain
strings or chat-message lists; it is the callable reward model of the RSO / RAFT / rank demos.
"""

import random
import string


__all__ = [
    "NEGATIVE_WORDS",
    "NEUTRAL_WORDS",
    "POSITIVE_WORDS",
    "PROMPT_TEMPLATES",
    "SUBJECTS",
    "make_corpus",
    "make_ranked_dataset",
    "make_sft_dataset",
    "reward_fn",
    "sample_completion",
    "sample_prompt",
    "true_reward",
]

PROMPT_TEMPLATES = (
    "Review of the {}:",
    "Write a review of the {}:",
    "Your thoughts on the {}:",
    "Short review of the {}:",
)

SUBJECTS = (
    "pasta",
    "pizza",
    "soup",
    "coffee",
    "bread",
    "salad",
    "burger",
    "curry",
    "noodles",
    "dessert",
    "hotel room",
    "breakfast",
    "lobby",
    "pool",
    "beach",
    "museum",
    "concert",
    "film",
    "book",
    "phone",
    "laptop",
    "headphones",
    "camera",
    "bike",
    "train ride",
    "flight",
    "taxi",
    "bakery",
    "garden",
    "cafe",
)

POSITIVE_WORDS = frozenset(
    {
        "great",
        "fresh",
        "lovely",
        "excellent",
        "delicious",
        "friendly",
        "clean",
        "tasty",
        "wonderful",
        "perfect",
        "pleasant",
        "charming",
        "cozy",
        "superb",
        "amazing",
        "bright",
        "comfortable",
        "helpful",
        "quick",
        "fantastic",
        "warm",
        "generous",
        "tidy",
        "elegant",
        "delightful",
    }
)

NEGATIVE_WORDS = frozenset(
    {
        "bland",
        "rude",
        "dirty",
        "stale",
        "awful",
        "terrible",
        "cold",
        "slow",
        "noisy",
        "greasy",
        "soggy",
        "boring",
        "cramped",
        "dull",
        "overpriced",
        "broken",
        "smelly",
        "poor",
        "horrible",
        "disappointing",
        "messy",
        "bitter",
        "burnt",
        "shabby",
        "unpleasant",
    }
)

# Adjectives with no sentiment: they fill adjective slots without changing the reward.
NEUTRAL_WORDS = frozenset({"okay", "average", "ordinary", "typical", "simple", "standard", "usual", "fine"})

# Sorted tuples so that `rng.choice` is deterministic (iteration order of a frozenset of str is not).
_POSITIVE = tuple(sorted(POSITIVE_WORDS))
_NEGATIVE = tuple(sorted(NEGATIVE_WORDS))
_NEUTRAL = tuple(sorted(NEUTRAL_WORDS))
_ASPECTS = ("staff", "service", "portion", "price", "place", "atmosphere", "view", "decor", "seating", "music")
_DEGREES = ("really ", "quite ", "rather ", "very ", "a bit ", "honestly ", "")

# Clause grammar: {S} subject, {A} aspect, {D} optional degree adverb, {J} adjective drawn with the sentiment bias.
_CLAUSES = (
    "the {S} was {D}{J}",
    "the {A} felt {D}{J}",
    "I found the {A} {D}{J}",
    "honestly it was {J} and {J}",
    "we thought the {A} was {D}{J}",
    "overall a {J} experience",
    "the {A} was {J} but the {A} was {J}",
    "the {S} seemed {J} and {J}",
    "my friends said the {S} was {D}{J}",
)
_JOINERS = (", and ", ". ", ", but ", "; ")
_MIN_WORDS, _MAX_WORDS = 5, 25
_NEUTRAL_PROB = 0.2


def _words(text: str) -> list[str]:
    """Lowercase word tokens of `text` with surrounding punctuation stripped."""
    tokens = (token.strip(string.punctuation) for token in text.lower().split())
    return [token for token in tokens if token]


def true_reward(completion: str) -> float:
    """
    Ground-truth reward of a completion: number of positive words minus number of negative words.

    Words are the lowercase whitespace tokens of `completion` with punctuation stripped, so `"Great!"` counts as
    `"great"`.

    Example:

    ```python
    >>> true_reward(" The pasta was great, but the staff was rude and slow.")
    -1.0
    ```
    """
    words = _words(completion)
    return float(sum(word in POSITIVE_WORDS for word in words) - sum(word in NEGATIVE_WORDS for word in words))


def _as_text(x) -> str:
    """Text of a string, or of the last message of a chat-message list (content as a string or a list of blocks)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        content = x.get("content", "")
    else:  # list of messages
        content = x[-1]["content"] if len(x) > 0 else ""
    if isinstance(content, list):  # structured content: [{"type": "text", "text": ...}, ...]
        content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return content


def reward_fn(prompts: list, completions: list, **kwargs) -> list[float]:
    """
    Callable reward model of the tiny review language, with the signature of a TRL reward function.

    Args:
        prompts (`list`):
            Prompts, as strings or chat-message lists. Unused: the reward depends on the completion only.
        completions (`list`):
            Completions, as strings or chat-message lists (the last message's content is scored).
        **kwargs:
            Ignored; accepted so that TRL can pass extra columns (`completion_ids`, ...).

    Returns:
        `list[float]`: [`true_reward`] of each completion.
    """
    if prompts is not None and len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
    return [true_reward(_as_text(completion)) for completion in completions]


def sample_prompt(rng: random.Random) -> str:
    """Sample a prompt such as `"Review of the pasta:"` (always ends with `":"`)."""
    return rng.choice(PROMPT_TEMPLATES).format(rng.choice(SUBJECTS))


def _subject_of(prompt: str) -> str | None:
    for template in PROMPT_TEMPLATES:
        head, tail = template.split("{}")
        if prompt.startswith(head) and prompt.endswith(tail):
            return prompt[len(head) : len(prompt) - len(tail)]
    return None


def _adjective(rng: random.Random, p_positive: float) -> str:
    if rng.random() < _NEUTRAL_PROB:
        return rng.choice(_NEUTRAL)
    return rng.choice(_POSITIVE) if rng.random() < p_positive else rng.choice(_NEGATIVE)


def _clause(rng: random.Random, subject: str, p_positive: float) -> str:
    template = rng.choice(_CLAUSES)
    out = []
    for i, part in enumerate(template.split("{")):
        if i == 0:
            out.append(part)
            continue
        slot, rest = part[0], part[2:]
        if slot == "S":
            out.append(subject)
        elif slot == "A":
            out.append(rng.choice(_ASPECTS))
        elif slot == "D":
            out.append(rng.choice(_DEGREES))
        else:  # "J"
            out.append(_adjective(rng, p_positive))
        out.append(rest)
    return "".join(out)


def sample_completion(rng: random.Random, sentiment_bias: float = 0.0, subject: str | None = None) -> str:
    """
    Sample a review sentence of 5 to 25 words, starting with exactly one space and without an EOS token.

    Args:
        rng (`random.Random`):
            Source of randomness.
        sentiment_bias (`float`, *optional*, defaults to `0.0`):
            In `[-1, 1]` (clamped): each non-neutral adjective is positive with probability `(1 + bias) / 2`. `1.0`
            gives only positive and neutral adjectives, `-1.0` only negative and neutral ones.
        subject (`str`, *optional*):
            What the review is about; a random subject when `None`.

    Returns:
        `str`: e.g. `" The pasta was really fresh, and the staff felt rude."`.
    """
    bias = min(1.0, max(-1.0, float(sentiment_bias)))
    p_positive = (1.0 + bias) / 2.0
    subject = subject if subject is not None else rng.choice(SUBJECTS)
    while True:
        text = _clause(rng, subject, p_positive)
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            joiner = rng.choice(_JOINERS)
            clause = _clause(rng, subject, p_positive)
            if joiner == ". ":
                clause = clause[0].upper() + clause[1:]
            text += joiner + clause
        text = text[0].upper() + text[1:] + rng.choice((".", ".", ".", "!"))
        if _MIN_WORDS <= len(text.split()) <= _MAX_WORDS:
            return " " + text


def make_corpus(num_lines: int, seed: int = 0) -> list[str]:
    """
    Lines `prompt + completion` (e.g. `"Review of the pasta: The pasta was great."`), for tokenizer training and SFT.

    Completions use a sentiment bias drawn uniformly in `[-1, 1]` per line, so the corpus covers both lexicons.
    """
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        prompt = sample_prompt(rng)
        lines.append(prompt + sample_completion(rng, rng.uniform(-1.0, 1.0), subject=_subject_of(prompt)))
    return lines


def make_ranked_dataset(num_rows: int, seed: int = 0, min_k: int = 2, max_k: int = 6) -> list[dict]:
    """
    Ranked-preference rows `{"prompt": str, "completions": [str] * K, "scores": [float] * K}`.

    K is drawn uniformly in `[min_k, max_k]` per row. Each completion has its own sentiment bias (uniform in `[-1, 1]`)
    and `scores[k] == true_reward(completions[k])`. Scores are integers stored as floats, so many lists contain ties;
    completions within a row are distinct, and fully tied rows (every score equal, no ranking signal) are resampled,
    so every row has at least two distinct scores. The completions are not sorted by score.
    """
    if not 2 <= min_k <= max_k:
        raise ValueError(f"Need 2 <= min_k <= max_k, got min_k={min_k}, max_k={max_k}.")
    rng = random.Random(seed)
    rows = []
    while len(rows) < num_rows:
        prompt = sample_prompt(rng)
        subject = _subject_of(prompt)
        k = rng.randint(min_k, max_k)
        completions = []
        while len(completions) < k:
            completion = sample_completion(rng, rng.uniform(-1.0, 1.0), subject=subject)
            if completion not in completions:
                completions.append(completion)
        scores = [true_reward(completion) for completion in completions]
        if len(set(scores)) < 2:
            continue
        rows.append({"prompt": prompt, "completions": completions, "scores": scores})
    return rows


def make_sft_dataset(num_rows: int, seed: int = 0) -> list[dict]:
    """
    Prompt-completion rows `{"prompt": str, "completion": str}` with mildly positive completions (sentiment bias 0.5),
    the starting policy that the preference stages then improve.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        prompt = sample_prompt(rng)
        rows.append({"prompt": prompt, "completion": sample_completion(rng, 0.5, subject=_subject_of(prompt))})
    return rows
