"""Producing and scoring completions: the data side of alignment (imports no trainer, no CLI, no evaluation).

- `generation`: K samples per prompt, optionally scored, batched, sharded across processes, resumable;
- `scorers`: a reward-model checkpoint or a Python callable as one `(prompts, completions) -> rewards` interface;
- `llm_judge`: an OpenAI-compatible judge client and the verdict parsers;
- `prompts`: prompt sets (files, saved datasets, lists) and plain-text rendering;
- `answers`: one resumable answers file per checkpoint (used by `rank` and `eval generate`);
- `rank`: AI feedback, K candidates per prompt scored into a ranked dataset.
"""
