"""One generation layer for every command that samples: [`sample_completions`], and its resumable form [`sample_and_score`].

`sample_completions(model, processing_class, prompts, num_samples, backend=..., **decoding)` returns `num_samples`
completions (strings) per prompt, in prompt order, from one of three backends:

- `"transformers"` (default, CPU and GPU): each prompt is prefilled once and its KV cache shared by its samples
  ([`prefill_once_generate`]: the prompt minus its last token goes through one forward, the cache is repeated for the
  samples into a static cache, and `model.generate` continues from it), instead of `generate(num_return_sequences=n)`,
  which prefills every prompt n times. Same sampling distribution as `generate` (the same logits processors and
  warpers on the same logits), reproducible for a seed (batch `b` of a call is seeded `seed + b`), batched across
  prompts, with a progress bar;
- `"server"`: any OpenAI-compatible `/v1/completions` or `/v1/chat/completions` endpoint (`vllm serve`, SGLang, TGI,
  `transformers serve`), n samples per prompt in one request (asked again for the rest from a server that returns
  fewer), concurrent requests, retries, a rate limit ([`trl_rankalign.sampling.server`]);
- `"vllm"`: colocated vLLM through TRL's `trl.generation.VLLMGeneration` ([`trl_rankalign.sampling.vllm_backend`]).

Prompts are strings or chat-message lists; a chat prompt is rendered with the policy's own chat template
(`add_generation_prompt=True`) and tokenized without extra special tokens, whichever backend runs, so every backend
sees exactly the prompt the trainers train on.

[`sample_and_score`] is what the stages call: fixed batches of prompts (batch `b` seeded `seed + b`), sharded across
accelerate processes and gathered, optionally scored, and appended to a JSONL cache as they finish, one line per
prompt `{"index", "prompt", "completions", "generation", ["scores", "scorer"]}`. `generation` records everything the
completions depend on (backend, model fingerprint, tokenizer fingerprint, number of samples, decoding settings) and
`scorer` the scorer's identity; a rerun reuses only rows whose prompt, `generation` and `scorer` match, rescoring rows
whose scorer changed (without generating again) and regenerating rows made with other settings.
"""

import copy
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer
from trl.data_utils import is_conversational

from .fingerprint import callable_identity, diff_settings, model_fingerprint, tokenizer_fingerprint
from .jsonl import append_jsonl, read_jsonl, repair_jsonl, write_jsonl
from .scorers import CallableScorer, RewardModelScorer, check_rewards


__all__ = [
    "GENERATION_BACKENDS",
    "Decoding",
    "StaleCacheError",
    "cached_rows",
    "TransformersBackend",
    "generate_completions",
    "generation_settings",
    "make_backend",
    "prefill_once_generate",
    "read_jsonl",
    "render_prompt",
    "sample_and_score",
    "sample_completions",
    "scorer_identity",
]

logger = logging.getLogger(__name__)

GENERATION_BACKENDS = ("transformers", "vllm", "server")


# Decoding fields that only some backends apply (`supported_decoding` of a backend lists those it applies).
EXTRA_DEFAULTS = {"min_new_tokens": 0, "repetition_penalty": 1.0}
# transformers' generation names that `sample_completions` takes: the `Decoding` fields and `do_sample`.
GENERATION_NAMES = (
    "do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "min_new_tokens", "repetition_penalty", "seed"
)  # fmt: skip


class StaleCacheError(ValueError):
    """A cache holds results made with other settings, and regenerating them was not allowed (`on_stale="error"`)."""


