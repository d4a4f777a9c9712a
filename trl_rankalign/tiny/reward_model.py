"""A tiny sequence-classification reward model of the tiny language (the tiny recipe's reward stage, RSO's tests)."""

import torch

from .datasets import tiny_reward_dataset
from .model import tiny_model_path


def train_tiny_reward_model(output_dir: str, model: str | None = None, max_steps: int = 100, **config_kwargs) -> str:
    """Train a tiny sequence-classification reward model with TRL's `RewardTrainer` on [`tiny_reward_dataset`].

    Starts from the tiny default (`tiny_model_path()`) unless `model` is given, saves model and tokenizer to
    `output_dir` and returns it, ready for `RSOConfig.reward_model_path`. `config_kwargs` override the `RewardConfig`
    (on a CPU, fp32 and no gradient checkpointing are the defaults here).
    """
    from trl import RewardConfig, RewardTrainer

    kwargs = dict(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    if not torch.cuda.is_available():
        kwargs.update(bf16=False, gradient_checkpointing=False, use_cpu=True)
    kwargs.update(config_kwargs)
    args = RewardConfig(**kwargs)
    trainer = RewardTrainer(model=model or tiny_model_path(), args=args, train_dataset=tiny_reward_dataset("train"))
    trainer.train()
    trainer.save_model(output_dir)
    return output_dir
