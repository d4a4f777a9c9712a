"""`trl-rankalign eval ...`: the evaluation subcommands, registered by the main CLI with [`add_eval_parser`].

```
trl-rankalign eval generate --model CKPT [--model CKPT2 ...] --prompts prompts.jsonl --output_dir answers/
trl-rankalign eval generate --model CKPT --prompts prompts.jsonl --output_dir answers/ \\
    --generation_backend server --generation_base_url http://localhost:8000/v1 --generation_model CKPT
trl-rankalign eval win-rate --answers answers/policy.jsonl --baseline answers/sft.jsonl --reward_model RM_PATH
trl-rankalign eval win-rate --answers A.jsonl --baseline B.jsonl --judge_base_url http://localhost:8000/v1 --judge_model M
trl-rankalign eval text-metrics --answers answers/policy.jsonl --prompts prompts.jsonl
trl-rankalign eval export --answers answers/policy.jsonl --format alpaca_eval --output outputs.json
trl-rankalign eval plot --trainer_state outputs/rankdpo --output_dir plots/
```
Options take `--snake_case` (as TRL's) or `--kebab-case`. Errors in the inputs (missing file or checkpoint, empty
prompt set, unreachable judge, ...) print one `error:` line and return 1; whatever was written before stays on disk
and a rerun continues from it.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path


__all__ = ["add_eval_parser", "run_eval"]


def _opt(parser, name: str, **kwargs):
    """Add `--name_with_underscores` with a `--name-with-dashes` alias."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    return parser.add_argument(*flags, dest=name, **kwargs)


def _add_prompt_options(parser, required: bool):
    _opt(parser, "prompts", required=required, help="prompt set: .jsonl, .json or a save_to_disk folder")
    _opt(parser, "prompt_column", default="prompt", help="column holding the prompt (string or chat messages)")
    _opt(parser, "reference_column", default="reference", help="column holding the reference answer")
    _opt(parser, "split", default=None, help="split of a DatasetDict folder / JSON object of splits")
    _opt(parser, "limit", type=int, default=None, help="use only the first N prompts")