# --------------------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Decoding:
    """Decoding settings shared by every backend.

    Args:
        temperature: sampling temperature; `0` is greedy decoding.
        top_k: keep the k most likely tokens (`0`: off).
        top_p: nucleus sampling (`1.0`: off).
        max_new_tokens: length limit of each completion.
        seed: seed of the sampling (see each backend for what it seeds).
        min_new_tokens: EOS is suppressed before this many new tokens (`0`: off). The transformers backend applies it;
            the server backend sends it as `min_tokens` (vLLM, SGLang); other backends refuse it.
        repetition_penalty: CTRL's repetition penalty (`1.0`: off); applied and sent (vLLM, SGLang, TGI) as above.

    [`sample_completions`] also takes transformers' `do_sample`: `False` is `temperature=0`.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 is off), got {self.top_k!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if (
            isinstance(self.min_new_tokens, bool)
            or not isinstance(self.min_new_tokens, int)
            or not 0 <= self.min_new_tokens <= self.max_new_tokens
        ):
            raise ValueError(
                f"min_new_tokens must be an integer in [0, max_new_tokens={self.max_new_tokens}], got "
                f"{self.min_new_tokens!r}."
            )
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 is off), got {self.repetition_penalty!r}.")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @classmethod
    def from_generation_config(cls, config: GenerationConfig, seed: int = 0) -> "Decoding":
        """The decoding settings a transformers `GenerationConfig` describes (`do_sample=False`: temperature 0)."""
        return cls(
            temperature=float(config.temperature if config.temperature is not None else 1.0)
            if config.do_sample
            else 0.0,
            top_k=int(config.top_k or 0) if config.do_sample else 0,
            top_p=float(config.top_p if config.top_p is not None else 1.0) if config.do_sample else 1.0,
            max_new_tokens=int(config.max_new_tokens or 20),
            seed=seed,
        )

    def apply_to(self, config: GenerationConfig) -> GenerationConfig:
        """A copy of `config` with these settings (greedy: the sampling knobs unset, so `generate` does not warn)."""
        config = copy.deepcopy(config)
        config.max_new_tokens = self.max_new_tokens
        config.do_sample = self.do_sample
        config.num_beams = 1
        if self.do_sample:
            config.temperature, config.top_k, config.top_p = self.temperature, self.top_k, self.top_p
        else:
            config.temperature, config.top_k, config.top_p = None, None, None
        # only when set: a base config's own penalty (a model's generation_config.json) otherwise stays in force
        if self.min_new_tokens:
            config.min_new_tokens = self.min_new_tokens
        if self.repetition_penalty != 1.0:
            config.repetition_penalty = self.repetition_penalty
        return config

    def extras(self) -> dict:
        """The settings beyond temperature/top-k/top-p/length/seed that differ from their defaults (`{}` for most
        calls): what a backend must support, and what cache keys carry only when set (older caches stay valid)."""
        return {
            name: getattr(self, name) for name, default in EXTRA_DEFAULTS.items() if getattr(self, name) != default
        }


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    """The text a model continues: a string prompt as it is, a chat prompt through the tokenizer's chat template."""
    if is_conversational({"prompt": prompt}):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def as_completion(prompt: Any, text: str) -> Any:
    """A completion in the ranked schema's form: the text for a string prompt, one assistant message for a chat one."""
    if is_conversational({"prompt": prompt}):
        return [{"role": "assistant", "content": text.strip()}]
    return text


# ------------------------------------------------------------------------------------------- transformers backend
def _cache_argument(model: Any) -> str | None:
    """The name under which this model's forward takes a `Cache` (`cache` in recent transformers, else the older
    `past_key_values`), or `None` for a model whose forward takes neither (then plain `generate` is used)."""
    if not isinstance(model, PreTrainedModel):
        return None
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _repeat_generate(model, input_ids, attention_mask, num_samples, config) -> torch.Tensor:
    config = copy.deepcopy(config)
    config.num_return_sequences = num_samples
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)


