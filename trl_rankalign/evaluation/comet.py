"""COMET (Rei et al. 2022) with Unbabel's `unbabel-comet` package, an optional extra: `pip install "trl-rankalign[comet]"`.

```python
>>> from trl_rankalign.evaluation.comet import comet_score
>>> comet_score(["Der Hund schläft."], ["The dog sleeps."], ["The dog is sleeping."])
{"comet": 0.87, "scores": [0.87], "model": "Unbabel/wmt22-comet-da", "num_examples": 1}
```

`answers_comet_score` scores an answers file of `trl-rankalign eval generate` against a prompt set that has
`source` and `reference` columns (`python -m trl_rankalign.data.translation` writes one). The number is COMET's own
system score (the mean of the segment scores, about 0-1 for `wmt22-comet-da`; papers such as ALMA report it x 100).
The model is downloaded from the hub on first use.
"""

import os
from collections.abc import Sequence
from typing import Any


__all__ = ["COMET_EXTRA_MESSAGE", "answers_comet_score", "comet_score"]

DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"
COMET_EXTRA_MESSAGE = (
    'COMET needs the `unbabel-comet` package: pip install "trl-rankalign[comet]" (or pip install unbabel-comet).'
)


def _import_comet():
    try:
        import comet
    except ImportError as error:
        raise ImportError(COMET_EXTRA_MESSAGE) from error
    return comet


def comet_score(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    model: str = DEFAULT_COMET_MODEL,
    batch_size: int = 16,
    gpus: int | None = None,
) -> dict[str, Any]:
    """
    Corpus COMET of `hypotheses` given their `sources` and `references` (one each per hypothesis).

    Args:
        model: a COMET checkpoint on the hub (`Unbabel/wmt22-comet-da`, ALMA-R's reference-based metric) or a local
            `checkpoints/model.ckpt` path.
        batch_size: segments per forward pass.
        gpus: GPUs for COMET's predictor (default: 1 when CUDA is available, else 0).

    Returns:
        `{"comet": system score, "scores": per-segment scores, "model": model, "num_examples": N}`.

    Raises:
        `ImportError` naming the `comet` extra when `unbabel-comet` is not installed; `ValueError` when the three
        lists differ in length or are empty.
    """
    if not (len(sources) == len(hypotheses) == len(references)):
        raise ValueError(f"{len(sources)} sources, {len(hypotheses)} hypotheses and {len(references)} references.")
    if not hypotheses:
        raise ValueError("No hypotheses to score.")
    comet = _import_comet()
    path = model if os.path.isfile(model) else comet.download_model(model)
    scorer = comet.load_from_checkpoint(path)
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    output = scorer.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
    return {
        "comet": float(output.system_score),
        "scores": [float(s) for s in output.scores],
        "model": model,
        "num_examples": len(data),
    }


def answers_comet_score(answers, prompts: Sequence[dict], model: str = DEFAULT_COMET_MODEL, **kwargs) -> dict:
    """[`comet_score`] of an answers file (or rows) against a prompt set with `source` and `reference` columns,
    joined by index as `eval text-metrics` does (the first answer of each prompt is scored)."""
    from ..sampling.answers import answer_text, load_answers

    rows = load_answers(answers)
    sources, hypotheses, references = [], [], []
    for row in rows:
        index = row["index"]
        if index >= len(prompts) or prompts[index]["prompt"] != row["prompt"]:
            raise ValueError(f"Answer {index} does not belong to this prompt set (different prompt at that index).")
        prompt = prompts[index]
        for column in ("source", "reference"):
            if not isinstance(prompt.get(column), str):
                raise ValueError(f"Prompt set row {index} has no {column!r} string: COMET needs both columns.")
        sources.append(prompt["source"])
        references.append(prompt["reference"])
        hypotheses.append(answer_text(row["completions"][0]))
    return comet_score(sources, hypotheses, references, model=model, **kwargs)
