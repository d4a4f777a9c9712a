"""Machine-translation data in ALMA's prompt format: SFT rows from human parallel data, WMT test prompt sets.

ALMA-R (Xu et al. 2024) fine-tunes on human-written parallel sentences, then aligns on scored candidate
translations (`from_alma_r` in [`trl_rankalign.data.converters`], registered as the converter `"alma_r"`). This module
holds the two other ends of that pipeline, in the same prompt format (`alma_prompt`) and with the same one leading
space before every target sentence:

- [`from_alma_parallel`]: ``haoranxu/ALMA-Human-Parallel`` → TRL prompt-completion rows (the SFT stage). A recipe
  names it `dataset_converter: trl_rankalign.data.translation:from_alma_parallel` (any `"module:function"` works).
- [`wmt_test_prompts`]: ``haoranxu/WMT22-Test`` → a prompt set with references and sources for
  `trl-rankalign eval generate` / `eval text-metrics` (BLEU, chrF) and [`trl_rankalign.evaluation.comet`].

```bash
python -m trl_rankalign.data.translation --pair de-en --output data/wmt22_de-en.jsonl   # needs the hub once
```
"""

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset

from .converters import ALMA_LANGUAGES, AnyDataset, _fail, _require_columns, _required, _type_name, alma_prompt


logger = logging.getLogger(__name__)

ALMA_PARALLEL = "haoranxu/ALMA-Human-Parallel"  # configs cs-en, de-en, is-en, ru-en, zh-en; splits train, validation
WMT22_TEST = "haoranxu/WMT22-Test"  # configs like de-en / en-de; split test; column named like the config


def _check_direction(source_lang: str, target_lang: str) -> None:
    for lang in (source_lang, target_lang):
        if lang not in ALMA_LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; ALMA's languages are {sorted(ALMA_LANGUAGES)}")
    if source_lang == target_lang:
        raise ValueError("source_lang and target_lang must differ")


def _pair(struct: Any, index: int, column: str, source_lang: str, target_lang: str) -> tuple[str, str]:
    if not isinstance(struct, Mapping):
        _fail(index, column, f"expected a struct of sentences, got {_type_name(struct)}")
    texts = []
    for lang in (source_lang, target_lang):
        text = _required(struct, lang, index, f"{column}.{lang}", str)
        if not text.strip():
            _fail(index, f"{column}.{lang}", "empty sentence")
        texts.append(text.strip())
    return texts[0], texts[1]


def from_alma_parallel(dataset: AnyDataset, source_lang: str, target_lang: str) -> Dataset:
    """Prompt-completion rows (TRL's SFT format) from ``haoranxu/ALMA-Human-Parallel`` for one direction.

    Source schema (one config per pair, named ``xx-en``; both directions use the same config)::

        {"translation": {"de": str, "en": str}}

    ```python
    >>> ds = load_dataset("haoranxu/ALMA-Human-Parallel", "de-en", split="train")
    >>> from_alma_parallel(ds, source_lang="de", target_lang="en")[0]
    {"prompt": "Translate this from German to English:\\nGerman: ...\\nEnglish:", "completion": " ..."}
    ```

    The prompt is ALMA's (`alma_prompt`); the completion is the human translation with one leading space, as the
    candidates of `from_alma_r`, so SFT and preference stages see the same text. A missing, null or empty sentence
    raises ``ValueError`` naming the row and field.
    """
    _check_direction(source_lang, target_lang)
    _require_columns(dataset, ["translation"], "from_alma_parallel")
    rows = []
    for index, example in enumerate(dataset):
        source, target = _pair(example["translation"], index, "translation", source_lang, target_lang)
        rows.append({"prompt": alma_prompt(source_lang, target_lang, source), "completion": " " + target})
    if not rows:
        raise ValueError("from_alma_parallel: the dataset is empty.")
    return Dataset.from_list(rows)


def wmt_test_prompts(dataset: AnyDataset, source_lang: str, target_lang: str, column: str | None = None) -> Dataset:
    """A prompt set `{"prompt", "reference", "source"}` from ``haoranxu/WMT22-Test`` (or any WMT-shaped test set).

    Source schema (config ``de-en`` for German→English, ``en-de`` for the reverse; the column is named like the
    config)::

        {"de-en": {"de": str, "en": str}}

    ```python
    >>> ds = load_dataset("haoranxu/WMT22-Test", "de-en", split="test")
    >>> wmt_test_prompts(ds, "de", "en").to_json("wmt22_de-en.jsonl")
    ```

    `prompt` is ALMA's prompt on the source sentence, `reference` the human translation (what `eval text-metrics`
    scores against) and `source` the source sentence (what COMET needs). `column` defaults to
    ``"{source_lang}-{target_lang}"``, falling back to ``"translation"``.
    """
    _check_direction(source_lang, target_lang)
    columns = list(dataset.column_names or [])
    if column is None:
        column = f"{source_lang}-{target_lang}"
        if column not in columns and "translation" in columns:
            column = "translation"
    _require_columns(dataset, [column], "wmt_test_prompts")
    rows = []
    for index, example in enumerate(dataset):
        source, reference = _pair(example[column], index, column, source_lang, target_lang)
        rows.append(
            {"prompt": alma_prompt(source_lang, target_lang, source), "reference": reference, "source": source}
        )
    if not rows:
        raise ValueError("wmt_test_prompts: the test set is empty.")
    return Dataset.from_list(rows)


def write_wmt_prompts(pair: str, output: str, dataset_name: str = WMT22_TEST, split: str = "test") -> Path:
    """Download ``dataset_name`` config `pair` (``"de-en"``: German→English) and write its prompt set as JSONL."""
    from datasets import load_dataset

    source_lang, _, target_lang = pair.partition("-")
    prompts = wmt_test_prompts(load_dataset(dataset_name, pair, split=split), source_lang, target_lang)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in prompts:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trl_rankalign.data.translation",
        description="Write a WMT test set as a prompt set (prompt, reference, source) for `trl-rankalign eval`.",
    )
    parser.add_argument("--pair", required=True, help="direction = config name, e.g. de-en (German to English)")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--dataset_name", default=WMT22_TEST)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    path = write_wmt_prompts(args.pair, args.output, args.dataset_name, args.split)
    print(f"{sum(1 for _ in open(path, encoding='utf-8'))} prompts -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
