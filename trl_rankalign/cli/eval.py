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
trl-rankalign eval generate --model CKPT --prompts mt_bench/question.jsonl --multi_turn --output_dir answers/
trl-rankalign eval generate --model BASE --prompts prompts.jsonl --few_shot 2 --few_shot_examples shots.jsonl ...
trl-rankalign eval mt-bench --answers answers/policy.jsonl [--baseline answers/sft.jsonl] --judge_base_url URL ...
trl-rankalign eval agreement --comparisons human.jsonl --judges bleu rouge chrf --reward_fn mod:fn --output a.json
trl-rankalign eval harness --model CKPT --tasks hellaswag arc_challenge --output_dir evals/
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
    _opt(generate, "max_new_tokens", type=int, default=256, help="most tokens per answer")
    _opt(generate, "batch_size", type=int, default=8, help="prompts per generate call (and per saved batch)")
    _opt(generate, "do_sample", action="store_true", help="sample instead of greedy decoding")
    _opt(generate, "temperature", type=float, default=1.0, help="with --do_sample")
    _opt(generate, "top_k", type=int, default=0, help="with --do_sample (0: off)")
    _opt(generate, "top_p", type=float, default=1.0, help="with --do_sample")
    _opt(generate, "num_samples", type=int, default=1, help="answers per prompt (win rates use the first)")
    _opt(generate, "seed", type=int, default=0, help="sampling seed (answers are reproducible)")
    _opt(
        generate,
        "multi_turn",
        action="store_true",
        help="--prompts is a multi-turn question set (MT-Bench's "
        "question.jsonl: question_id, category, turns); later turns see the model's own answers",
    )
    _opt(
        generate,
        "no_category_temperatures",
        action="store_true",
        help="multi-turn: not MT-Bench's per-category temperatures",
    )
    _opt(generate, "few_shot", type=int, default=None, help="k-shot prompts for a base model (no chat template)")
    _opt(generate, "few_shot_examples", help="JSONL/JSON of worked examples with the template's fields")
    _opt(generate, "few_shot_template", default="dialogue", help="dialogue (HH format) or summarization (TL;DR)")
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
    _opt(win_rate, "confidence", type=float, default=0.95, help="level of the bootstrap interval")
    _opt(win_rate, "seed", type=int, default=0, help="seed of the bootstrap resampling")
    _opt(win_rate, "output", help="write the result (with per-prompt outcomes) to this JSON file")

    metrics = commands.add_parser("text-metrics", help="BLEU, ROUGE and chrF against the prompt set's references")
    _opt(metrics, "answers", required=True, help="answers JSONL (eval generate) with references")
    _add_prompt_options(metrics, required=True)
    _opt(
        metrics,
        "metrics",
        nargs="+",
        default=["bleu", "rouge", "chrf"],
        choices=["bleu", "rouge", "chrf"],
        help="which text metrics to compute",
    )
    _opt(metrics, "bleu_tokenize", default=None, help="sacrebleu tokenizer (13a, zh, ja-mecab, flores200, ...)")
    _opt(metrics, "chrf_word_order", type=int, default=0, help="2 for chrF++")
    _opt(metrics, "output", help="write the metrics to this JSON file")

    export = commands.add_parser("export", help="answers in AlpacaEval or MT-Bench (FastChat) input format")
    _opt(export, "answers", required=True, help="answers JSONL (eval generate, single or multi-turn)")
    _opt(
        export,
        "format",
        required=True,
        choices=["alpaca_eval", "mt_bench", "arena_hard"],
        help="the reading tool's answer format",
    )
    _opt(export, "output", required=True, help="alpaca_eval: the JSON file; mt_bench: the bench folder")
    _opt(export, "model_name", help="generator / model_id (default: the answers file name)")
    _opt(export, "dataset", help="alpaca_eval 'dataset' field (default: the prompt set's own `dataset` column)")
    _add_prompt_options(export, required=False)
    _opt(export, "question_id_column", default="question_id", help="mt_bench: question ids from --prompts")

    plot = commands.add_parser("plot", help="PNG curves from a run's trainer_state.json (or an iterate run's rounds)")
    source = plot.add_mutually_exclusive_group(required=True)
    _opt(source, "trainer_state", help="trainer_state.json or the run's output folder")
    _opt(source, "rounds", help="an iterate run's folder (or its rounds.jsonl): per-round curves")
    _opt(plot, "output_dir", required=True, help="where the PNG figures are written")

    mt_bench = commands.add_parser("mt-bench", help="MT-Bench grading per turn by an LLM judge (single or pairwise)")
    _opt(mt_bench, "answers", required=True, help="multi-turn answers (eval generate --multi_turn)")
    _opt(mt_bench, "baseline", help="the baseline's multi-turn answers: pairwise grading (both orders) instead")
    _opt(mt_bench, "judge_base_url", required=True, help="OpenAI-compatible endpoint")
    add_judge_client_arguments(mt_bench)
    _opt(
        mt_bench,
        "judge_prompts",
        help="FastChat's data/judge_prompts.jsonl: grade with FastChat's prompts (default: the built-in prompts)",
    )
    _opt(
        mt_bench,
        "reference_answers",
        help="FastChat's data/mt_bench/reference_answer/gpt-4.jsonl (math, reasoning, coding; with --judge_prompts)",
    )
    _opt(mt_bench, "model_name", help="`model` / `model_1` of the judgments (default: the answers file name)")
    _opt(mt_bench, "baseline_name", help="`model_2` of the judgments (default: the baseline file name)")
    _opt(
        mt_bench,
        "output_dir",
        help="FastChat bench folder: judgments go to <output_dir>/model_judgment/<judge>_single.jsonl or _pair.jsonl "
        "(default: <answers folder>/mt_bench)",
    )
    _opt(mt_bench, "judge_cache", help="the judgments file itself, instead of the one under --output_dir")
    _opt(mt_bench, "output", help="write the result to this JSON file")

    agreement = commands.add_parser("agreement", help="how well each automatic judge agrees with human preferences")
    _opt(agreement, "comparisons", required=True, help="human comparisons: .jsonl/.json or a save_to_disk folder")
    _opt(
        agreement,
        "format",
        default="auto",
        help="auto, pairwise, ranked, mt_bench_human, summarize_from_feedback, hh_rlhf",
    )
    _opt(agreement, "judges", nargs="*", default=[], choices=["bleu", "rouge", "chrf"], help="reference-based judges")
    _opt(agreement, "reward_model", help="also judge with this reward model")
    _opt(agreement, "reward_fn", help="also judge with this callable 'module:function'")
    _opt(agreement, "judge_base_url", help="also judge with this LLM (pairwise, both orders)")
    add_judge_client_arguments(agreement)
    _opt(agreement, "judge_prompts", help="FastChat's data/judge_prompts.jsonl for the LLM judge (pair-v2 prompts)")
    _opt(
        agreement,
        "raters",
        default="auto",
        choices=["auto", "expert", "author", "gpt4-pair", "all"],
        help="MT-Bench human judgments: whose votes (auto: experts if any, else authors)",
    )
    _opt(agreement, "num_resamples", type=int, default=1000, help="bootstrap resamples")
    _opt(agreement, "output", required=True, help="the JSON result (a PNG bar chart is written beside it)")

    harness = commands.add_parser("harness", help="lm-evaluation-harness tasks on a checkpoint (extra `harness`)")
    _opt(harness, "model", required=True, help="a saved checkpoint folder")
    _opt(harness, "tasks", nargs="+", required=True, help="harness tasks or groups; open_llm_leaderboard_v1")
    _opt(harness, "output_dir", required=True, help="writes <output_dir>/harness/<name>.json")
    _opt(harness, "num_fewshot", type=int, default=None, help="few-shot examples per task (default: the task's)")
    _opt(harness, "batch_size", default="8", help="lm-eval batch size (a number or 'auto')")
    _opt(harness, "limit", type=float, default=None, help="examples per task (a smoke run)")
    _opt(harness, "include_path", help="folder of task YAMLs of your own")
    _opt(harness, "device", default=None, help="torch device (default: lm-eval's choice)")
    _opt(harness, "dtype", default="auto", help="model dtype for lm-eval (auto: the checkpoint's)")

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
    from .stage_data import resolve_model_path

    names = args.name or [model_name_from_path(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.name)} --name for {len(args.model)} --model: give one name per model.")
    if len(set(names)) != len(names):
        raise ValueError(f"Two checkpoints would write the same answers file ({names}): pass --name for each.")
    args.name = names  # named as typed (`smollm2.jsonl`), loaded from the folder the name stands for
    args.model = [resolve_model_path(model) for model in args.model]
    if args.multi_turn:
        return _generate_multi_turn(args)
    if args.generation_backend == "server" and len(args.model) > 1:
        raise ValueError("The server backend serves one model (--generation_model): give one --model per run.")
    prompts = _load_prompt_set(args)
    template = None
    if args.few_shot is not None:  # k-shot plain-text prompts for a base model
        from ..sampling.few_shot import build_few_shot_prompts, few_shot_template
        from ..sampling.prompts import load_rows

        if args.few_shot > 0 and not args.few_shot_examples:
            raise ValueError("--few_shot needs --few_shot_examples (a file of worked examples).")
        examples = load_rows(args.few_shot_examples) if args.few_shot_examples else []
        template = few_shot_template(args.few_shot_template)
        texts = build_few_shot_prompts([row["prompt"] for row in prompts], examples, args.few_shot, template)
        prompts = [{**row, "prompt": text} for row, text in zip(prompts, texts)]
    files = generate_answers_for_models(
        dict(zip(names, args.model)),
        prompts,
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
    if template is not None:  # a base model goes on to write the next example: cut there
        from ..sampling.few_shot import cut_at_stop
        from ..sampling.jsonl import read_jsonl, write_jsonl

        for path in files.values():
            rows = read_jsonl(path)
            for row in rows:
                row["completions"] = [cut_at_stop(c, template.stop) for c in row["completions"]]
            write_jsonl(path, rows)
    print(json.dumps(files, indent=2))


def _generate_multi_turn(args) -> None:
    """MT-Bench's protocol: every turn, later turns in the model's own conversation; `<name>.jsonl` holds one row per
    question `{question_id, category, turns, answers}`, `<name>.turns.jsonl` the resumable per-turn cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..sampling.answers import model_name_from_path, safe_answers_name
    from ..sampling.arguments import backend_options
    from ..sampling.jsonl import write_jsonl
    from ..sampling.multi_turn import MT_BENCH_TEMPERATURES, generate_multi_turn_answers, load_questions

    questions = load_questions(args.prompts, limit=args.limit)
    names = args.name or [model_name_from_path(m) for m in args.model]
    for name, checkpoint in zip(names, args.model):
        output = Path(args.output_dir) / f"{safe_answers_name(name)}.jsonl"
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = None if args.generation_backend == "server" else AutoModelForCausalLM.from_pretrained(checkpoint)
        rows = generate_multi_turn_answers(
            model,
            tokenizer,
            questions,
            output.with_suffix(".turns.jsonl"),
            temperature_by_category=None if args.no_category_temperatures else MT_BENCH_TEMPERATURES,
            model_identity=None if model is not None else str(checkpoint),
            temperature=args.temperature if args.do_sample else 0.0,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            **backend_options(args),
        )
        write_jsonl(output, rows)
        print(output)


def add_judge_client_arguments(parser) -> None:
    """The options of an OpenAI-compatible judge (`--judge_base_url` itself belongs to the caller's scorer group)."""
    _opt(parser, "judge_model", help="the judge's model name (with --judge_base_url)")
    _opt(parser, "judge_api_key_env", default="OPENAI_API_KEY", help="env var holding the API key")
    _opt(parser, "judge_timeout", type=float, default=60.0, help="seconds per request")
    _opt(parser, "judge_max_retries", type=int, default=3, help="retries of a failed judge request")
    _opt(parser, "judge_backoff", type=float, default=1.0, help="first retry wait in seconds, doubled each time")
    _opt(parser, "judge_rps", type=float, default=None, help="rate limit, requests per second")
    _opt(parser, "judge_workers", type=int, default=4, help="prompts judged concurrently")
    _opt(
        parser,
        "judge_max_tokens",
        type=int,
        default=None,
        help="the judge's max_tokens per reply (default: 1024; `eval mt-bench`: 2048, FastChat's); a small judge on a "
        "CPU needs far fewer to answer within --judge_timeout",
    )


def judge_client_from_args(args, **kwargs):
    """A `JudgeClient` from the options of `add_judge_client_arguments` and `--judge_base_url` (`kwargs`: more
    `JudgeClient` arguments, e.g. `max_tokens`)."""
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
        **({"max_tokens": args.judge_max_tokens} if getattr(args, "judge_max_tokens", None) is not None else {}),
        **kwargs,
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
    from ..evaluation.export import to_alpaca_eval, to_arena_hard, to_mt_bench
    from ..sampling.jsonl import read_jsonl

    name = args.model_name or Path(args.answers).stem
    if args.format in ("mt_bench", "arena_hard"):  # the name is a file name under the bench folder
        from ..sampling.answers import safe_answers_name

        try:
            safe_answers_name(name)
        except ValueError:
            raise ValueError(
                f"--model_name {name!r} names the answer file under the bench folder: give a plain name (no folders)."
            ) from None
    rows = read_jsonl(args.answers)
    if rows and "answers" in rows[0]:  # multi-turn answers (eval generate --multi_turn)
        if args.format != "mt_bench":
            raise ValueError("Multi-turn answers export to --format mt_bench only.")
        print(to_mt_bench(rows, name, args.output))
        return
    if args.format == "arena_hard":
        uids = None
        if args.prompts:
            prompts = _load_prompt_set(args)
            missing = [index for index, row in enumerate(prompts) if row.get("uid") in (None, "")]
            if missing:
                raise ValueError(
                    f"--prompts rows {missing[:5]} have no `uid`: pass the bench's own question.jsonl, whose uids "
                    "gen_judgment.py looks answers up by."
                )
            uids = [str(row["uid"]) for row in prompts]
        from ..evaluation.export import token_encoder_name

        print(to_arena_hard(args.answers, name, args.output, uids=uids))
        print(f"metadata.token_len counted with {token_encoder_name()}", file=sys.stderr)
        return
    if args.format == "alpaca_eval":
        dataset = args.dataset
        if dataset is None and args.prompts:  # the prompt set's own column, per row (AlpacaEval's `dataset`)
            from ..sampling.answers import load_answers

            prompts = _load_prompt_set(args)
            if any(row.get("dataset") is not None for row in prompts):
                dataset = [prompts[row["index"]].get("dataset") for row in load_answers(args.answers)]
        to_alpaca_eval(args.answers, name, args.output, dataset=dataset)
        print(args.output)
        return
    question_ids = None
    if args.prompts:
        prompts = _load_prompt_set(args)
        if all(args.question_id_column in row for row in prompts):
            question_ids = [row[args.question_id_column] for row in prompts]
    print(to_mt_bench(args.answers, name, args.output, question_ids=question_ids))


def _plot(args) -> None:
    from ..evaluation.plots import plot_rounds, plot_training_curves

    if args.rounds:
        print(json.dumps(plot_rounds(args.rounds, args.output_dir), indent=2))
        return
    print(json.dumps(plot_training_curves(args.trainer_state, args.output_dir), indent=2))


def _mt_bench(args) -> None:
    from ..evaluation.fastchat import JUDGE_MAX_TOKENS, judgment_file
    from ..evaluation.mt_bench import judge_pairwise, judge_single
    from ..sampling.jsonl import read_jsonl

    rows = read_jsonl(args.answers)
    if not rows or "answers" not in rows[0]:
        raise ValueError(f"{args.answers!r} holds no multi-turn answers: run `eval generate --multi_turn` first.")
    for option in ("judge_prompts", "reference_answers", "baseline"):
        if getattr(args, option) and not Path(getattr(args, option)).is_file():
            raise FileNotFoundError(f"--{option} {getattr(args, option)!r} is not a file.")
    if args.reference_answers and not args.judge_prompts:
        raise ValueError("--reference_answers go with FastChat's prompts: pass --judge_prompts too.")
    client = judge_client_from_args(
        args, **({} if args.judge_max_tokens is not None else {"max_tokens": JUDGE_MAX_TOKENS})
    )
    answers = Path(args.answers)
    bench = Path(args.output_dir) if args.output_dir else answers.parent / "mt_bench"
    options = dict(
        model_name=args.model_name or answers.stem,
        judge_prompts=args.judge_prompts,
        reference_answers=args.reference_answers,
    )
    if args.baseline:
        cache = args.judge_cache or judgment_file(bench, client.model, "pair")
        baseline_name = args.baseline_name or Path(args.baseline).stem
        result = judge_pairwise(rows, read_jsonl(args.baseline), client, cache, baseline_name=baseline_name, **options)
    else:
        result = judge_single(
            rows, client, args.judge_cache or judgment_file(bench, client.model, "single"), **options
        )
    print(json.dumps(result.to_dict(), indent=2))
    _write_json(result.to_dict(), args.output)


def _agreement(args) -> None:
    from ..evaluation.agreement import agreement, load_comparisons, plot_agreement, score_items, write_agreement

    items = load_comparisons(args.comparisons, format=args.format, raters=args.raters)
    judges = [(name, {}) for name in args.judges]
    if args.reward_model or args.reward_fn:
        judges.append(("reward", {"reward": args.reward_model or _import_callable(args.reward_fn)}))
    if args.judge_base_url:
        judges.append(("llm", {"client": judge_client_from_args(args), "judge_prompts": args.judge_prompts}))
    if not judges:
        raise ValueError(
            "Name at least one judge: --judges bleu rouge chrf, --reward_model, --reward_fn or --judge_base_url."
        )
    results = [
        agreement(items, score_items(items, name, **kwargs), name, num_resamples=args.num_resamples)
        for name, kwargs in judges
    ]
    write_agreement(results, args.output)
    plot_agreement(results, Path(args.output).with_suffix(".png"))
    print(json.dumps({r.judge: r.to_dict() for r in results}, indent=2))


def _harness(args) -> None:
    from ..evaluation.harness import run_harness

    batch_size = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = run_harness(
        args.model,
        args.tasks,
        args.output_dir,
        num_fewshot=args.num_fewshot,
        batch_size=batch_size,
        limit=limit,
        include_path=args.include_path,
        device=args.device,
        dtype=args.dtype,
    )
    print(json.dumps(results, indent=2))


_COMMANDS = {
    "generate": _generate,
    "win-rate": _win_rate,
    "text-metrics": _text_metrics,
    "export": _export,
    "plot": _plot,
    "mt-bench": _mt_bench,
    "agreement": _agreement,
    "harness": _harness,
}


def _check_common(args) -> None:
    """Refusals shared by every subcommand: a negative `--limit`, an `--output_dir` that is a file."""
    limit = getattr(args, "limit", None)
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive (or left out for all), got {limit}.")
    output_dir = getattr(args, "output_dir", None)
    if output_dir and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"--output_dir {str(output_dir)!r} is a file, not a folder.")


def run_eval(args: argparse.Namespace) -> int:
    """Run the `eval` subcommand parsed into `args`. Returns 0, or 1 after printing `error: ...` for bad inputs."""
    from ..sampling.http import EndpointError
    from ..sampling.llm_judge import JudgeError

    try:
        _check_common(args)
        _COMMANDS[args.eval_command](args)
    except (FileNotFoundError, ValueError, JudgeError, EndpointError, KeyboardInterrupt) as error:
        kind = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        print(f"{kind}: {error}", file=sys.stderr)
        return 1
    return 0
