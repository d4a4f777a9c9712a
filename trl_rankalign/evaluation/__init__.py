"""Evaluation: answers from checkpoints, win rates (reward model or LLM judge), BLEU/ROUGE/chrF, exports, plots.

Each module has one job; import what you need from here:

- `answers`: [`load_prompts`], [`generate_answers`] / [`generate_answers_for_models`] (resumable JSONL),
  [`load_answers`];
- `win_rate`: [`reward_win_rate`], [`llm_judge_win_rate`], [`bootstrap_win_rate`], [`WinRateResult`];
- `judge_client`: [`JudgeClient`] (OpenAI-compatible `chat(messages) -> str`) and the verdict parsers;
- `text_metrics`: [`compute_text_metrics`], [`answers_text_metrics`];
- `export`: [`to_alpaca_eval`], [`to_mt_bench`], [`to_arena_hard`];
- `mt_bench` and `fastchat`: MT-Bench grading with FastChat's prompts, rules and judgment files;
- `agreement`: agreement of automatic judges with human preferences (with FastChat's `compute_agreement` numbers);
- `plots`: [`plot_training_curves`] (matplotlib is imported only when this is used);
- `cli`: `trl-rankalign eval ...`.
"""

from ..sampling.answers import (
    answer_text,
    generate_answers,
    generate_answers_for_models,
    load_answers,
    load_prompts,
    model_name_from_path,
    prompt_text,
)
from ..sampling.llm_judge import (
    JudgeClient,
    JudgeError,
    JudgeRequestError,
    RateLimiter,
    VerdictParseError,
    parse_aspect_ratings,
    parse_pairwise_verdict,
    parse_rating,
)
from .export import to_alpaca_eval, to_arena_hard, to_mt_bench
from .text_metrics import answers_text_metrics, compute_text_metrics
from .win_rate import (
    DEFAULT_JUDGE_SYSTEM_PROMPT,
    DEFAULT_PAIRWISE_TEMPLATE,
    WinRateResult,
    bootstrap_win_rate,
    combine_orders,
    llm_judge_win_rate,
    reward_win_rate,
)


def plot_training_curves(trainer_state, output_dir, dpi: int = 100):
    """See [`trl_rankalign.evaluation.plots.plot_training_curves`] (imported lazily: matplotlib is optional)."""
    from .plots import plot_training_curves as _plot

    return _plot(trainer_state, output_dir, dpi=dpi)


__all__ = [
    "DEFAULT_JUDGE_SYSTEM_PROMPT",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeClient",
    "JudgeError",
    "JudgeRequestError",
    "RateLimiter",
    "VerdictParseError",
    "WinRateResult",
    "answer_text",
    "answers_text_metrics",
    "bootstrap_win_rate",
    "combine_orders",
    "compute_text_metrics",
    "generate_answers",
    "generate_answers_for_models",
    "llm_judge_win_rate",
    "load_answers",
    "load_prompts",
    "model_name_from_path",
    "parse_aspect_ratings",
    "parse_pairwise_verdict",
    "parse_rating",
    "plot_training_curves",
    "prompt_text",
    "reward_win_rate",
    "to_alpaca_eval",
    "to_arena_hard",
    "to_mt_bench",
]
