"""Training stages of the `trl-rankalign` CLI: one small function per stage, taking the parsed dataclasses.

Every stage parses its recipe with TRL's `TrlParser` into four dataclasses, as TRL's own `trl dpo` script does:
[`RankAlignScriptArguments`] (TRL's `ScriptArguments` plus the dataset converter), the stage's trainer config
(`SFTConfig`, `RewardConfig`, `DPOConfig`, `RankDPOConfig`, `PROConfig`, ...), TRL's `ModelConfig` (model, dtype,
PEFT/QLoRA flags) and TRL's `DatasetMixtureConfig`. A stage function mirrors `trl/scripts/dpo.py`: load the data, build
the trainer with `get_quantization_config` / `get_peft_config`, train, save, evaluate. It then writes a completion
marker ([`trl_rankalign.cli.stage_runner.MARKER_FILE`]) next to the saved model, which the pipeline runner uses to skip finished stages.

Two names are special because a recipe cannot call Python:

- `model_name_or_path: tiny` is the embedded tiny default ([`trl_rankalign.tiny.tiny_model_path`]);
- `dataset_name: tiny_ranked` / `tiny_sft` (or `path:` of a `datasets:` mixture entry) are the shipped tiny
  datasets, with splits `train` (270 rows) and `test` (30 rows).

A `dataset_name` that is a local `save_to_disk` folder (or the output folder of `trl-rankalign rank`, whose `ranked/`
it reads) is loaded with `load_from_disk`; a saved single `Dataset` becomes the split `dataset_train_split`.

The registry [`STAGES`] maps a stage name to its dataclasses and run function, as import strings resolved lazily, so
adding a stage is one entry and importing this module stays cheap.
"""

import json
import time
from pathlib import Path

from ..data.adapters import prompts_of, ranked_to_pairwise, to_sft
from .stage_args import Stage, import_callable, unset
from .stage_data import load_stage_dataset, resolve_model_path
from .stage_runner import MARKER_FILE, build_and_train, model_init_kwargs, print_summary


# Stage name -> dataclasses and run function. To add one, add an entry (and a tiny recipe under recipes/tiny/).
STAGES: dict[str, Stage] = {
    "sft": Stage("Supervised fine-tuning (TRL's SFTTrainer)", "trl_rankalign.cli.stages:run_sft", "trl:SFTConfig"),
    "reward": Stage("Reward model (TRL's RewardTrainer)", "trl_rankalign.cli.stages:run_reward", "trl:RewardConfig"),
    "dpo": Stage("Pairwise DPO baseline (TRL's DPOTrainer)", "trl_rankalign.cli.stages:run_dpo", "trl:DPOConfig"),
    "rankdpo": Stage(
        "Listwise DPO: Plackett-Luce or LiPO (RankDPOTrainer)",
        "trl_rankalign.cli.stages:run_rankdpo",
        "trl_rankalign.rank_dpo_config:RankDPOConfig",
    ),
    "pro": Stage(
        "Preference Ranking Optimization (PROTrainer)",
        "trl_rankalign.cli.stages:run_pro",
        "trl_rankalign.pro_config:PROConfig",
    ),
    "rso": Stage(
        "RSO: rejection sampling from the SFT policy, then DPO on the sampled pairs (RSOSampler)",
        "trl_rankalign.cli.stages:run_rso",
        "trl_rankalign.rso_config:RSOConfig",
    ),
    "sample": Stage(
        "RSO's sampling step alone: sample, score, accept, pair, save to samples_dir (no training)",
        "trl_rankalign.cli.stages:run_sample",
        "trl_rankalign.rso_config:RSOConfig",
    ),
    "rrhf": Stage(
        "RRHF: hinge on mis-ordered length-normalised log-probs + NLL of the best (RRHFTrainer)",
        "trl_rankalign.cli.stages:run_rrhf",
        "trl_rankalign.rrhf_config:RRHFConfig",
    ),
    "slic": Stage(
        "SLiC-HF: hinge on the log-prob gap of every ordered pair + NLL of the best (SLiCTrainer)",
        "trl_rankalign.cli.stages:run_slic",
        "trl_rankalign.slic_config:SLiCConfig",
    ),
    "cpo": Stage(
        "CPO on best-vs-worst pairs, ALMA-R's baseline (TRL's experimental CPOTrainer)",
        "trl_rankalign.cli.stages:run_cpo",
        "trl.experimental.cpo:CPOConfig",
    ),
    "raft": Stage(
        "RAFT: rounds of sample K -> keep the best -> SFT (train_raft)",
        "trl_rankalign.cli.stages:run_raft",
        "trl_rankalign.raft:RAFTConfig",
    ),
    "rloo": Stage(
        "Online RL (RLHF) with REINFORCE leave-one-out (TRL's RLOOTrainer)",
        "trl_rankalign.cli.stages:run_rloo",
        "trl:RLOOConfig",
        script_args="trl_rankalign.cli.stage_args:RewardScriptArguments",
    ),
    "iterate": Stage(
        "Online listwise: rounds of sample K from the current policy -> score -> RankDPO/LiPO/PRO/DPO (train_iterative)",
        "trl_rankalign.cli.stages:run_iterate",
        "trl_rankalign.iterative:IterativeConfig",
    ),
    # `rank` (score candidates into a ranked dataset) is a plain command of the CLI, not a stage.
}


