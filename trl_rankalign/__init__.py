"""trl-rankalign: listwise preference alignment as drop-in TRL trainers."""

__version__ = "0.1.0"

from .pro_config import PROConfig
from .pro_trainer import PROTrainer
from .raft import RAFTConfig, train_raft
from .rank_dpo_config import RankDPOConfig
from .rank_dpo_trainer import RankDPOTrainer
from .ranked_preference_trainer import RankedPreferenceTrainer
from .rrhf_config import RRHFConfig
from .rrhf_trainer import RRHFTrainer
from .rso_config import RSOConfig
from .rso_sampler import RSOSampler
from .slic_config import SLiCConfig
from .slic_trainer import SLiCTrainer


__all__ = [
    "PROConfig",
    "PROTrainer",
    "RAFTConfig",
    "RRHFConfig",
    "RRHFTrainer",
    "RSOConfig",
    "RSOSampler",
    "RankDPOConfig",
    "RankDPOTrainer",
    "RankedPreferenceTrainer",
    "SLiCConfig",
    "SLiCTrainer",
    "train_raft",
]
