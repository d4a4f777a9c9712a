"""`trl-rankalign rank`: score K candidates per prompt into a ranked dataset ([`trl_rankalign.sampling.rank`]).

```
trl-rankalign rank --input ranked_candidates.jsonl --output_dir ranked/ --reward_model RM_PATH
trl-rankalign rank --input prompts.jsonl --policy sft/ --policy dpo/ --num_samples 4 --output_dir ranked/ \\
    --reward_fn trl_rankalign.tiny.language:reward_fn
trl-rankalign rank --input prompts.jsonl --policy sft/ --num_samples 4 --output_dir ranked/ \\
    --judge_base_url http://localhost:8000/v1 --judge_model M --judge_mode pairwise --judge_rps 5
trl-rankalign rank --input prompts.jsonl --policy sft/ --num_samples 64 --output_dir ranked/ --reward_model RM \\
    --generation_backend server --generation_base_url http://localhost:8001/v1 --generation_model sft/
```
`--input` has a `prompt` column and, without `--policy`, a `completions` column (K given candidates per prompt).
`--num_samples` is K per prompt in total, split between the policies (5 over 2 policies: 3 + 2). Errors in the inputs
and an unreachable judge print one `error:` line and return 1; the finished prompts stay in
`<output_dir>/verdicts.jsonl` and a rerun continues from them. Prompts the judge refuses (HTTP 400, 413, 422) do not
stop the run: the others are judged and written, then an `error:` line names the refused ones and the exit code is 1.
"""

import argparse
import json
import sys
from pathlib import Path

from .eval import _import_callable, _opt, add_generation_arguments, add_judge_client_arguments, judge_client_from_args


__all__ = ["add_rank_parser", "run_rank"]


def add_rank_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rank` on the main CLI's `subparsers` (from `parser.add_subparsers()`)."""
    rank = subparsers.add_parser("rank", help="score K candidates per prompt (reward model, callable or LLM judge)")
    _opt(rank, "input", required=True, help="prompts (+ completions): .jsonl, .json or a save_to_disk folder")
    _opt(rank, "output_dir", required=True, help="verdicts.jsonl, ranked/, ranked.jsonl, summary.json")
    _opt(rank, "prompt_column", default="prompt", help="column holding the prompt in --input")
    _opt(rank, "completions_column", default="completions", help="column of given candidates (without --policy)")
    _opt(rank, "limit", type=int, default=None, help="use only the first N prompts")

    _opt(rank, "policy", action="append", default=None, help="checkpoint to sample candidates from; repeatable")
    _opt(rank, "num_samples", type=int, default=4, help="K candidates per prompt in total, split between policies")
    _opt(rank, "max_new_tokens", type=int, default=256, help="most tokens per sampled candidate")
    _opt(rank, "temperature", type=float, default=1.0, help="sampling temperature of the candidates")
    _opt(rank, "top_k", type=int, default=0, help="0: off")
    _opt(rank, "top_p", type=float, default=1.0, help="nucleus sampling of the candidates (1: off)")
    _opt(rank, "seed", type=int, default=0, help="policy p samples with seed + p")
    _opt(rank, "batch_size", type=int, default=8, help="prompts per generate / reward-model call")
    add_generation_arguments(rank)

    scorer = rank.add_mutually_exclusive_group(required=True)
    _opt(scorer, "reward_model", help="sequence-classification reward model (folder or hub id)")
    _opt(scorer, "reward_fn", help="a Python callable 'module:function' (prompts, completions) -> rewards")
    _opt(scorer, "judge_base_url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    add_judge_client_arguments(rank)
    _opt(rank, "judge_mode", choices=["rating", "pairwise"], default="rating",
         help="rating: per-aspect 1-5 ratings, score = mean; pairwise: both orders, Bradley-Terry scores")  # fmt: skip
    _opt(rank, "aspects", nargs="+", default=None, help="rating aspects (default: UltraFeedback's four)")
    _opt(rank, "rubric", help="JSON file {aspect: rubric} (its keys are the aspects unless --aspects is given)")
    _opt(rank, "judge_template", help="file with the user template (see trl_rankalign.sampling.rank for its fields)")
    _opt(rank, "judge_system_prompt", help="file with the judge's system prompt")
    _opt(rank, "bt_prior", type=float, default=0.1, help="pairwise: virtual ties per pair in the Bradley-Terry fit")
    rank.set_defaults(func=run_rank)
    return rank


def _read(path: str | None) -> str | None:
    return Path(path).read_text(encoding="utf-8") if path else None


def _aspects(args):
    from ..sampling.rank import DEFAULT_ASPECTS

    if not args.rubric:
        return args.aspects or DEFAULT_ASPECTS
    rubric = json.loads(Path(args.rubric).read_text(encoding="utf-8"))
    if not isinstance(rubric, dict):
        raise ValueError(f"--rubric {args.rubric!r} must hold a JSON object {{aspect: rubric}}.")
    return {a: rubric.get(a, DEFAULT_ASPECTS.get(a, "")) for a in args.aspects} if args.aspects else rubric


def _rank(args) -> None:
    from ..sampling.arguments import backend_options
    from ..sampling.rank import rank_candidates
    from .stage_data import resolve_model_path

    judge, reward = None, None
    if args.judge_base_url:
        judge = judge_client_from_args(args)
    else:
        reward = args.reward_model or _import_callable(args.reward_fn)
    generation = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        **backend_options(args),
    )
    if args.generation_backend == "server" and args.policy and len(args.policy) > 1:
        raise ValueError("The server backend serves one model (--generation_model): give one --policy per run.")
    dataset = rank_candidates(
        args.input,
        output_dir=args.output_dir,
        policies=[resolve_model_path(policy) for policy in args.policy] if args.policy else args.policy,
        num_samples=args.num_samples,
        reward=reward,
        judge=judge,
        judge_mode=args.judge_mode,
        aspects=_aspects(args),
        template=_read(args.judge_template),
        system_prompt=_read(args.judge_system_prompt),
        bt_prior=args.bt_prior,
        batch_size=args.batch_size,
        max_workers=args.judge_workers,
        prompt_column=args.prompt_column,
        completions_column=args.completions_column,
        limit=args.limit,
        generation_kwargs=generation,
    )
    summary_file = Path(args.output_dir) / "summary.json"
    print(summary_file.read_text(encoding="utf-8").rstrip())
    print(f"{len(dataset)} ranked rows -> {Path(args.output_dir) / 'ranked'} (save_to_disk) and ranked.jsonl")
    refused = json.loads(summary_file.read_text(encoding="utf-8")).get("refused_prompts")
    if refused:  # written without them, but not a clean run: say so and exit 1
        raise _Refused(
            f"the judge refused prompts {refused[:20]}{' ...' if len(refused) > 20 else ''} ({len(refused)} in all; "
            f"their candidates are unscored in {Path(args.output_dir) / 'ranked'}): rerun to ask again for those only, "
            "or remove them from --input."
        )


class _Refused(Exception):
    """A run that finished but with prompts the judge refused (exit 1 after the summary)."""


def run_rank(args: argparse.Namespace) -> int:
    """Run `rank` parsed into `args`. Returns 0, or 1 after printing `error: ...` for bad inputs or a failing judge."""
    from ..sampling.http import EndpointError
    from ..sampling.llm_judge import JudgeError

    try:
        _rank(args)
    except (FileNotFoundError, ValueError, JudgeError, EndpointError, _Refused, KeyboardInterrupt) as error:
        kind = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        print(f"{kind}: {error}", file=sys.stderr)
        return 1
    return 0