@torch.no_grad()
def prefill_once_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    generation_config: GenerationConfig,
    static_cache: bool = True,
) -> torch.Tensor:
    """`model.generate(input_ids, attention_mask, num_return_sequences=num_samples)` with each prompt prefilled once.

    The left-padded prompts `(B, L)` minus their last token go through one forward into a `DynamicCache`; the cache is
    repeated `num_samples` times per prompt (into a `StaticCache` sized for `L + max_new_tokens` when every layer is full
    attention, which also spares `generate` the per-step concatenation of a growing cache; by
    `DynamicCache.batch_repeat_interleave` otherwise) and `generate` continues from it with the full prompts, so it
    feeds only their last token: the n-1 extra prefills of each prompt are gone, everything else is `generate`'s own
    code (logits processors, warpers, stopping criteria). Models whose forward takes no cache, encoder-decoders, models
    with linear-attention (state-space) layers, one-token prompts and `num_samples == 1` use plain `generate`.

    Returns the `(B * num_samples, L + new)` sequences, the samples of prompt `i` in rows `i*n .. i*n + n - 1` (as
    `generate` orders them).
    """
    cache_argument = _cache_argument(model)
    length = input_ids.size(1)
    if (
        num_samples == 1
        or length < 2
        or cache_argument is None
        or model.config.is_encoder_decoder
        or generation_config.use_cache is False
        or generation_config.max_new_tokens is None
    ):
        return _repeat_generate(model, input_ids, attention_mask, num_samples, generation_config)
    text_config = model.config.get_text_config(decoder=True)
    prefill = DynamicCache(config=text_config)
    if any(not isinstance(layer, DynamicLayer) for layer in prefill.layers):  # linear attention, dummy layers, ...
        return _repeat_generate(model, input_ids, attention_mask, num_samples, generation_config)
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # as generate's
    kwargs = {cache_argument: prefill, "use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    model(
        input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=position_ids[:, :-1], **kwargs
    )
    cache = prefill
    if static_cache and all(type(layer) is DynamicLayer for layer in prefill.layers):
        static = StaticCache(config=text_config, max_cache_len=length + generation_config.max_new_tokens)
        if all(type(layer) is StaticLayer for layer in static.layers):
            for index, layer in enumerate(prefill.layers):
                static.update(
                    layer.keys.repeat_interleave(num_samples, dim=0),
                    layer.values.repeat_interleave(num_samples, dim=0),
                    index,
                )
            cache = static
    if cache is prefill:
        prefill.batch_repeat_interleave(num_samples)
    config = copy.deepcopy(generation_config)
    config.num_return_sequences = 1
    config.cache_implementation = None
    return model.generate(
        input_ids=input_ids.repeat_interleave(num_samples, dim=0),
        attention_mask=attention_mask.repeat_interleave(num_samples, dim=0),
        generation_config=config,
        **{cache_argument: cache},
    )


def _rng_devices(device: torch.device) -> list:
    """The devices whose RNG a sampling batch forks and seeds: the CPU always, and the model's CUDA device."""
    return [device] if device.type == "cuda" else []


