"""The generation backend options every sampling command shares, as one dataclass.

[`GenerationArguments`] is mixed into the configs of the stages that sample (`RSOConfig` for `sample`/`rso`,
`RAFTConfig` for `raft`), so recipes and `TrlParser` take `generation_backend`, `generation_base_url`, ... like any other
field; [`add_generation_arguments`] adds the same options, with the same names and help, to the `argparse` parsers of
`rank` and `eval generate`. [`backend_options`] turns either into the keyword arguments of
[`trl_rankalign.sampling.generation.sample_completions`]. The decoding settings (temperature, top-k, top-p,
max_new_tokens, seed) stay with each command (`sampling_temperature`, ... in the configs; `--temperature`, ... in the
commands).
"""

from dataclasses import dataclass, field, fields
from typing import Any


__all__ = ["GenerationArguments", "add_generation_arguments", "backend_options", "check_generation_arguments"]

BACKENDS = ("transformers", "vllm", "server")


@dataclass
class GenerationArguments:
    r"""
    Where samples come from.

    Parameters:
        generation_backend (`str`, *optional*, defaults to `"transformers"`):
            `"transformers"` (this process, each prompt prefilled once), `"server"` (an OpenAI-compatible
            endpoint: `vllm serve`, SGLang, TGI, `transformers serve`; how to use many GPUs or nodes) or `"vllm"`
            (colocated vLLM on this node, through TRL's `trl.generation`; `pip install "trl[vllm]"`).
        generation_base_url (`str`, *optional*):
            server: the endpoint, e.g. `http://localhost:8000/v1`.
        generation_model (`str`, *optional*):
            server: the served model's name (the checkpoint it serves must be the policy).
        generation_api_key_env (`str`, *optional*):
            server: environment variable holding the API key (unset: no key is sent).
        generation_concurrency (`int`, *optional*, defaults to `8`):
            server: requests in flight at once (each asks for all samples of one prompt).
        generation_max_retries (`int`, *optional*, defaults to `3`):
            server: retries of a failed request (timeouts, 429, 5xx), with exponential backoff.
        generation_timeout (`float`, *optional*, defaults to `600.0`):
            server: seconds per request.
        generation_rps (`float`, *optional*):
            server: rate limit in requests per second.
        generation_prompt_format (`str`, *optional*, defaults to `"tokens"`):
            server: send prompts as token ids (exact; vLLM, SGLang) or as `"text"` (`transformers serve`, TGI).
        generation_endpoint (`str`, *optional*, defaults to `"completions"`):
            server: `"completions"` (`/v1/completions`, the prompt rendered with the policy's chat template),
            `"chat"` (`/v1/chat/completions`, the server's template; OpenAI and TGI offer only this) or `"auto"`
            (chat prompts to chat, string prompts to completions).
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            vllm: share of GPU memory the colocated engine reserves.
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            vllm: GPUs per engine; only 1 is supported (use the server backend for tensor parallelism).
        vllm_max_model_length (`int`, *optional*):
            vllm: context length of the engine (prompt + completion).
    """

    generation_backend: str = field(
        default="transformers",
        metadata={
            "help": "Where samples come from: transformers (this process, each prompt prefilled once; the "
            "default, needs nothing else), server (an OpenAI-compatible endpoint: vLLM, SGLang, TGI, "
            "transformers serve; to use many GPUs or nodes) or vllm (colocated vLLM on this node).",
            "choices": list(BACKENDS),
        },  # fmt: skip
    )
    generation_base_url: str | None = field(
        default=None,
        metadata={
            "help": "server backend: base URL of the OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
            "(required with server)."
        },
    )
    generation_model: str | None = field(
        default=None,
        metadata={
            "help": "server backend: the model name the server serves (required with server); it must serve the "
            "policy's checkpoint."
        },
    )
    generation_api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "server backend: name of the environment variable holding the API key (the key itself never "
            "goes in a recipe). Unset: no key is sent."
        },
    )
    generation_concurrency: int = field(
        default=8,
        metadata={
            "help": "server backend: requests in flight at once, each asking for all samples of one prompt (>= "
            "1). Default 8; raise it to keep a large server busy, with sampling_batch_size at least as "
            "large."
        },
    )
    generation_max_retries: int = field(
        default=3,
        metadata={
            "help": "server backend: retries of a failed request (timeouts, 429, 5xx), with exponential backoff "
            "(>= 0). Default 3."
        },
    )
    generation_timeout: float = field(
        default=600.0,
        metadata={
            "help": "server backend: timeout of one request, in seconds (> 0). Default 600: a request asks for "
            "every sample of a prompt."
        },
    )
    generation_rps: float | None = field(
        default=None,
        metadata={
            "help": "server backend: rate limit, in requests per second (None: no limit), for endpoints with a quota."
        },
    )
    generation_prompt_format: str = field(
        default="tokens",
        metadata={
            "help": "server backend: send prompts as token ids (tokens, the default: the server continues exactly "
            "the tokens the trainers train on; vLLM, SGLang) or as text (servers that take only strings).",
            "choices": ["tokens", "text"],
        },
    )
    generation_endpoint: str = field(
        default="completions",
        metadata={
            "help": "server backend: which endpoint to call: completions (/v1/completions), chat "
            "(/v1/chat/completions) or auto (chat prompts to chat, text prompts to completions).",
            "choices": ["completions", "chat", "auto"],
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "vllm backend: share of GPU memory (0 to 1) the colocated engine reserves. Default 0.3 leaves "
            "the rest to training."
        },
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "vllm backend: GPUs per engine; only 1 is supported (use the server backend for tensor "
            "parallelism)."
        },
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={
            "help": "vllm backend: context length of the engine, prompt + completion, in tokens (None: the "
            "model's own)."
        },
    )