# ---------------------------------------------------------------------------------------------------------- stages
def run_sft(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import SFTTrainer

    return build_and_train("sft", SFTTrainer, script_args, training_args, model_args, dataset_args, adapt=to_sft)


def run_reward(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import RewardTrainer

    return build_and_train(
        "reward", RewardTrainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def run_dpo(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import DPOTrainer

    return build_and_train(
        "dpo", DPOTrainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def run_rankdpo(script_args, training_args, model_args, dataset_args) -> dict:
    from ..rank_dpo_trainer import RankDPOTrainer

    return build_and_train("rankdpo", RankDPOTrainer, script_args, training_args, model_args, dataset_args)


def run_pro(script_args, training_args, model_args, dataset_args) -> dict:
    from ..pro_trainer import PROTrainer

    return build_and_train("pro", PROTrainer, script_args, training_args, model_args, dataset_args)


def run_rso(script_args, training_args, model_args, dataset_args) -> dict:
    """RSO: prompts from the recipe's data (ranked or pairwise rows give their prompts), pairs from the sampler."""
    from ..rso_sampler import RSOSampler

    return build_and_train("rso", RSOSampler, script_args, training_args, model_args, dataset_args, adapt=_rso_data)


def _rso_data(dataset):
    """Ranked rows become pairwise (the eval split of RSO is pairwise preference data; the sampler reads prompts)."""
    return ranked_to_pairwise(dataset)


def run_sample(script_args, training_args, model_args, dataset_args) -> dict:
    """RSO's sampling step alone: the sampled set is saved under `samples_dir`, and a later `rso` run reuses it."""
    from trl import get_quantization_config

    from ..rso_sampler import RSOSampler, rso_sampling_stats

    started = time.time()
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    model_init_kwargs(training_args, model_args)
    dataset = load_stage_dataset(script_args, dataset_args)
    samples = RSOSampler.sample(
        model_args.model_name_or_path,
        training_args,
        _rso_data(dataset[script_args.dataset_train_split]),
        quantization_config=get_quantization_config(model_args),
    )
    summary = {
        "stage": "sample",
        "model_name_or_path": model_args.model_name_or_path,
        "generation_backend": training_args.generation_backend,
        "output_dir": str(Path(training_args.output_dir).resolve()),
        "samples_dir": str(Path(training_args.samples_dir).resolve()),
        "prompts": len(samples["samples"]),
        "pairs": len(samples["pairs"]),
        **rso_sampling_stats(samples, training_args.rso_beta, training_args.pairing),
        "seconds": round(time.time() - started, 1),
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary)
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(training_args.output_dir, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_rrhf(script_args, training_args, model_args, dataset_args) -> dict:
    from ..rrhf_trainer import RRHFTrainer

    return build_and_train("rrhf", RRHFTrainer, script_args, training_args, model_args, dataset_args)


def run_slic(script_args, training_args, model_args, dataset_args) -> dict:
    from ..slic_trainer import SLiCTrainer

    return build_and_train("slic", SLiCTrainer, script_args, training_args, model_args, dataset_args)


def _quantized_model_init(training_args, quantization_config) -> None:
    """For trainers without a `quantization_config` argument: quantized loading through `model_init_kwargs`, placed on
    this process's device as TRL's scripts do."""
    if quantization_config is None:
        return
    from trl import get_kbit_device_map

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "quantization_config": quantization_config,
        "device_map": get_kbit_device_map(),
    }


def _cpo_trainer(model, args, train_dataset, eval_dataset, quantization_config, peft_config):
    """TRL's experimental `CPOTrainer`, which takes no `quantization_config` and loads with `device_map="auto"` unless
    told otherwise: `None` here (the Trainer places the model; "auto" would split it over all GPUs of every rank)."""
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOTrainer

    args.model_init_kwargs = {"device_map": None, **(args.model_init_kwargs or {})}
    _quantized_model_init(args, quantization_config)
    # CPOTrainer builds its collator before it sets a missing pad token (LLaMA-2, ALMA): set it first, as TRL does.
    tokenizer = AutoTokenizer.from_pretrained(
        model, revision=args.model_init_kwargs.get("revision"), trust_remote_code=args.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return CPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def run_cpo(script_args, training_args, model_args, dataset_args) -> dict:
    """CPO (Xu et al. 2024) on the best-vs-worst pair of each ranked list, as ALMA-R trains on its triplets."""
    return build_and_train(
        "cpo", _cpo_trainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def _rloo_reward_funcs(script_args) -> list:
    funcs = []
    if script_args.reward_model_path:
        funcs.append(resolve_model_path(script_args.reward_model_path))
    if script_args.reward_function:
        funcs.append(import_callable(script_args.reward_function, "reward_function"))
    if not funcs:
        raise ValueError("The rloo stage needs a reward: set `reward_model_path` and/or `reward_function`.")
    return funcs


def run_rloo(script_args, training_args, model_args, dataset_args) -> dict:
    """Online RL with TRL's `RLOOTrainer` on the distinct prompts of the recipe's data (ranked, pairwise, SFT or
    prompt rows), rewarded by the reward model and/or the Python reward function of the recipe."""
    import functools

    from trl import RLOOTrainer

    trainer_class = functools.partial(RLOOTrainer, reward_funcs=_rloo_reward_funcs(script_args))
    return build_and_train(
        "rloo",
        trainer_class,
        script_args,
        training_args,
        model_args,
        dataset_args,
        adapt=prompts_of,
        logged_keys=("reward",),
    )


def run_raft(script_args, training_args, model_args, dataset_args) -> dict:
    """RAFT ([`trl_rankalign.raft.train_raft`]) on the distinct prompts of the recipe's data, rewarded by
    `reward_model_path` or `reward_function`; the final policy is saved to `output_dir` with the completion marker."""
    from datasets import load_from_disk

    from ..raft import train_raft
    from ..sampling.generation import read_jsonl

    started = time.time()
    prompts = _train_online(
        stage="raft",
        train=train_raft,
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        dataset_args=dataset_args,
    )
    output = Path(training_args.output_dir)
    sampled, selected = [], []
    for index in range(training_args.num_rounds):
        rows = {row["index"]: row for row in read_jsonl(output / f"round_{index}" / "samples.jsonl")}  # last wins
        scores = [s for row in rows.values() for s in row["scores"]]
        sampled.append(sum(scores) / len(scores))
        best = load_from_disk(str(output / f"round_{index}" / "best"))
        selected.append(sum(best["score"]) / len(best))
    summary = {
        "stage": "raft",
        "model_name_or_path": model_args.model_name_or_path,
        "output_dir": str(output.resolve()),
        "prompts": len(prompts),
        "num_rounds": training_args.num_rounds,
        "num_samples": training_args.num_samples,
        "generation_backend": training_args.generation_backend,
        "sampled_reward_per_round": sampled,
        "selected_reward_per_round": selected,
        "seconds": round(time.time() - started, 1),
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary)
        Path(output, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_iterate(script_args, training_args, model_args, dataset_args) -> dict:
    """Online listwise training ([`trl_rankalign.iterative.train_iterative`]) on the distinct prompts of the recipe's
    data, rewarded by `reward_model_path` or `reward_function`; per-round metrics join the summary."""
    from accelerate import PartialState

    from ..iterative import train_iterative
    from ..online.records import read_rounds

    started = time.time()
    prompts = _train_online(
        stage="iterate",
        train=train_iterative,
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        dataset_args=dataset_args,
    )
    output = Path(training_args.output_dir)
    rounds = [r for r in read_rounds(output) if r["round"] < training_args.num_rounds]  # a cut line is skipped
    summary = {
        "stage": "iterate",
        "model_name_or_path": model_args.model_name_or_path,
        "output_dir": str(output.resolve()),
        "method": training_args.method,
        "select": training_args.select,
        "prompts": len(prompts),
        "num_rounds": training_args.num_rounds,
        "mean_reward_per_round": [r["mean_reward"] for r in rounds],
        "kl_to_sft_per_round": [r.get("kl_to_sft") for r in rounds],
        "lists_per_round": [r["lists"] for r in rounds],
        "seconds": round(time.time() - started, 1),
    }
    state = PartialState()
    if state.is_main_process:
        print_summary(summary)
        Path(output, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    state.wait_for_everyone()
    state.destroy_process_group()  # as `trainer.end()` does for the other stages (no-op with one process)
    return summary


def _train_online(stage, train, script_args, training_args, model_args, dataset_args) -> list:
    """What `raft` and `iterate` share: exactly one reward (`reward_model_path` or `reward_function`), the model, the
    distinct prompts of the recipe's data, then `train(model, prompts, args, reward=, peft_config=)`. Returns the
    prompts."""
    from trl import get_peft_config, get_quantization_config

    training_args.reward_model_path = unset(training_args.reward_model_path)
    training_args.reward_function = unset(training_args.reward_function)
    if bool(training_args.reward_model_path) == bool(training_args.reward_function):
        raise ValueError(f"The {stage} stage needs exactly one reward: `reward_model_path` or `reward_function`.")
    if training_args.reward_function:
        reward = import_callable(training_args.reward_function, "reward_function")
    else:
        reward = resolve_model_path(training_args.reward_model_path)
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    model_init_kwargs(training_args, model_args)
    _quantized_model_init(training_args, get_quantization_config(model_args))
    dataset = load_stage_dataset(script_args, dataset_args)
    prompts = prompts_of(dataset[script_args.dataset_train_split])["prompt"]
    train(
        model_args.model_name_or_path, prompts, training_args, reward=reward, peft_config=get_peft_config(model_args)
    )
    return prompts