class TransformersBackend:
    """Sampling with the policy in this process through transformers, each prompt prefilled once
    ([`prefill_once_generate`]).

    Args:
        batch_size: prompts per batch; batch `b` of a call is seeded `seed + b`.
        generation_config: the starting `GenerationConfig` (default: the model's own, which holds its EOS ids); the
            decoding settings are applied on top.
        prefill_once: share each prompt's prefill between its samples ([`prefill_once_generate`]); `False` calls
            `generate(num_return_sequences=n)` (the reference the benchmark compares with).
        static_cache: decode from a static cache (faster: no per-step concatenation of a growing cache); `False`
            repeats a `DynamicCache`.
        on_token_ids: called after each batch with `(prompt_ids, attention_mask, new_ids, generation_config)`: the
            left-padded prompts `(B, L)`, their mask, the sampled token ids `(B * draws, new)` (padded after EOS, in
            `generate`'s order) and the config they were drawn with; for callers that need the sampled ids (e.g. a
            KL estimate on them) rather than their decoded text.
    """

    name = "transformers"
    supported_decoding = frozenset(EXTRA_DEFAULTS)  # applied through the GenerationConfig

    def __init__(
        self,
        batch_size: int = 8,
        generation_config: GenerationConfig | None = None,
        prefill_once: bool = True,
        static_cache: bool = True,
        on_token_ids: Callable[..., None] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.generation_config = generation_config
        self.prefill_once = prefill_once
        self.static_cache = static_cache
        self.on_token_ids = on_token_ids

    def identity(self, model: Any) -> str:
        return model_fingerprint(model)

    def config_for(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, decoding: Decoding):
        base = self.generation_config or getattr(model, "generation_config", None) or GenerationConfig()
        config = decoding.apply_to(base)
        config.num_return_sequences = 1
        if config.pad_token_id is None:
            config.pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        if config.eos_token_id is None:
            config.eos_token_id = tokenizer.eos_token_id
        return config

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        num_samples: int,
        decoding: Decoding,
        progress: bool = False,
        desc: str = "Sampling",
    ) -> list[list[str]]:
        if model is None:
            raise ValueError("The transformers backend samples from a loaded model: pass one.")
        config = self.config_for(model, tokenizer, decoding)
        padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
        tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        if pad_token is None:  # e.g. Llama-3 / Mistral tokenizers: pad with EOS while batching prompts
            tokenizer.pad_token = tokenizer.eos_token
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        results = []
        bar = tqdm(total=len(texts), desc=desc, unit="prompt", disable=not progress)
        try:
            for batch, start in enumerate(range(0, len(texts), self.batch_size)):
                chunk = texts[start : start + self.batch_size]
                inputs = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                ids, mask = inputs["input_ids"], inputs["attention_mask"]
                draws = num_samples if decoding.do_sample else 1  # greedy: n copies of the one answer
                with torch.random.fork_rng(devices=_rng_devices(device)):  # the caller's RNG state is untouched
                    torch.manual_seed(decoding.seed + batch)
                    if self.prefill_once:
                        output = prefill_once_generate(model, ids, mask, draws, config, self.static_cache)
                    else:
                        output = _repeat_generate(model, ids, mask, draws, config)
                if self.on_token_ids is not None:
                    self.on_token_ids(ids, mask, output[:, ids.size(1) :], config)
                decoded = tokenizer.batch_decode(output[:, ids.size(1) :], skip_special_tokens=True)
                for i in range(len(chunk)):
                    texts_i = decoded[i * draws : (i + 1) * draws]
                    results.append(texts_i if draws == num_samples else texts_i * num_samples)
                bar.update(len(chunk))
        finally:
            bar.close()
            tokenizer.padding_side = padding_side
            if pad_token is None:
                tokenizer.pad_token = None
            model.train(was_training)
        return results


