"""The online loop of RAFT, `iterate` and RSO's sampling step: one sampling-settings mixin ([`SamplingArguments`],
`.decoding()`), one round runner ([`run_rounds`]: sample → score → select → train → record, resumable, keyed on weight
fingerprints and every setting), `rounds.jsonl` under a lock, the KL estimate on sampled ids, and a served policy that
follows the rounds ([`ServedPolicy`])."""

from .keys import public_fields, round_key
from .kl import SampledIds, sampled_kl
from .records import ROUNDS_FILE, read_rounds, record_round
from .rounds import OnlineRound, run_rounds
from .served import PolicyUpdateError, ServedPolicy
from .settings import RoundArguments, SamplingArguments


__all__ = [
    "ROUNDS_FILE",
    "OnlineRound",
    "PolicyUpdateError",
    "RoundArguments",
    "SampledIds",
    "SamplingArguments",
    "ServedPolicy",
    "public_fields",
    "read_rounds",
    "record_round",
    "round_key",
    "run_rounds",
    "sampled_kl",
]
