import textwrap

from . import losses
from .rank_dpo_config import RankDPOConfig
from .ranked_preference_trainer import RankedPreferenceTrainer


class RankDPOTrainer(RankedPreferenceTrainer):
    """
    Listwise DPO: the DPO reward reparameterisation u_k = β·(log π_θ(y_k|x) − log π_ref(y_k|x)) in a Plackett–Luce
    model of K ranked completions (DPO paper, App. A.3), or LiPO-λ over the same rewards.

    A drop-in [`~trl.DPOTrainer`]: same arguments, PEFT/QLoRA (the reference is the adapter-disabled base),
    `precompute_ref_log_probs`, evaluation, checkpoints, W&B. Only the listwise hooks of
    [`RankedPreferenceTrainer`] and `ranked_loss` differ; with K=2 and no ties the loss is TRL's sigmoid DPO.

    Example:
    ```python
    >>> from datasets import Dataset
    >>> from trl_rankalign import RankDPOConfig, RankDPOTrainer

    >>> dataset = Dataset.from_list(
    ...     [{"prompt": "Review of the soup:", "completions": [" Lovely.", " Fine.", " Cold."], "scores": [2, 1, 0]}]
    ... )
    >>> trainer = RankDPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=RankDPOConfig("out"), train_dataset=dataset)
    >>> trainer.train()
    ```
    """

    config_class = RankDPOConfig
    _tag_names = ["trl", "trl-rankalign", "dpo", "rank-dpo"]
    _name = "RankDPO"
    _paper = {
        "title": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        "id": "2305.18290",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{rafailov2023direct,
                title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
                author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
                year         = 2023,
                booktitle    = {Advances in Neural Information Processing Systems 36},
                note         = {Plackett-Luce extension: Appendix A.3},
            }
            @article{liu2024lipo,
                title        = {{LiPO: Listwise Preference Optimization through Learning-to-Rank}},
                author       = {Tianqi Liu and Zhen Qin and Junru Wu and Jiaming Shen and Misha Khalman and Rishabh Joshi and Yao Zhao and Mohammad Saleh and Simon Baumgartner and Jialu Liu and Peter J. Liu and Xuanhui Wang},
                year         = 2024,
                journal      = {arXiv preprint arXiv:2402.01878},
            }"""),
    }

    def ranked_loss(self, forward, inputs):
        logps = forward.logps  # (B, K)
        ref_logps = self.reference_logps(inputs).to(logps.device)  # (B, K)
        mask, scores = inputs["list_mask"], inputs["scores"]
        if self.args.rank_loss == "lipo":
            per_prompt, rewards = losses.lipo_lambda_loss(logps, ref_logps, scores, mask, self.beta)
        else:
            per_prompt, rewards = losses.plackett_luce_loss(
                logps, ref_logps, scores, mask, self.beta, ties=self.args.ties
            )
        return per_prompt.mean(), rewards
