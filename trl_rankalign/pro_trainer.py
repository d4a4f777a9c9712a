import textwrap

from . import losses
from .pro_config import PROConfig
from .ranked_preference_trainer import RankedPreferenceTrainer


class PROTrainer(RankedPreferenceTrainer):
    """
    Preference Ranking Optimization (Song et al. 2023): a listwise softmax over length-normalised policy log-probs
    with reward-difference temperatures, plus an SFT term on the top-ranked completion. No reference model is loaded
    or run.

    A drop-in [`~trl.DPOTrainer`] on ranked lists (PEFT, evaluation, checkpoints, W&B as in TRL). Only
    `ranked_loss` differs from [`RankedPreferenceTrainer`]: s_i is the mean token log-prob of completion i, the
    ranking term is `losses.pro_loss` and the SFT term is the token-mean NLL of the batch's top completions. The
    logged `rewards/*` and `ranking/*` metrics use s_i in place of DPO's implicit reward; `pro_loss` and `sft_loss`
    log the two terms.
    """

    config_class = PROConfig
    _tag_names = ["trl", "trl-rankalign", "pro"]
    _name = "PRO"
    _paper = {
        "title": "Preference Ranking Optimization for Human Alignment",
        "id": "2306.17492",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{song2024preference,
                title        = {{Preference Ranking Optimization for Human Alignment}},
                author       = {Feifan Song and Bowen Yu and Minghao Li and Haiyang Yu and Fei Huang and Yongbin Li and Houfeng Wang},
                year         = 2024,
                booktitle    = {Proceedings of the AAAI Conference on Artificial Intelligence},
                volume       = 38,
                number       = 17,
                pages        = {18990--18998},
            }"""),
    }

    def ranked_loss(self, forward, inputs):
        batch_size, num_completions = inputs["list_mask"].shape
        lengths = forward.completion_mask.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
        mean_logps = forward.logps / lengths.clamp(min=1)  # (B, K), 0 at padded slots
        ranking, rewards = losses.pro_loss(
            mean_logps,
            inputs["scores"],
            inputs["list_mask"],
            temperature_mode=self.args.temperature_mode,
            temperature=self.args.temperature,
        )
        ranking = ranking.mean()
        sft = self.sft_loss(forward)
        weight = self.args.sft_weight
        if self.args.scale_sft_weight_by_k:  # the dataset's K, so that every batch and process weighs the same
            weight *= ((self.max_num_completions or num_completions) - 1) ** 2
        self.log_loss_terms({"pro_loss": ranking, "sft_loss": sft})
        return ranking + weight * sft, rewards