def add_eval_parser(subparsers) -> None:
    """Register `eval` and its subcommands on the main CLI's `subparsers` (from `parser.add_subparsers()`)."""
    evaluation = subparsers.add_parser("eval", help="generate answers, win rates, BLEU/ROUGE/chrF, exports, plots")
    commands = evaluation.add_subparsers(dest="eval_command", required=True)

    generate = commands.add_parser("generate", help="answers JSONL per checkpoint (batched, resumable)")
    _opt(generate, "model", action="append", required=True, help="checkpoint folder or hub id; repeat for several")
    _opt(generate, "name", action="append", default=None, help="answers file name per --model (default: folder)")
    _add_prompt_options(generate, required=True)
    _opt(generate, "output_dir", required=True, help="writes <output_dir>/<name>.jsonl")
    _opt(generate, "max_new_tokens", type=int, default=256)
    _opt(generate, "batch_size", type=int, default=8)
    _opt(generate, "do_sample", action="store_true", help="sample instead of greedy decoding")
    _opt(generate, "temperature", type=float, default=1.0, help="with --do_sample")
    _opt(generate, "top_k", type=int, default=0, help="with --do_sample (0: off)")
    _opt(generate, "top_p", type=float, default=1.0, help="with --do_sample")
    _opt(generate, "num_samples", type=int, default=1, help="answers per prompt (win rates use the first)")
    _opt(generate, "seed", type=int, default=0)
    add_generation_arguments(generate)

    win_rate = commands.add_parser("win-rate", help="pairwise win rate vs a baseline (reward model or LLM judge)")
    _opt(win_rate, "answers", required=True, help="answers JSONL of the model")
    _opt(win_rate, "baseline", required=True, help="answers JSONL of the baseline")
    judge = win_rate.add_mutually_exclusive_group(required=True)
    _opt(judge, "reward_model", help="sequence-classification reward model (folder or hub id)")
    _opt(judge, "reward_fn", help="a Python callable 'module:function' (prompts, completions) -> rewards")
    _opt(judge, "judge_base_url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    _opt(win_rate, "tie_tolerance", type=float, default=0.0, help="reward gap counted as a tie")
    add_judge_client_arguments(win_rate)
    _opt(win_rate, "judge_template", help="file with a user template using {question}, {answer_a}, {answer_b}")
    _opt(win_rate, "judge_system_prompt", help="file with the judge's system prompt")
    _opt(win_rate, "judge_cache", help="judgments JSONL (default: <answers>.vs.<baseline>.judgments.jsonl)")
    _opt(win_rate, "num_resamples", type=int, default=1000, help="bootstrap resamples")
    _opt(win_rate, "confidence", type=float, default=0.95)
    _opt(win_rate, "seed", type=int, default=0)
    _opt(win_rate, "output", help="write the result (with per-prompt outcomes) to this JSON file")

    metrics = commands.add_parser("text-metrics", help="BLEU, ROUGE and chrF against the prompt set's references")
    _opt(metrics, "answers", required=True)
    _add_prompt_options(metrics, required=True)
    _opt(metrics, "metrics", nargs="+", default=["bleu", "rouge", "chrf"], choices=["bleu", "rouge", "chrf"])
    _opt(metrics, "bleu_tokenize", default=None, help="sacrebleu tokenizer (13a, zh, ja-mecab, flores200, ...)")
    _opt(metrics, "chrf_word_order", type=int, default=0, help="2 for chrF++")
    _opt(metrics, "output", help="write the metrics to this JSON file")

    export = commands.add_parser("export", help="answers in AlpacaEval or MT-Bench (FastChat) input format")
    _opt(export, "answers", required=True)
    _opt(export, "format", required=True, choices=["alpaca_eval", "mt_bench"])
    _opt(export, "output", required=True, help="alpaca_eval: the JSON file; mt_bench: the bench folder")
    _opt(export, "model_name", help="generator / model_id (default: the answers file name)")
    _opt(export, "dataset", help="alpaca_eval 'dataset' field")
    _add_prompt_options(export, required=False)
    _opt(export, "question_id_column", default="question_id", help="mt_bench: question ids from --prompts")

    plot = commands.add_parser("plot", help="PNG curves from a run's trainer_state.json")
    _opt(plot, "trainer_state", required=True, help="trainer_state.json or the run's output folder")
    _opt(plot, "output_dir", required=True)

    evaluation.set_defaults(func=run_eval)


def add_generation_arguments(parser) -> None:
    """The generation backend options shared by `eval generate` and `rank` (`--generation_backend`, ...)."""
    from ..sampling.arguments import add_generation_arguments as add

    add(parser)


def _load_prompt_set(args):
    from ..sampling.answers import load_prompts

    return load_prompts(args.prompts, args.prompt_column, args.reference_column, args.split, args.limit)


def _import_callable(spec: str):
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--reward_fn must be 'module:function', got {spec!r}.")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import --reward_fn {spec!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"--reward_fn {spec!r} is not callable.")
    return function


def _write_json(data, path: str | None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")


def _generate(args) -> None:
    from ..sampling.answers import generate_answers_for_models, model_name_from_path
    from ..sampling.arguments import backend_options

    names = args.name or [model_name_from_path(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.name)} --name for {len(args.model)} --model: give one name per model.")
    if len(set(names)) != len(names):
        raise ValueError(f"Two checkpoints would write the same answers file ({names}): pass --name for each.")
    if args.generation_backend == "server" and len(args.model) > 1:
        raise ValueError("The server backend serves one model (--generation_model): give one --model per run.")
    files = generate_answers_for_models(
        dict(zip(names, args.model)),
        _load_prompt_set(args),
        args.output_dir,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        **backend_options(args),
    )
    print(json.dumps(files, indent=2))


def add_judge_client_arguments(parser) -> None:
    """The options of an OpenAI-compatible judge (`--judge_base_url` itself belongs to the caller's scorer group)."""
    _opt(parser, "judge_model", help="the judge's model name (with --judge_base_url)")
    _opt(parser, "judge_api_key_env", default="OPENAI_API_KEY", help="env var holding the API key")
    _opt(parser, "judge_timeout", type=float, default=60.0, help="seconds per request")
    _opt(parser, "judge_max_retries", type=int, default=3)
    _opt(parser, "judge_backoff", type=float, default=1.0, help="first retry wait in seconds, doubled each time")
    _opt(parser, "judge_rps", type=float, default=None, help="rate limit, requests per second")
    _opt(parser, "judge_workers", type=int, default=4, help="prompts judged concurrently")


def judge_client_from_args(args):
    """A `JudgeClient` from the options of `add_judge_client_arguments` and `--judge_base_url`."""
    from ..sampling.llm_judge import JudgeClient

    if not args.judge_model:
        raise ValueError("--judge_model is required with --judge_base_url.")
    return JudgeClient(
        args.judge_base_url,
        args.judge_model,
        api_key_env=args.judge_api_key_env or None,
        timeout=args.judge_timeout,
        max_retries=args.judge_max_retries,
        backoff=args.judge_backoff,
        requests_per_second=args.judge_rps,
    )


def _win_rate(args) -> None:
    from ..evaluation.win_rate import reward_win_rate

    stats = dict(num_resamples=args.num_resamples, confidence=args.confidence, seed=args.seed)
    if args.judge_base_url:
        from ..evaluation.win_rate import DEFAULT_JUDGE_SYSTEM_PROMPT, DEFAULT_PAIRWISE_TEMPLATE, llm_judge_win_rate

        client = judge_client_from_args(args)
        template = Path(args.judge_template).read_text(encoding="utf-8") if args.judge_template else None
        system = Path(args.judge_system_prompt).read_text(encoding="utf-8") if args.judge_system_prompt else None
        cache = args.judge_cache or str(
            Path(args.answers).with_name(f"{Path(args.answers).stem}.vs.{Path(args.baseline).stem}.judgments.jsonl")
        )
        result = llm_judge_win_rate(
            args.answers,
            args.baseline,
            client,
            template=template or DEFAULT_PAIRWISE_TEMPLATE,
            system_prompt=system or DEFAULT_JUDGE_SYSTEM_PROMPT,
            cache_file=cache,
            max_workers=args.judge_workers,
            **stats,
        )
    else:
        reward = args.reward_model or _import_callable(args.reward_fn)
        result = reward_win_rate(args.answers, args.baseline, reward, tie_tolerance=args.tie_tolerance, **stats)
    print(result.summary())
    print(json.dumps(result.to_dict(), indent=2))
    _write_json(result.to_dict(with_per_prompt=True), args.output)


def _text_metrics(args) -> None:
    from ..evaluation.text_metrics import answers_text_metrics
    from ..sampling.answers import load_answers

    prompts = _load_prompt_set(args)
    answered = {row["index"] for row in load_answers(args.answers)}
    missing = [i for i in range(len(prompts)) if i not in answered]
    if missing:  # scoring a partial answers file would report a number for a different test set
        raise ValueError(
            f"{args.answers!r} answers {len(prompts) - len(missing)} of the {len(prompts)} prompts (first missing: "
            f"{missing[:5]}): finish `eval generate` first, or pass --limit to score a prefix of the prompt set."
        )
    result = answers_text_metrics(
        args.answers,
        prompts,
        metrics=args.metrics,
        bleu_tokenize=args.bleu_tokenize,
        chrf_word_order=args.chrf_word_order,
    )
    print(json.dumps(result, indent=2))
    _write_json(result, args.output)


def _export(args) -> None:
    from ..evaluation.export import to_alpaca_eval, to_mt_bench

    name = args.model_name or Path(args.answers).stem
    if args.format == "alpaca_eval":
        to_alpaca_eval(args.answers, name, args.output, dataset=args.dataset)
        print(args.output)
        return
    question_ids = None
    if args.prompts:
        prompts = _load_prompt_set(args)
        if all(args.question_id_column in row for row in prompts):
            question_ids = [row[args.question_id_column] for row in prompts]
    print(to_mt_bench(args.answers, name, args.output, question_ids=question_ids))


def _plot(args) -> None:
    from ..evaluation.plots import plot_training_curves

    print(json.dumps(plot_training_curves(args.trainer_state, args.output_dir), indent=2))


_COMMANDS = {
    "generate": _generate,
    "win-rate": _win_rate,
    "text-metrics": _text_metrics,
    "export": _export,
    "plot": _plot,
}


def run_eval(args: argparse.Namespace) -> int:
    """Run the `eval` subcommand parsed into `args`. Returns 0, or 1 after printing `error: ...` for bad inputs."""
    from ..sampling.http import EndpointError
    from ..sampling.llm_judge import JudgeError

    try:
        _COMMANDS[args.eval_command](args)
    except (FileNotFoundError, ValueError, JudgeError, EndpointError, KeyboardInterrupt) as error:
        kind = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        print(f"{kind}: {error}", file=sys.stderr)
        return 1
    return 0
