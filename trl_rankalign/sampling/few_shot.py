"""Few-shot prompting baselines: k-shot prompts for a base model without a chat template.

The DPO paper compares its policies with zero-shot summarisation by a base model (`"<post>\\n\\nTL;DR:"`) and 2-shot
dialogue with Pythia-2.8B; [`TEMPLATES`] ships those two. A template renders k worked examples followed by the query;
generation stops at the next example boundary ([`FewShotTemplate.stop`]: the model would otherwise write the next
example itself), and [`cut_at_stop`] trims what a backend without stop strings returns. The prompts are plain
strings, so the baseline's answers go through `eval win-rate` / `text-metrics` like any checkpoint's.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


__all__ = ["TEMPLATES", "FewShotTemplate", "build_few_shot_prompts", "cut_at_stop", "few_shot_template"]


@dataclass(frozen=True)
class FewShotTemplate:
    """How k examples and a query become one prompt.

    Attributes:
        name: the template's name (`--few_shot_template`).
        example: a `str.format` pattern of one worked example over the example row's fields.
        query: the pattern of the query (the example pattern cut before its answer), over the prompt row's fields.
        fields: the fields an example row must have.
        separator: what goes between examples (and before the query).
        header: text before the first example.
        stop: strings at which a generated answer ends (the start of a next example).
    """

    name: str
    example: str
    query: str
    fields: tuple[str, ...]
    separator: str = "\n\n"
    header: str = ""
    stop: tuple[str, ...] = ()


TEMPLATES = {
    # Zero-shot TL;DR summarisation of a Reddit post (the DPO paper's base-model baseline; k = 0 by default)
    "summarization": FewShotTemplate(
        name="summarization",
        example="{prompt}\n\nTL;DR: {completion}",
        query="{prompt}\n\nTL;DR:",
        fields=("prompt", "completion"),
        separator="\n\n===\n\n",
        stop=("\n\n===", "\n\n\n"),
    ),
    # k-shot single-turn dialogue in Anthropic HH's format (the DPO paper's 2-shot Pythia-2.8B baseline)
    "dialogue": FewShotTemplate(
        name="dialogue",
        example="Human: {prompt}\n\nAssistant: {completion}",
        query="Human: {prompt}\n\nAssistant:",
        fields=("prompt", "completion"),
        separator="\n\n",
        stop=("\n\nHuman:", "\nHuman:"),
    ),
}


def few_shot_template(name_or_template: str | FewShotTemplate) -> FewShotTemplate:
    if isinstance(name_or_template, FewShotTemplate):
        return name_or_template
    if name_or_template not in TEMPLATES:
        raise ValueError(f"Unknown few-shot template {name_or_template!r}; choose from {sorted(TEMPLATES)}.")
    return TEMPLATES[name_or_template]


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and isinstance(value[-1], Mapping) and "content" in value[-1]:
        return str(value[-1]["content"]).strip()  # a chat row: its last message
    raise ValueError(f"{where}: expected a string, got {type(value).__name__}")


def build_few_shot_prompts(
    prompts: Sequence[Any],
    examples: Sequence[Mapping[str, Any]],
    num_shots: int,
    template: str | FewShotTemplate = "dialogue",
) -> list[str]:
    """One k-shot prompt per query: the template's header, the first `num_shots` examples and the query.

    Args:
        prompts: the queries (strings, or chat prompts whose last message is the query).
        examples: worked examples, rows with the template's `fields` (e.g. `prompt` and `completion`).
        num_shots: how many examples each prompt shows (0: zero-shot, the template's query alone).

    Raises:
        `ValueError` naming the example row and field when a field is missing or empty, and when fewer than
        `num_shots` examples are given.
    """
    template = few_shot_template(template)
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    if len(examples) < num_shots:
        raise ValueError(f"{num_shots}-shot prompts need {num_shots} examples, got {len(examples)}.")
    shots = []
    for index, row in enumerate(examples[:num_shots]):
        values = {}
        for field in template.fields:
            if row.get(field) in (None, "", []):
                raise ValueError(f"few-shot example row {index}, field '{field}': missing or empty")
            values[field] = _text(row[field], f"few-shot example row {index}, field '{field}'")
        shots.append(template.example.format(**values))
    prefix = template.header + "".join(shot + template.separator for shot in shots)
    return [prefix + template.query.format(prompt=_text(p, f"prompt row {i}")) for i, p in enumerate(prompts)]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first stop string (the model going on to write the next example), stripped."""
    end = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:end].strip()
