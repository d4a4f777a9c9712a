import textwrap

from . import losses
from .ranked_preference_trainer import RankedPreferenceTrainer
from .rrhf_config import RRHFConfig


class RRHFTrainer(RankedPreferenceTrainer):
    """
    RRHF (Yuan et al. 2023): rank responses by length-normalised log-probs with a hinge on every mis-ordered pair,
    plus the NLL of the best response. Reference-free: no reference model is loaded or run.

    Loss: `rrhf_weight * mean_prompts Σ_{r_i < r_j} max(0, p_i − p_j) + NLL_top`, with
    p_i = Σ_t log π(y_{i,t}) / |y_i|^length_penalty and NLL_top the token-mean NLL over the batch's top-ranked
    completions (as TRL's `sft` loss type). Quirks of the authors' `train.py` SFT term not copied: it indexes the
    best response of batch element 0 only (`logit_label_batch[:1, max_idx]`, harmless at their batch size 1), and
    it averages over the padded length including prompt positions, which shrinks it with padding. The logged
    `rewards/*`/`ranking/*` metrics use p_i; `rrhf_loss` and `sft_loss` log the two terms.
    """

    config_class = RRHFConfig
    _tag_names = ["trl", "trl-rankalign", "rrhf"]
    _name = "RRHF"
    _paper = {
        "title": "RRHF: Rank Responses to Align Language Models with Human Feedback without tears",
        "id": "2304.05302",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{yuan2023rrhf,
                title        = {{RRHF: Rank Responses to Align Language Models with Human Feedback}},
                author       = {Zheng Yuan and Hongyi Yuan and Chuanqi Tan and Wei Wang and Songfang Huang and Fei Huang},
                year         = 2023,
                booktitle    = {Advances in Neural Information Processing Systems 36},
            }"""),
    }

    def ranked_loss(self, forward, inputs):
        batch_size, num_completions = inputs["list_mask"].shape
        lengths = forward.completion_mask.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
        ranking, rewards = losses.rrhf_loss(
            forward.logps, lengths, inputs["scores"], inputs["list_mask"], length_penalty=self.args.length_penalty
        )
        ranking = ranking.mean()
        sft = self.sft_loss(forward)
        self.log_loss_terms({"rrhf_loss": ranking, "sft_loss": sft})
        return self.args.rrhf_weight * ranking + sft, rewards
