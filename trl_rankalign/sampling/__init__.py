"""Producing and scoring completions: the data side of alignment (imports no trainer, no CLI, no evaluation).

- `generation`: [`sample_completions`], the one entry point of every command that samples (backends `transformers`,
  each prompt prefilled once; `server`, any OpenAI-compatible `/v1/completions`; `vllm`, colocated), and
  [`sample_and_score`], its batched, sharded, scored and resumable form;
- `server`, `vllm_backend`: the server and vLLM backends; `arguments`: their options as one dataclass
  ([`GenerationArguments`]) mixed into the sampling stages' configs and added to the `rank` / `eval generate` parsers;
- `scorers`: a reward-model checkpoint or a Python callable as one `(prompts, completions) -> rewards` interface;
- `llm_judge`: an OpenAI-compatible judge client and the verdict parsers (over `http`: retries, rate limit, no
  redirects followed, no secret in messages);
- `prompts`: prompt sets (files, saved datasets, lists) and plain-text rendering;
- `answers`: one resumable answers file per checkpoint (used by `rank` and `eval generate`);
- `rank`: AI feedback, K candidates per prompt scored into a ranked dataset;
- `jsonl`, `fingerprint`: what every cache is built on: whole-line appends with damaged lines redone, and the
  fingerprints of models, tokenizers and callables its keys are made of.
"""

from .arguments import GenerationArguments
from .generation import Decoding, sample_and_score, sample_completions


__all__ = ["Decoding", "GenerationArguments", "sample_and_score", "sample_completions"]
