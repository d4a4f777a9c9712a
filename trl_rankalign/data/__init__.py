"""Ranked-preference data: schema and validation, converters from public datasets, the K-completion collator."""

from .collator import DataCollatorForRankedPreference
from .converters import (
    CONVERTERS,
    convert,
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
    validate_ranked_dataset,
    validate_ranked_example,
)


__all__ = [
    "CONVERTERS",
    "DataCollatorForRankedPreference",
    "convert",
    "from_hh_rlhf",
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
    "validate_ranked_dataset",
    "validate_ranked_example",
]
