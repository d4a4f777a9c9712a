"""`kl_to_sft`: the sampled estimate of KL(π ‖ π_SFT) on the token ids a round actually sampled.

For samples y ~ π(·|x), mean over samples of log π(y|x) − log π_SFT(y|x) estimates the sequence-level KL(π ‖ π_SFT).
It must be computed on the sampled *ids*: decoding then re-tokenising the text can merge or split tokens, and appending
EOS to a sample cut at `max_new_tokens` scores a token that was never drawn (the estimate the issue reported as −1.008
was +1.035 on the ids). A sample's ids are its new tokens up to and including its first EOS (that EOS was drawn), or
all `max_new_tokens` of them when it was cut.

With temperature, top-k or top-p other than (1, 0, 1) the samples come from the *warped* policy q, not π, and the
value is E_q[log π(y) − log π_SFT(y)] (log-probs of the unwarped models): a monitoring signal of how far π moved on
what it actually samples, not KL(π ‖ π_SFT). [`kl_estimand`] says which one a round measured.

[`SampledIds`] collects the ids from the transformers backend (its `on_token_ids` hook); a backend that gives no ids
(server, vLLM) or a resumed round whose samples were all cached falls back to the decoded text, tokenised without
special tokens and without EOS ([`ids_from_text`]; `kl_to_sft_source: "text"` in the round's metrics).
"""

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel
from trl.trainer.utils import selective_log_softmax


__all__ = ["SampledIds", "ids_from_text", "kl_estimand", "sequence_logps", "sampled_kl"]


class SampledIds:
    """The `on_token_ids` hook of [`~trl_rankalign.sampling.generation.TransformersBackend`]: keeps, per sampled
    sequence, `(prompt_ids, completion_ids)` with padding removed and the completion cut after its first EOS."""

    def __init__(self):
        self.samples: list[tuple[list[int], list[int]]] = []

    def __call__(self, prompt_ids, attention_mask, new_ids, generation_config) -> None:
        eos = generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])
        draws = new_ids.size(0) // prompt_ids.size(0)
        for row, sample in enumerate(new_ids.tolist()):
            prompt = prompt_ids[row // draws][attention_mask[row // draws].bool()].tolist()
            end = next((i + 1 for i, token in enumerate(sample) if token in eos), len(sample))
            self.samples.append((prompt, sample[:end]))


def ids_from_text(tokenizer, rendered_prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> list:
    """`(prompt_ids, completion_ids)` per completion from text (the fallback when a backend gives no ids): no special
    tokens added, no EOS appended, so a sample cut at the length limit is not scored as if it had ended."""
    samples = []
    for prompt, texts in zip(rendered_prompts, completions):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for text in texts:
            samples.append((prompt_ids, tokenizer(text, add_special_tokens=False)["input_ids"]))
    return samples


@torch.no_grad()
def sequence_logps(
    model: PreTrainedModel, samples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 8
) -> torch.Tensor:
    """log π(completion | prompt), summed over the completion's tokens, for each `(prompt_ids, completion_ids)`: `(N,)`
    float64. Right-padded batches through a plain forward and TRL's `selective_log_softmax`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            length = max(len(p) + len(c) for p, c in chunk)
            ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            scored = torch.zeros((len(chunk), length), dtype=torch.bool)
            for i, (prompt, completion) in enumerate(chunk):
                ids[i, : len(prompt) + len(completion)] = torch.tensor(prompt + completion, dtype=torch.long)
                mask[i, : len(prompt) + len(completion)] = 1
                scored[i, len(prompt) : len(prompt) + len(completion)] = True
            ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            per_token = selective_log_softmax(logits.float(), ids[:, 1:])  # (B, L - 1): log p of token t + 1
            out.append((per_token.double() * scored[:, 1:]).sum(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def sampled_kl(
    policy: PreTrainedModel, sft: PreTrainedModel, samples: Sequence[tuple[list[int], list[int]]], pad_token_id: int
) -> tuple[float, int]:
    """`(sum over samples of log π − log π_SFT, number of samples)`: summable across processes; the mean is the
    estimate. A sample whose prompt is empty cannot be scored and is skipped."""
    samples = [s for s in samples if s[0]]
    if not samples:
        return 0.0, 0
    difference = sequence_logps(policy, samples, pad_token_id) - sequence_logps(sft, samples, pad_token_id)
    return difference.sum().item(), len(samples)


def kl_estimand(temperature: float, top_k: int, top_p: float) -> str:
    """What `kl_to_sft` estimates for these decoding settings (logged with it)."""
    if temperature == 1 and top_k == 0 and top_p == 1:
        return "KL(pi||pi_sft)"
    return "E_q[log pi - log pi_sft], q = pi warped by temperature/top-k/top-p (not a KL)"


def mean(total: float, count: int) -> float:
    return total / count if count else math.nan