def make_backend(backend: Any = "transformers", **options) -> Any:
    """A backend object from its name and options (an object with `generate` and `identity` is returned as is).

    - `"transformers"`: `batch_size`, `generation_config`, `prefill_once`, `static_cache` ([`TransformersBackend`]);
    - `"server"`: `base_url`, `served_model`, `api_key_env`, `concurrency`, `max_retries`, `timeout`, `backoff`,
      `max_backoff`, `requests_per_second`, `prompt_format`, `endpoint`
      ([`trl_rankalign.sampling.server.ServerBackend`]);

    An option the backend does not take is a `ValueError` naming the decoding settings and the backend's options.
    - `"vllm"`: `gpu_memory_utilization`, `tensor_parallel_size`, `max_model_length`
      ([`trl_rankalign.sampling.vllm_backend.VLLMBackend`]).
    """
    if not isinstance(backend, str):
        if options:
            raise ValueError(f"Backend options {sorted(options)} given with a backend object: set them on it.")
        return backend
    if backend == "transformers":
        backend_class = TransformersBackend
    elif backend == "server":
        from .server import ServerBackend as backend_class
    elif backend == "vllm":
        from .vllm_backend import VLLMBackend as backend_class
    else:
        raise ValueError(f"Unknown generation backend {backend!r}; expected one of {GENERATION_BACKENDS}.")
    accepted = [name for name in inspect.signature(backend_class.__init__).parameters if name not in ("self", "sleep")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:  # rather than the constructor's bare "unexpected keyword argument"
        raise ValueError(
            f"Unknown option(s) {unknown} for the {backend} backend. Decoding settings: {list(GENERATION_NAMES)}; "
            f"{backend} backend options: {accepted}."
        )
    return backend_class(**options)


def _split_options(options: dict, defaults: dict | None = None) -> tuple[Decoding, dict]:
    """The [`Decoding`] in `options` (over `defaults`, a `Decoding` as a dict) and the rest (backend options).

    transformers' `do_sample` is read as it means there: `False` decodes greedily (temperature 0); `True` samples, at
    temperature 1 when only a greedy default (temperature 0) was there, and refuses an explicit `temperature=0`."""
    names = set(Decoding.__dataclass_fields__)
    given = {k: v for k, v in options.items() if k in names}
    merged = {**(defaults or {}), **given}
    if "do_sample" in options:
        do_sample = options["do_sample"]
        if not isinstance(do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {do_sample!r}.")
        if not do_sample:
            merged["temperature"] = 0.0
        elif merged.get("temperature", 1.0) == 0:
            if given.get("temperature") == 0:
                raise ValueError("do_sample=True contradicts temperature=0 (greedy): set a temperature > 0.")
            merged["temperature"] = 1.0
    decoding = Decoding(**merged)
    return decoding, {k: v for k, v in options.items() if k not in names and k != "do_sample"}


def _check_supported(engine: Any, decoding: Decoding) -> None:
    """Refuse settings the backend would silently ignore (`min_new_tokens`, `repetition_penalty` on vLLM, say)."""
    unsupported = sorted(set(decoding.extras()) - set(getattr(engine, "supported_decoding", ())))
    if unsupported:
        raise ValueError(
            f"The {getattr(engine, 'name', engine)} backend does not apply {unsupported}; leave them at their defaults "
            f"({ {name: EXTRA_DEFAULTS[name] for name in unsupported} }) or use a backend that does."
        )


def sample_completions(
    model: PreTrainedModel | None,
    processing_class: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    num_samples: int = 1,
    backend: Any = "transformers",
    *,
    progress: bool = True,
    desc: str = "Sampling",
    **decoding,
) -> list[list[str]]:
    """
    `num_samples` completions per prompt, in prompt order: `list[list[str]]`, one list of `num_samples` strings per
    prompt (the text after the prompt, special tokens skipped). The one entry point of every command that samples.

    Args:
        model: the policy (a loaded causal LM); may be `None` for the `"server"` backend, which only needs the
            tokenizer to render prompts.
        processing_class: the policy's tokenizer (its chat template renders chat prompts).
        prompts: strings or chat-message lists.
        backend: `"transformers"` (default), `"server"` or `"vllm"`, or a backend object from [`make_backend`].
        progress: show a progress bar (on the main process only).
        **decoding: transformers' generation names `do_sample`, `temperature` (0: greedy), `top_k`, `top_p`,
            `max_new_tokens`, `min_new_tokens`, `repetition_penalty`, `seed` ([`Decoding`]), and the backend's own
            options (see [`make_backend`]; e.g. `batch_size` for transformers, `base_url` and `served_model` for
            server). An unknown name is a `ValueError` listing the accepted ones.

    Example:
        ```python
        completions = sample_completions(model, tokenizer, ["Review of the pasta:"], 4, temperature=0.7, top_k=40)
        completions = sample_completions(None, tokenizer, prompts, 64, backend="server",
                                         base_url="http://localhost:8000/v1", served_model="my-sft", concurrency=32)
        ```
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    settings, options = _split_options(decoding)
    engine = make_backend(backend, **options)
    _check_supported(engine, settings)
    texts = [render_prompt(processing_class, prompt) for prompt in prompts]
    if not texts:
        return []
    show = progress and PartialState().is_main_process
    # a backend that can send chat messages as they are (the server's chat endpoint) also gets the prompts themselves
    extra = {"prompts": list(prompts)} if "prompts" in inspect.signature(engine.generate).parameters else {}
    completions = engine.generate(
        model, processing_class, texts, num_samples, settings, progress=show, desc=desc, **extra
    )
    if len(completions) != len(texts) or any(len(c) != num_samples for c in completions):
        raise RuntimeError(f"The {getattr(engine, 'name', backend)} backend returned the wrong number of completions.")
    return completions


def generate_completions(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    num_return_sequences: int = 1,
    generation_config: GenerationConfig | None = None,
    batch_size: int = 8,
    seed: int | None = None,
    *,
    backend: Any = None,
    decoding: Decoding | None = None,
) -> list[list[Any]]:
    """[`sample_completions`] with completions in the ranked schema's form (assistant messages for chat prompts): the
    step [`sample_and_score`] runs per batch.

    Without `decoding`, the settings come from `generation_config` (default: sampling, 64 new tokens) and `seed`;
    without `backend`, the transformers backend runs with `batch_size` and `generation_config`.
    """
    if decoding is None:
        config = generation_config or GenerationConfig(max_new_tokens=64, do_sample=True)
        decoding = Decoding.from_generation_config(config, seed=seed or 0)
    elif seed is not None:
        decoding = replace(decoding, seed=seed)
    if backend is None:
        backend = TransformersBackend(batch_size=batch_size, generation_config=generation_config)
    texts = sample_completions(
        model, tokenizer, prompts, num_return_sequences, backend, progress=False, **asdict(decoding)
    )
    return [[as_completion(p, t) for t in ts] for p, ts in zip(prompts, texts)]


# ------------------------------------------------------------------------------------------- the resumable layer
def scorer_identity(scorer: Any) -> str | None:
    """What a scorer's rewards depend on: a reward model's name, weights fingerprint, tokenizer and length limit, or
    a callable's [`callable_identity`] (module, qualified name, source)."""
    if scorer is None:
        return None
    if isinstance(scorer, RewardModelScorer):
        parts = [scorer.name, model_fingerprint(scorer.model), tokenizer_fingerprint(scorer.tokenizer)]
        return "reward_model:" + ":".join(parts) + f":max_length={scorer.max_length}"
    if isinstance(scorer, CallableScorer):
        return "callable:" + callable_identity(scorer.function)
    return "callable:" + callable_identity(scorer)


def generation_settings(
    model: Any,
    processing_class: PreTrainedTokenizerBase,
    num_samples: int,
    backend: Any,
    decoding: Decoding,
    generation_config: GenerationConfig | None = None,
    model_identity: str | None = None,
) -> dict:
    """Everything sampled completions depend on (the `generation` field of cached rows).

    `model_identity` overrides the backend's identity of `model` (e.g. the fingerprint of the checkpoint folder a
    policy is loaded from, computed before loading it). Batch size and transport settings (concurrency, retries, rate
    limit) are left out: they change how fast samples come, not what they are drawn from.
    """
    settings = {
        "backend": getattr(backend, "name", str(backend)),
        "model": model_identity if model_identity is not None else backend.identity(model),
        "tokenizer": tokenizer_fingerprint(processing_class),
        "num_samples": num_samples,
        **{k: v for k, v in asdict(decoding).items() if k not in EXTRA_DEFAULTS},
        **decoding.extras(),  # only when set: caches written before these settings existed stay valid
    }
    if generation_config is not None:
        extra = generation_config.to_diff_dict()
        extra.pop("transformers_version", None)
        settings["generation_config"] = extra
    return json.loads(json.dumps(settings, default=str))  # as read back from a JSONL row


def _valid_row(row: dict, prompts: list, settings: dict, num_samples: int) -> bool:
    index = row.get("index")
    return (
        isinstance(index, int)
        and 0 <= index < len(prompts)
        and row.get("prompt") == prompts[index]
        and row.get("generation") == settings
        and len(row.get("completions") or []) == num_samples
    )


def cached_rows(
    cache_file: str | os.PathLike, prompts: Sequence[Any], settings: dict, scorer_id: str | None = None
) -> dict[int, dict]:
    """`{index: row}` of the rows of a [`sample_and_score`] cache that match `prompts` and `settings` (from
    [`generation_settings`]) and, with `scorer_id`, were scored by that scorer (later lines win)."""
    prompts = list(prompts)
    rows = {}
    for row in read_jsonl(cache_file):
        if _valid_row(row, prompts, settings, settings.get("num_samples")):
            rows[row["index"]] = row
    if scorer_id is not None:
        rows = {i: row for i, row in rows.items() if row.get("scorer") == scorer_id}
    return rows


def sample_and_score(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    num_samples: int,
    scorer: Callable[[list, list], list[float]] | None = None,
    generation_config: GenerationConfig | None = None,
    batch_size: int = 8,
    cache_file: str | os.PathLike | None = None,
    seed: int = 0,
    desc: str = "Sampling",
    *,
    backend: Any = "transformers",
    model_identity: str | None = None,
    scorer_id: str | None = None,
    on_stale: str = "regenerate",
    **decoding,
) -> list[dict]:
    """Sample `num_samples` completions per prompt, score them, and return one row per prompt, in prompt order.

    Each row is `{"index", "prompt", "completions", "generation"}` plus `"scores"` and `"scorer"` with a `scorer`;
    completions are strings, or one assistant message list each for chat prompts. Prompts are generated in fixed batches
    of `batch_size` (batch `b` seeded `seed + b`), so a resumed run draws what the uninterrupted one would have. Under
    several processes the batches are split between them and the rows gathered, so every process returns all rows.

    Args:
        model: the policy; may be `None` when every row is cached or with the `"server"` backend.
        generation_config: a transformers `GenerationConfig` whose decoding settings are the defaults of `**decoding`
            (and whose other fields, e.g. a repetition penalty, the transformers backend applies).
        cache_file: JSONL appended batch by batch (whole lines, by whichever process finishes the batch). A rerun
            reuses the rows whose prompt and [`generation_settings`] match; damaged lines are dropped and redone.
            Rows made with other settings are regenerated (`on_stale="regenerate"`, with a warning naming the changed
            settings) or stop the run (`on_stale="error"`, a [`StaleCacheError`] naming them); rows scored by another scorer
            are rescored without generating.
        backend, **decoding: see [`sample_completions`]; `model_identity`: see [`generation_settings`].
        scorer_id: overrides [`scorer_identity`] of `scorer` (e.g. a reward checkpoint's file fingerprint, computed
            without loading it).
    """
    if len(prompts) == 0:
        raise ValueError("No prompts to sample from: the prompt set is empty.")
    if on_stale not in ("regenerate", "error"):
        raise ValueError(f"on_stale must be 'regenerate' or 'error', got {on_stale!r}.")
    prompts = list(prompts)
    base = Decoding.from_generation_config(generation_config, seed) if generation_config is not None else Decoding()
    decoding_settings, options = _split_options(decoding, defaults={**asdict(base), "seed": seed})
    if isinstance(backend, str) and backend == "transformers":
        options = {"batch_size": batch_size, "generation_config": generation_config, **options}
    engine = make_backend(backend, **options)
    _check_supported(engine, decoding_settings)
    settings = generation_settings(
        model, tokenizer, num_samples, engine, decoding_settings, generation_config, model_identity
    )
    if scorer is not None and scorer_id is None:
        scorer_id = scorer_identity(scorer)
    state = PartialState()

    def valid(row: dict) -> bool:
        return _valid_row(row, prompts, settings, num_samples)

    done: dict[int, dict] = {}
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        stale = [row for row in read_jsonl(cache_file) if _in_range(row, prompts) and not valid(row)]
        if stale:
            changes = diff_settings(stale[0].get("generation"), settings)
            if any(_in_range(row, prompts) and row.get("prompt") != prompts[row["index"]] for row in stale):
                changes.append("the prompt at some indices differs")
            message = f"{cache_file} holds {len(stale)} row(s) sampled with other settings ({'; '.join(changes)})"
            if on_stale == "error":
                raise StaleCacheError(message + ".")  # on every process: they all read the same file
            if state.is_main_process:
                logger.warning("%s: sampling them again.", message)
        state.wait_for_everyone()  # everyone has read the file before it is repaired
        if state.is_main_process:
            # damaged and stale lines go (rows of prompts beyond this prompt set stay); appends start on a fresh line
            repair_jsonl(cache_file, keep=lambda row: valid(row) or not _in_range(row, prompts))
        state.wait_for_everyone()  # every process reads the repaired cache before any appends to it
        for row in read_jsonl(cache_file):
            if valid(row):
                done[row["index"]] = row  # later lines win: a rescored row supersedes its first version

    # Fixed batches of the global prompt order, each sampled with its own seed: a batch draws the same completions
    # whatever the number of processes and whether or not the run was resumed.
    batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]

    def needs_work(i: int) -> bool:
        return i not in done or (scorer is not None and done[i].get("scorer") != scorer_id)

    todo = [b for b, indices in enumerate(batches) if any(needs_work(i) for i in indices)]
    my_rows = []
    with state.split_between_processes(todo) as my_batches:
        progress = tqdm(total=len(todo), desc=desc, disable=not state.is_main_process or not todo)
        for b in my_batches:
            indices = [i for i in batches[b] if needs_work(i)]
            to_sample = [i for i in indices if i not in done]
            rows = {i: dict(done[i]) for i in indices if i in done}
            if to_sample:  # the whole batch, as the uninterrupted run drew it, keeping only what is missing
                if model is None and getattr(engine, "name", "") != "server":
                    raise ValueError("Some prompts are not in the cache and no model was given to sample them.")
                completions = generate_completions(  # looked up at call time: tests count the batches through it
                    model,
                    tokenizer,
                    [prompts[i] for i in batches[b]],
                    num_samples,
                    generation_config,
                    len(batches[b]),
                    decoding_settings.seed + b,
                    backend=engine,
                    decoding=decoding_settings,
                )
                for i, completions_i in zip(batches[b], completions):
                    if i in to_sample:
                        rows[i] = {
                            "index": i,
                            "prompt": prompts[i],
                            "completions": completions_i,
                            "generation": settings,
                        }
            rows = [rows[i] for i in indices]
            if scorer is not None:
                flat_prompts = [row["prompt"] for row in rows for _ in row["completions"]]
                flat_completions = [c for row in rows for c in row["completions"]]
                rewards = check_rewards(scorer(flat_prompts, flat_completions), len(flat_completions), "scorer")
                for r, row in enumerate(rows):
                    row["scores"] = rewards[r * num_samples : (r + 1) * num_samples]
                    row["scorer"] = scorer_id
            my_rows.extend(rows)
            if cache_file is not None:  # one append per batch: whole lines, whichever process writes
                append_jsonl(cache_file, rows)
            progress.update(state.num_processes)
        progress.close()
    rescored = any(i in done and needs_work(i) for b in todo for i in batches[b])  # cached rows scored again
    gathered = gather_object(my_rows) if state.num_processes > 1 else my_rows
    for row in gathered:
        done[row["index"]] = row
    rows = [done[i] for i in range(len(prompts))]
    if cache_file is not None and rescored:
        if state.is_main_process:  # one line per prompt again (rows of prompts beyond this prompt set stay)
            write_jsonl(cache_file, rows + [r for r in read_jsonl(cache_file) if not _in_range(r, prompts)])
        state.wait_for_everyone()
    return rows


def _in_range(row: dict, prompts: list) -> bool:
    index = row.get("index")
    return isinstance(index, int) and 0 <= index < len(prompts)