_FIELDS = fields(GenerationArguments)


def check_generation_arguments(args: Any) -> None:
    """Validate the generation fields of `args` (a config mixing in [`GenerationArguments`] or parsed options)."""
    if args.generation_backend not in BACKENDS:
        raise ValueError(f"generation_backend must be one of {BACKENDS}, got {args.generation_backend!r}.")
    if args.generation_backend == "server" and not (args.generation_base_url and args.generation_model):
        raise ValueError(
            "generation_backend=server needs generation_base_url (e.g. http://localhost:8000/v1) and generation_model "
            "(the served model's name)."
        )
    if args.generation_concurrency < 1 or args.generation_max_retries < 0 or not args.generation_timeout > 0:
        raise ValueError("generation_concurrency must be >= 1, generation_max_retries >= 0, generation_timeout > 0.")


def backend_options(args: Any) -> dict:
    """`backend` plus that backend's options for `sample_completions` / `sample_and_score`, from `args`."""
    check_generation_arguments(args)
    backend = args.generation_backend
    if backend == "server":
        options = dict(
            base_url=args.generation_base_url,
            served_model=args.generation_model,
            api_key_env=args.generation_api_key_env,
            concurrency=args.generation_concurrency,
            max_retries=args.generation_max_retries,
            timeout=args.generation_timeout,
            requests_per_second=args.generation_rps,
            prompt_format=args.generation_prompt_format,
            endpoint=args.generation_endpoint,
        )
    elif backend == "vllm":
        options = dict(
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            max_model_length=args.vllm_max_model_length,
        )
    else:
        options = {}
    return {"backend": backend, **options}


def add_generation_arguments(parser) -> None:
    """Add the [`GenerationArguments`] options (`--generation_backend`, ..., each with a `--kebab-case` alias) to an
    `argparse` parser."""
    for f in _FIELDS:
        flags = [f"--{f.name}", f"--{f.name.replace('_', '-')}"]
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kind = float if "float" in text else int if "int" in text else str
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata.get("help"), "type": kind}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)
