"""Ranked-preference data: schema and validation, converters from public datasets and adapters to pairwise/SFT/prompt
rows, translation data, the K-completion collator and the shared-prompt packing collator."""

from .adapters import prompts_of, ranked_to_pairwise, to_sft
from .collator import DataCollatorForRankedPreference, row_ref_logps
from .converters import (
    CONVERTERS,
    convert,
    from_alma_r,
    from_hh_rlhf,
    from_pairwise,
    from_ranked,
    from_summarize_from_feedback,
    from_ultrafeedback,
    from_ultrafeedback_binarized,
    group_pairwise,
    to_ranked,
    top_ranked_completions,
)
from .schema import (
    is_pairwise,
    is_ranked,
    rank_order,
    require_non_empty,
    validate_ranked_dataset,
    validate_ranked_example,
    validate_tokenized_example,
)


__all__ = [
    "CONVERTERS",
    "DataCollatorForRankedPreference",
    "convert",
    "from_alma_r",
    "from_hh_rlhf",
    "prompts_of",
    "ranked_to_pairwise",
    "to_sft",
    "from_pairwise",
    "from_ranked",
    "from_summarize_from_feedback",
    "from_ultrafeedback",
    "from_ultrafeedback_binarized",
    "group_pairwise",
    "to_ranked",
    "top_ranked_completions",
    "is_pairwise",
    "is_ranked",
    "rank_order",
    "require_non_empty",
    "row_ref_logps",
    "validate_ranked_dataset",
    "validate_ranked_example",
    "validate_tokenized_example",
]
