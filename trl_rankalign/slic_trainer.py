import textwrap

from . import losses
from .ranked_preference_trainer import RankedPreferenceTrainer
from .slic_config import SLiCConfig


class SLiCTrainer(RankedPreferenceTrainer):
    """
    SLiC-HF (Zhao et al. 2023) on ranked lists: a hinge on the summed log-prob gap of every ordered pair, plus a
    regularising NLL of the top-ranked completion. Reference-free: no reference model is loaded or run.

    Loss: `mean_prompts mean_{r_i > r_j} max(0, margin − log π(y_i) + log π(y_j)) + sft_weight * NLL_top`.

    How it differs from its neighbours: TRL's DPO `loss_type="hinge"` (RSO's hinge-norm) applies the same hinge to
    β·Δ where Δ is the difference of *log-ratios to a reference model*; here the raw policy log-probs are
    calibrated, with no reference, and the regulariser is an explicit NLL instead of the implicit KL to the
    reference. CPO's `"hinge"` (`trl.experimental.cpo`) is also reference-free but scales the log-prob gap by β and
    adds its NLL on the chosen completion of each pair; here the margin is absolute, every ordered pair of the
    list counts, and the NLL is on each list's best completion. The logged `rewards/*`/`ranking/*` metrics use the
    summed log-probs; `slic_loss` and `sft_loss` log the two terms.
    """

    config_class = SLiCConfig
    _tag_names = ["trl", "trl-rankalign", "slic-hf"]
    _name = "SLiC-HF"
    _paper = {
        "title": "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
        "id": "2305.10425",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhao2023slic,
                title        = {{SLiC-HF: Sequence Likelihood Calibration with Human Feedback}},
                author       = {Yao Zhao and Rishabh Joshi and Tianqi Liu and Misha Khalman and Mohammad Saleh and Peter J. Liu},
                year         = 2023,
                journal      = {arXiv preprint arXiv:2305.10425},
            }"""),
    }

    def ranked_loss(self, forward, inputs):
        calibration, rewards = losses.slic_hf_loss(
            forward.logps, inputs["scores"], inputs["list_mask"], self.args.margin
        )
        calibration = calibration.mean()
        sft = self.sft_loss(forward)
        self.log_loss_terms({"slic_loss": calibration, "sft_loss": sft})
        return calibration + self.args.sft_weight * sft, rewards
