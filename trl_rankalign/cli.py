"""`trl-rankalign` console script (also `python -m trl_rankalign`)."""

import argparse
import json
import sys
import time
from pathlib import Path


def _cpu_friendly(config_kwargs: dict) -> dict:
    """fp32 and no gradient checkpointing on CPU: TRL's bf16 + checkpointing defaults make a CPU step ~16x slower."""
    import torch

    if not torch.cuda.is_available():
        config_kwargs.update(bf16=False, gradient_checkpointing=False, use_cpu=True)
    return config_kwargs


def run_demo(output_dir: str, sft_steps: int, rank_steps: int, seed: int) -> dict:
    """The main job on the embedded tiny default: SFT, then listwise DPO on the shipped ranked lists."""
    from trl import SFTConfig, SFTTrainer

    from .rank_dpo_config import RankDPOConfig
    from .rank_dpo_trainer import RankDPOTrainer
    from .tiny import tiny_model_path, tiny_ranked_dataset, tiny_sft_dataset

    output = Path(output_dir)
    base_model = tiny_model_path(seed=seed)
    print(f"[demo] tiny base model: {base_model}")

    started = time.time()
    sft_args = SFTConfig(
        **_cpu_friendly(
            dict(
                output_dir=str(output / "sft"),
                max_steps=sft_steps,
                per_device_train_batch_size=16,
                learning_rate=3e-3,
                lr_scheduler_type="cosine",
                warmup_steps=5,
                logging_steps=10,
                save_strategy="no",
                report_to="none",
                seed=seed,
                completion_only_loss=True,
                disable_tqdm=True,
            )
        )
    )
    sft = SFTTrainer(model=base_model, args=sft_args, train_dataset=tiny_sft_dataset())
    sft_result = sft.train()
    sft.save_model(sft_args.output_dir)
    print(f"[demo] SFT: {sft_steps} steps, final train loss {sft_result.training_loss:.3f} -> {sft_args.output_dir}")

    data = tiny_ranked_dataset().train_test_split(test_size=0.1, seed=seed)
    rank_args = RankDPOConfig(
        **_cpu_friendly(
            dict(
                output_dir=str(output / "rankdpo"),
                max_steps=rank_steps,
                per_device_train_batch_size=8,
                per_device_eval_batch_size=16,
                learning_rate=5e-4,
                beta=0.1,
                logging_steps=5,
                eval_strategy="steps",
                eval_steps=rank_steps,
                save_strategy="no",
                report_to="none",
                seed=seed,
                disable_tqdm=True,
            )
        )
    )
    trainer = RankDPOTrainer(
        model=sft_args.output_dir, args=rank_args, train_dataset=data["train"], eval_dataset=data["test"]
    )
    trainer.train()
    trainer.save_model(rank_args.output_dir)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    summary = {
        "first_loss": logged[0]["loss"],
        "last_loss": logged[-1]["loss"],
        **{k: v for k, v in evaluated[-1].items() if k.startswith("eval_")},
        "seconds": round(time.time() - started, 1),
        "output_dir": rank_args.output_dir,
    }
    print("[demo] RankDPO metrics:")
    for key, value in summary.items():
        print(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl-rankalign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="SFT then RankDPO on the embedded tiny default (CPU, minutes)")
    demo.add_argument("--output_dir", default="outputs/demo")
    demo.add_argument("--sft_steps", type=int, default=150)
    demo.add_argument("--rank_steps", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args.output_dir, args.sft_steps, args.rank_steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
