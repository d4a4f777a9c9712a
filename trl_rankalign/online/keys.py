"""What a round's result depends on, as a JSON-safe dict without secrets: [`round_key`].

A round is keyed on the *weights* of the starting policy and of the reward (fingerprints, not paths: a checkpoint
retrained in place is another policy), the tokenizer, the prompts, every config field that changes a result, and
the previous round's key (so a changed round redoes every later one). Fields that change only how a run is reported
or transported are left out, and so is anything that looks like a secret: [`public_fields`] never returns a token or
an API key, so nothing written to disk holds one.
"""

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from ..sampling.fingerprint import short_hash


__all__ = ["NOT_SETTINGS", "is_secret", "public_fields", "round_key", "secrets_cleared"]

# Fields that change how a run is reported, saved or transported, not what a round produces (not sampling_batch_size:
# batch b of round r is seeded sampling_seed + 1000 r + b, so the batch size changes the samples)
NOT_SETTINGS = frozenset(
    {
        "output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "logging_strategy",
        "logging_first_step", "num_rounds", "generation_concurrency", "generation_max_retries",
        "generation_timeout", "generation_rps", "generation_api_key_env", "generation_base_url", "save_strategy",
        "save_steps", "save_total_limit", "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
        "dataloader_num_workers", "samples_dir",
    }
)  # fmt: skip

_SECRET = re.compile(r"(^|_)(hub_token|access_token|auth_token|api_?key|secret|password|passwd|credentials?)($|_)")


def is_secret(name: str) -> bool:
    """Whether a field's name says it holds a secret (`hub_token`, `api_key`, `wandb_api_key`, `client_secret`, ...).
    The name of the environment variable holding a key (`*_env`) is not one; `pad_token`/`eos_token` are not either."""
    return bool(_SECRET.search(name.lower())) and not name.endswith("_env")


def public_fields(args: Any, ignored: frozenset[str] | set[str] = NOT_SETTINGS) -> dict:
    """The dataclass fields of `args` that change a result, secrets removed, as JSON-safe values."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in ignored}
    return json.loads(json.dumps(_scrub(values), sort_keys=True, default=str))


def secrets_cleared(args: Any) -> dict:
    """The overrides that keep secrets out of what a round's trainer saves (`training_args.bin`): `None` for every
    secret field that is set, mapping fields (`model_init_kwargs`) without their secret keys, and `push_to_hub=False`
    (the rounds never push to a hub)."""
    cleared = {}
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if is_secret(f.name) and value is not None:
            cleared[f.name] = None
        elif isinstance(value, dict) and _scrub(value) != value:
            cleared[f.name] = _scrub(value)
    if getattr(args, "push_to_hub", False):
        cleared["push_to_hub"] = False
    return cleared


def _scrub(value: Any) -> Any:
    """`value` without secrets: mapping keys that name one (and a bare `token`, as in `model_init_kwargs`) dropped."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not (is_secret(str(k)) or str(k).lower() == "token")}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def round_key(
    previous: dict | None,
    round_index: int,
    args: Any,
    *,
    policy: str,
    reward: str | None,
    tokenizer: str,
    prompts: Sequence[Any],
    ignored: frozenset[str] | set[str] = NOT_SETTINGS,
) -> dict:
    """The key of round `round_index`: its settings chained with the previous round's key (`None` for round 0).

    Args:
        policy: fingerprint of the starting policy's weights.
        reward: identity of the reward (a reward model's weights fingerprint, or a callable's code).
        tokenizer: fingerprint of the policy's tokenizer.
    """
    key = {
        "previous": previous or {},
        "round": round_index,
        "config": public_fields(args, ignored),
        "policy": policy,
        "reward": reward,
        "tokenizer": tokenizer,
        "prompts": short_hash(json.dumps(list(prompts), sort_keys=True, default=str)),
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))
