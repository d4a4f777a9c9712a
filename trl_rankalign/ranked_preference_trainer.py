"""The listwise machinery shared by every trainer of this package: a `DPOTrainer` that reads ranked lists.

`RankedPreferenceTrainer` changes only what K completions per prompt require and inherits everything else from
TRL's `DPOTrainer` (model and PEFT set-up, reference handling, the fused log-prob head, reference log-prob
precomputation and its cache, `log`, `evaluate`, checkpoints, model cards). The hooks it overrides:

- `_prepare_dataset`: validates each row, sorts its completions best first and tokenises the K completions (TRL's
  pairwise rows are converted to K=2 lists first, keeping every other column, e.g. `tools`);
- the collator: [`DataCollatorForRankedPreference`] (completion-major stacking, `list_mask`, `scores`), or its
  shared-prompt counterpart;
- `_set_signature_columns_if_needed`: keeps the ranked columns;
- `compute_ref_log_probs`: reference log-probs of all K completions with the package's own [`listwise_forward`],
  under the reference context of [`RankedPreferenceTrainer.reference_context`] (no grad, checkpointing off, the PEFT
  adapter disabled through TRL's public `use_adapter`, autocast); `_precompute_ref_logps` swaps in the K-completion
  collator for TRL's precomputation and cache;
- `_compute_loss`: one [`listwise_forward`], one call to the subclass's `ranked_loss`, then the metrics;
- `train`/`evaluate`/`predict`: with the shared-prompt forward on, the policy and reference run the shared-prompt
  attention for the call and get their own attention implementation back when it returns.

Subclasses pair with a [`RankedPreferenceConfig`] subclass (`config_class`) and implement `ranked_loss`.
"""

import json
import logging
from contextlib import contextmanager, nullcontext

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import ProcessorMixin
from trl import DPOTrainer
from trl.data_utils import common_prefix_length, is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import global_then_local_main_first, use_adapter

from . import metrics as ranking_metrics
from .data.adapters import column_names
from .data.collator import DataCollatorForRankedPreference
from .data.converters import from_pairwise
from .data.schema import (
    is_pairwise,
    is_ranked,
    rank_order,
    require_non_empty,
    validate_ranked_example,
    validate_tokenized_example,
)
from .data.shared_prompt_collator import DataCollatorForSharedPromptRankedPreference
from .forward import ListwiseForward, listwise_forward, shared_prompt_support
from .shared_prompt_attention import shared_prompt_attention_enabled


logger = logging.getLogger(__name__)

# `shared_prompt_forward=None` turns the shared-prompt forward on when packing removes at least this share of the
# tokens (and the model can run it exactly). Its attention is split by structure (no dense mask), so it never does more
# per-token work; what it may add is the branch-over-[prefix ; branch] attention computed without the causal kernel's
# skip, which long completions behind a short prompt pay for. Below about a tenth of the tokens saved, the measured
# forward + backward was inside the noise (figures: benchmarks/README.md, "Shared-prompt forward alone").
AUTO_SHARED_PROMPT_MIN_SAVING = 0.1

VISION_COLUMNS = ("image", "images")


class RankedPreferenceTrainer(DPOTrainer):
    """Base of the listwise trainers: a [`~trl.DPOTrainer`] over ranked lists (see the module docstring).

    Accepts the ranked schema (`prompt`, `completions`, `scores`; standard or conversational; K may vary by row),
    TRL's pairwise data (`prompt`/`chosen`/`rejected`, converted to K=2 with scores [1, 0]) and pre-tokenised rows
    (`prompt_ids`, `completion_ids`, `scores`). Vision datasets are refused (docs/limits.md).
    """

    config_class = None  # the subclass's config dataclass (a `RankedPreferenceConfig`), checked and used for a default
    _tag_names = ["trl", "trl-rankalign"]

    def __init__(
        self,
        model,
        ref_model=None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self.config_class(f"{str(name).rstrip('/').split('/')[-1]}-{self._name}")
        elif not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}")
        if args.reference_free:
            _check_reference_free(type(self).__name__, args, model, ref_model, peft_config)
        if train_dataset is not None:  # DPOTrainer reads its first row before anything else (a bare StopIteration)
            require_non_empty(train_dataset, "train")
        if args.reference_free:  # DPOTrainer would report its precompute-with-vision error, which would mislead
            for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
                _refuse_vision(dataset, name, type(self).__name__)
        self._user_data_collator = data_collator
        self.shared_prompt_forward = False  # resolved from the config when the train split is prepared
        self._shared_prompt_decided = False
        self._shared_prompt_auto = False
        self._shared_prompt_checked = False
        self._shared_prompt_saving = None  # share of tokens packing removes on the sampled training rows
        self.max_num_completions = None  # K of the training data's longest list (None for an IterableDataset)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        if self._is_vision_dataset:  # after DPOTrainer's own checks (a text model with image data gets its error)
            _refuse_vision(train_dataset, "train", type(self).__name__)
        if args.reference_free:
            # `precompute_ref_log_probs=True` only kept DPOTrainer from loading a reference copy (see
            # `RankedPreferenceConfig`); nothing was precomputed, and `evaluate` must not look for reference log-probs
            self.precompute_ref_logps = False
            if self.ref_model is not None:  # DPOTrainer's FSDP precompute path loaded one: do not keep it
                self.ref_model = None
        self._shared_prompt_model_check()
        if data_collator is None:  # DPOTrainer built its pairwise collator (and resolved the pad token): replace it
            self.data_collator = self._ranked_collator()

    # ------------------------------------------------------------------------------------------------ data
    def _ranked_collator(self, pad_to_num_completions: int | None = None) -> DataCollatorForRankedPreference:
        if self._user_data_collator is not None and pad_to_num_completions is None:
            return self._user_data_collator
        collator_class = DataCollatorForRankedPreference
        if self.shared_prompt_forward:
            collator_class = DataCollatorForSharedPromptRankedPreference
        return collator_class(
            pad_token_id=_text_tokenizer(self.processing_class).pad_token_id,
            max_length=self.args.max_length,
            truncation_mode=self.args.truncation_mode,
            pad_to_multiple_of=self.args.pad_to_multiple_of,
            pad_to_num_completions=pad_to_num_completions,
        )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validate, sort best-first and tokenise each ranked list; drop lists whose prompt alone fills `max_length`
        (as TRL does, with the count logged). Idempotent on an already tokenised dataset."""
        require_non_empty(dataset, dataset_name)
        columns = column_names(dataset)
        if "completion_ids" in columns:  # pre-tokenised (lists in any order): validated and sorted best first
            function, fn_kwargs = _sort_tokenized_example, {}
        else:
            if is_pairwise(columns) and not is_ranked(columns):
                dataset = from_pairwise(dataset)
            elif not is_ranked(columns):
                raise ValueError(
                    f"The {dataset_name} dataset has columns {columns}; expected a ranked dataset (prompt, "
                    "completions, scores), pairwise preference data (prompt, chosen, rejected) or pre-tokenised rows "
                    "(prompt_ids, completion_ids, scores)."
                )
            function = _tokenize_ranked_example
            fn_kwargs = {
                "processing_class": processing_class,
                "eos_token": _text_tokenizer(processing_class).eos_token,
            }
        # Not read by the functions: it enters the dataset fingerprint, which keys TRL's reference log-prob cache, and
        # the reference log-probs depend on how the collator truncates
        fn_kwargs["cache_key"] = (args.max_length, args.truncation_mode)

        map_kwargs = {}
        if isinstance(dataset, Dataset):  # IterableDataset.map/filter take neither num_proc nor desc
            map_kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {dataset_name} dataset"}
        with global_then_local_main_first():
            dataset = dataset.map(function, with_indices=True, fn_kwargs=fn_kwargs, **map_kwargs)
            if args.max_length is not None and args.truncation_mode == "keep_start":
                # As TRL: a prompt that fills `max_length` leaves no completion token to learn from
                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Dropping fully truncated lists from {dataset_name} dataset"
                size = len(dataset) if isinstance(dataset, Dataset) else None
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length, **map_kwargs)
                if size is not None and len(dataset) < size:
                    logger.warning(
                        "Dropped %d of %d %s lists whose prompt alone is >= max_length=%d tokens.",
                        size - len(dataset),
                        size,
                        dataset_name,
                        args.max_length,
                    )
                require_non_empty(dataset, f"{dataset_name} (after dropping prompts of >= max_length tokens)")
        self._note_train_dataset(dataset, args)
        return dataset

    def _note_train_dataset(self, dataset, args) -> None:
        """Once, from the first dataset prepared (DPOTrainer prepares train first): decide `shared_prompt_forward` and
        note the longest list."""
        if self._shared_prompt_decided:
            return
        self._shared_prompt_decided = True
        if isinstance(dataset, Dataset):  # the longest list of the training data (PRO's SFT weight uses it)
            self.max_num_completions = max((len(scores) for scores in dataset["scores"]), default=None)
        setting = args.shared_prompt_forward
        if args.truncation_mode == "keep_end" and args.max_length is not None:
            if setting:  # keep_end cuts a different part of the prompt for each completion: nothing to share
                raise ValueError("shared_prompt_forward needs truncation_mode='keep_start'.")
            setting = False
        self._shared_prompt_auto = setting is None
        if self._shared_prompt_auto and isinstance(dataset, Dataset):
            self._shared_prompt_saving = _token_saving(dataset)
        self.shared_prompt_forward = _decide_shared_prompt(dataset, setting)

    def _shared_prompt_model_check(self) -> None:
        """The model is only known once `Trainer.__init__` ran: auto mode falls back (logging why, once) for a model
        the packed forward cannot run exactly, found by [`shared_prompt_support`] (which probes the model with a tiny
        packed forward); an explicit `shared_prompt_forward=True` raises naming the model. Nothing is switched here:
        [`_shared_prompt_attention`] switches the models for each `train`/`evaluate`/`predict` call."""
        if not self.shared_prompt_forward or self._shared_prompt_checked:
            return
        self._shared_prompt_checked = True
        model = self.accelerator.unwrap_model(self.model)
        ref_model = getattr(self, "ref_model", None)
        models = [model] + ([self.accelerator.unwrap_model(ref_model)] if ref_model is not None else [])
        reasons = []
        if self.aux_loss_enabled:
            reasons.append("the MoE router auxiliary loss")
        if is_peft_model(model) and model.active_peft_config.is_prompt_learning:
            reasons.append("prompt-learning PEFT")
        if not reasons:
            reasons = list(dict.fromkeys(reason for each in models for reason in shared_prompt_support(each)))
        if not reasons:
            if self._shared_prompt_auto:
                saving = (
                    "" if self._shared_prompt_saving is None else f": {self._shared_prompt_saving:.0%} fewer tokens"
                )
                logger.info("shared_prompt_forward (auto) on for %s%s.", type(model).__name__, saving)
            return
        if not self._shared_prompt_auto:
            raise ValueError(
                f"shared_prompt_forward=True cannot run {type(model).__name__} exactly: {'; '.join(reasons)}. "
                "Set shared_prompt_forward=False (or None for auto)."
            )
        logger.warning("shared_prompt_forward (auto) stays off for %s: %s.", type(model).__name__, "; ".join(reasons))
        self.shared_prompt_forward = False

    @contextmanager
    def _shared_prompt_attention(self):
        """With the shared-prompt forward on: the policy and the reference run the shared-prompt attention inside the
        block (through every backward, for gradient checkpointing) and get their own implementation back after it.
        Blocks nest (`train` calls `evaluate`)."""
        if not self.shared_prompt_forward:
            yield
            return
        models = [self.accelerator.unwrap_model(self.model)]
        if getattr(self, "ref_model", None) is not None:
            models.append(self.accelerator.unwrap_model(self.ref_model))
        with shared_prompt_attention_enabled(*models):
            yield

    def train(self, *args, **kwargs):
        with self._shared_prompt_attention():
            return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._shared_prompt_attention():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._shared_prompt_attention():
            return super().predict(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "prompt_ids",
                "completion_ids",
                "scores",
                "ref_logps",
                "ref_chosen_logps",
                "ref_rejected_logps",
            ]

    # ------------------------------------------------------------------------------------------ reference
    @contextmanager
    def reference_context(self):
        """The context of every reference forward: no grad, the policy's gradient checkpointing off, the PEFT adapter
        disabled (or TRL's `"ref"` adapter active) when the reference is the policy's base (as TRL does, through its
        public `use_adapter`), and the accelerator's autocast."""
        adapter = nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter,
            self.accelerator.autocast(),
        ):
            yield

    def compute_ref_log_probs(self, model, inputs):
        """Reference log-probs of a ranked batch as TRL's `(chosen, rejected)` pair generalised to K: the top-ranked
        completion's `(B,)` and the others' `(B, K - 1)`, from the package's own [`listwise_forward`] of `model` under
        [`reference_context`]."""
        with self.reference_context():
            ref_logps = listwise_forward(model, inputs).logps  # (B, K)
        return ref_logps[:, 0], ref_logps[:, 1:]

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL's precomputation and cache, with the K-completion collator (padded to the dataset's longest list, so
        every batch has one width); stores TRL's columns `ref_chosen_logps` (top) and `ref_rejected_logps` (the
        others, in rank order). Reference-free trainers have nothing to compute."""
        if self.args.reference_free:
            return dataset
        if not isinstance(dataset, Dataset):  # TRL raises its own error for an IterableDataset
            return super()._precompute_ref_logps(dataset, name, batch_size)
        if "ref_logps" in dataset.column_names:  # the user's reference log-probs win (see RankedPreferenceConfig)
            logger.info("The %s dataset has a `ref_logps` column: its reference log-probs are used as given.", name)
            return dataset
        self._shared_prompt_model_check()  # precomputation runs inside DPOTrainer.__init__, before our own check
        pairwise_collator = self.data_collator
        self.data_collator = self._ranked_collator(pad_to_num_completions=max(len(s) for s in dataset["scores"]))
        try:
            with self._shared_prompt_attention():
                return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            self.data_collator = pairwise_collator

    def reference_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`(B, K)` reference log-probs: the batch's own (a user's `ref_logps` column, or TRL's precomputed columns),
        else a reference forward. One rule whatever `precompute_ref_log_probs` says: given log-probs always win."""
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        if self.precompute_ref_logps:
            raise ValueError("precompute_ref_log_probs=True but the batch carries no reference log-probs.")
        top, others = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else self.model, inputs)
        return torch.cat([top[:, None], others], dim=1)

    # ------------------------------------------------------------------------------------------------ loss
    def ranked_loss(
        self, forward: ListwiseForward, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the scalar loss and detached per-completion rewards `(B, K)` for logging. Subclasses implement it.

        Args:
            forward: the policy's [`ListwiseForward`] of the batch: `logps (B, K)`, completion-major
                `per_token_logps` and `completion_mask` `(K * B, T)`.
            inputs: the collated batch (`list_mask`, `scores`, optional `ref_logps`, ...).
        """
        raise NotImplementedError

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        forward = listwise_forward(model, inputs, output_router_logits=self.aux_loss_enabled)
        loss, rewards = self.ranked_loss(forward, inputs)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * forward.aux_loss
            self._trl_metrics(mode)["aux_loss"].append(
                self.accelerator.gather_for_metrics(forward.aux_loss).mean().item()
            )
        self._log_ranked_metrics(mode, inputs, forward, rewards)
        if return_outputs:  # deprecated in TRL (the fused head builds no logits): recomputed, as TRL does
            with torch.no_grad():
                outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            return loss, outputs
        return loss

    def sft_loss(self, forward: ListwiseForward) -> torch.Tensor:
        """Token-mean NLL over the batch's top-ranked completions (rows `0..B-1`), as TRL's `sft` loss type."""
        batch_size = forward.logps.size(0)
        top_mask = forward.completion_mask[:batch_size].bool()
        return -forward.per_token_logps[:batch_size][top_mask].mean()

    # ------------------------------------------------------------------------ TRL's private state: the one place
    # TRL 1.16's DPOTrainer has no public way to add a logged metric or to count trained tokens: its `log` averages the
    # lists in `self._metrics[mode]` and reports `self._total_train_tokens` (counted once per tensor-parallel group,
    # `self._tp_size`). These two methods are the only code of the package that touches that state;
    # tests/test_seams.py::test_the_private_state_of_dpotrainer_we_rely_on fails if TRL renames or reshapes it.
    def _trl_metrics(self, mode: str) -> dict[str, list]:
        """DPOTrainer's per-mode metric lists (`"train"`/`"eval"`), which its `log` averages and clears."""
        return self._metrics[mode]

    def _count_train_tokens(self, num_tokens: int) -> int:
        """Add `num_tokens` (gathered over processes) to DPOTrainer's `num_tokens` count; return the total."""
        self._total_train_tokens += num_tokens // self._tp_size
        return self._total_train_tokens

    # --------------------------------------------------------------------------------------------- metrics
    def log_loss_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Log scalar loss components (averaged across processes) under their names."""
        mode = "train" if self.model.training else "eval"
        values = self.accelerator.gather_for_metrics(torch.stack([t.detach().float() for t in terms.values()])[None])
        for name, value in zip(terms, values.mean(dim=0).tolist()):
            self._trl_metrics(mode)[name].append(value)

    def _gather_lists(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        # Processes may hold different K_max: pad dim 1 (zeros, and False for masks) before gathering
        padded = [self.accelerator.pad_across_processes(t.contiguous(), dim=1) for t in tensors]
        return [self.accelerator.gather_for_metrics(t) for t in padded]

    def _token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of `values` over the `mask`ed tokens of every process (TRL's weighting: by tokens, not by rows)."""
        total = self.accelerator.gather_for_metrics(values.float()[mask].sum()).sum()
        count = self.accelerator.gather_for_metrics(mask.sum()).sum()
        return (total / count).item() if count > 0 else 0.0

    @torch.no_grad()
    def _log_ranked_metrics(self, mode, inputs, forward: ListwiseForward, rewards: torch.Tensor) -> None:
        metrics = self._trl_metrics(mode)
        batch_size = forward.logps.size(0)
        local_mask = inputs["list_mask"]
        local_last = local_mask.sum(dim=1).clamp(min=1) - 1  # each list's bottom-ranked slot

        # Token-level metrics, as DPOTrainer logs them: entropy over all completions, logits/* over the top ("chosen")
        # and bottom ("rejected") completions, mean_token_accuracy over the top completions
        completion_mask = forward.completion_mask.bool()
        if forward.entropy is not None:
            metrics["entropy"].append(self._token_mean(forward.entropy, completion_mask))
        top_rows = torch.arange(batch_size, device=completion_mask.device)
        bottom_rows = local_last * batch_size + top_rows  # completion-major row of each list's bottom completion
        if forward.mean_logits is not None:
            metrics["logits/chosen"].append(self._token_mean(forward.mean_logits[top_rows], completion_mask[top_rows]))
            metrics["logits/rejected"].append(
                self._token_mean(forward.mean_logits[bottom_rows], completion_mask[bottom_rows])
            )
        if forward.is_top1 is not None:
            metrics["mean_token_accuracy"].append(
                self._token_mean(forward.is_top1[top_rows], completion_mask[top_rows])
            )
        num_tokens = self.accelerator.gather_for_metrics(forward.num_tokens).sum().item() if mode == "train" else 0
        metrics["num_tokens"] = [self._count_train_tokens(num_tokens)]

        # List-level metrics. One float32 dtype on every process (padding a bool mask can change its dtype on some
        # processes only; MPS has no float64): the ranking metrics move the gathered lists to float64 on the CPU
        rewards, logps, scores, mask = self._gather_lists(
            rewards.float(), forward.logps.detach().float(), inputs["scores"].float(), local_mask.float()
        )
        mask = mask.bool()
        rows = torch.arange(mask.size(0), device=mask.device)
        last = mask.sum(dim=1).clamp(min=1) - 1
        top, bottom = rewards[:, 0], rewards[rows, last]
        metrics["rewards/chosen"].append(top.mean().item())
        metrics["rewards/rejected"].append(bottom.mean().item())
        metrics["rewards/margins"].append((top - bottom).mean().item())
        strict = scores[:, 0] > scores[rows, last]  # lists whose top and bottom are not tied
        if strict.any():
            metrics["rewards/accuracies"].append((top > bottom)[strict].float().mean().item())
        metrics["logps/chosen"].append(logps[:, 0].mean().item())
        metrics["logps/rejected"].append(logps[rows, last].mean().item())
        for k in range(mask.size(1)):
            if mask[:, k].any():
                metrics[f"rewards/rank_{k + 1}"].append(rewards[mask[:, k], k].mean().item())
        adjacent = mask[:, 1:]
        if adjacent.any():
            metrics["rewards/adjacent_margin"].append((rewards[:, :-1] - rewards[:, 1:])[adjacent].mean().item())
        for key, fn in (
            ("ranking/pairwise_accuracy", ranking_metrics.pairwise_accuracy),
            ("ranking/kendall_tau", ranking_metrics.kendall_tau),
            ("ranking/ndcg", ranking_metrics.ndcg),
        ):
            values = fn(rewards, scores, mask)
            if not values.isnan().all():
                metrics[key].append(values.nanmean().item())


# ---------------------------------------------------------------------------------------------------- helpers
def _text_tokenizer(processing_class):
    """The tokenizer of a processing class (a processor's own tokenizer), through public attributes only."""
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def _check_reference_free(trainer_name: str, args, model, ref_model, peft_config) -> None:
    """What a reference-free trainer refuses before `DPOTrainer.__init__` runs: a `ref_model`, and
    `precompute_ref_log_probs=False` without PEFT (DPOTrainer would load a full reference copy). Under FSDP without
    PEFT, TRL 1.16's DPOTrainer loads a reference copy to precompute whatever the config says: warned."""
    if ref_model is not None:
        raise ValueError(f"{trainer_name} is reference-free: do not pass a `ref_model`.")
    peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
    if not args.precompute_ref_log_probs and not peft:
        raise ValueError(
            f"{trainer_name} is reference-free, but precompute_ref_log_probs=False without PEFT makes DPOTrainer load a "
            "full reference copy of the model. Leave precompute_ref_log_probs unset (None): no reference is loaded."
        )
    if args.precompute_ref_log_probs and not peft and args.fsdp:
        logger.warning(
            "%s is reference-free, but under FSDP TRL's DPOTrainer loads a reference copy of the model during "
            "initialisation (freed afterwards). Use PEFT with precompute_ref_log_probs=False to avoid it.",
            trainer_name,
        )


def _refuse_vision(dataset, name: str, trainer_name: str) -> None:
    """Vision data is refused up front (before TRL's own vision checks, whose messages would mislead)."""
    if dataset is None or isinstance(dataset, dict):
        datasets = [] if dataset is None else list(dataset.values())
    else:
        datasets = [dataset]
    for data in datasets:
        columns = data.column_names if data.column_names is not None else list(next(iter(data), {}).keys())
        found = [column for column in VISION_COLUMNS if column in columns]
        if found:
            raise ValueError(
                f"{trainer_name} does not train on vision datasets yet: the {name} dataset has {found} columns. "
                "Use TRL's DPOTrainer for vision-language preference data (docs/limits.md)."
            )


def _apply_template_ids(processing_class, messages, **template_kwargs) -> list[int]:
    return processing_class.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs)[
        "input_ids"
    ]


def _tokenize_ranked_example(example, index, processing_class, eos_token, cache_key):
    """Validate one ranked row, sort it best first and tokenise prompt and completions.

    Mirrors the tokenisation of TRL 1.16's `DPOTrainer._prepare_dataset` (`tokenize_fn`) for K completions, through
    public API (`apply_chat_template` / the tokenizer call): the chat template gets the row's `tools` and
    `chat_template_kwargs`, non-conversational completions get the EOS token, and a completion starts where the
    tokenised prompt and prompt + completion diverge. tests/test_trl_contract.py checks the ids against TRL's own.
    """
    validate_ranked_example(example, index)
    order = rank_order(example["scores"])
    completions = [example["completions"][k] for k in order]
    scores = [float(example["scores"][k]) for k in order]
    prompt = example["prompt"]

    if is_conversational(example):
        tools = example.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        template_kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
        prompt_ids = _apply_template_ids(processing_class, prompt, add_generation_prompt=True, **template_kwargs)
        full_ids = [_apply_template_ids(processing_class, prompt + c, **template_kwargs) for c in completions]
    else:
        completions = [c if c.endswith(eos_token) else c + eos_token for c in completions]
        prompt_ids = processing_class(text=prompt)["input_ids"]
        full_ids = [processing_class(text=prompt + c)["input_ids"] for c in completions]

    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    for k, ids in enumerate(full_ids):
        if len(ids) <= prompt_len:
            raise ValueError(f"row {index}, field 'completions[{order[k]}]': the completion tokenises to nothing")
    row = {
        "prompt_ids": prompt_ids[:prompt_len],
        "completion_ids": [ids[prompt_len:] for ids in full_ids],
        "completions": completions,
        "scores": scores,
    }
    if example.get("ref_logps") is not None:  # the user's reference log-probs follow their completions' order
        if len(example["ref_logps"]) != len(order):
            raise ValueError(
                f"row {index}, field 'ref_logps': {len(example['ref_logps'])} values for {len(order)} completions"
            )
        row["ref_logps"] = [float(example["ref_logps"][k]) for k in order]
    return row


def _sort_tokenized_example(example, index, cache_key):
    """Validate a pre-tokenised row and sort its completions (and their `ref_logps`, `completions`) best first, so
    the stored order is the collator's rank order (TRL's precomputed reference columns are stored in that order)."""
    validate_tokenized_example(example, index)
    order = rank_order(example["scores"])
    sorted_row = {"scores": [float(example["scores"][k]) for k in order]}
    for column in ("completion_ids", "ref_logps", "completions"):
        if example.get(column) is not None:
            sorted_row[column] = [example[column][k] for k in order]
    return sorted_row


def _token_saving(dataset: Dataset, sample_rows: int = 1000) -> float:
    """The share of tokens the shared-prompt packing removes on the first `sample_rows` rows (0 for no tokens)."""
    rows = dataset.select_columns(["prompt_ids", "completion_ids"]).select(range(min(sample_rows, len(dataset))))
    unshared = shared = 0
    for row in rows:
        prompt, completions = len(row["prompt_ids"]), [len(c) for c in row["completion_ids"]]
        unshared += len(completions) * prompt + sum(completions)
        shared += max(prompt - 1, 0) + sum(completions)
    return 1 - shared / unshared if unshared > 0 else 0.0


def _decide_shared_prompt(dataset: Dataset | IterableDataset, setting: bool | None, sample_rows: int = 1000) -> bool:
    """Resolve `shared_prompt_forward`: an explicit True/False, or None (auto) from the share of tokens it saves.

    Packing a prompt with its K completions runs `P - 1 + sum_k L_k` tokens instead of `sum_k (P + L_k)`; auto turns
    it on when that removes at least `AUTO_SHARED_PROMPT_MIN_SAVING` of the tokens on the first `sample_rows` rows
    (TRL's pairwise data included: K=2 with the prompt shared). An `IterableDataset` is not sampled: auto leaves it off.
    Whether the model can run it exactly is checked once the model is known (`_shared_prompt_model_check`).
    """
    if setting is not None:
        return bool(setting)
    if isinstance(dataset, IterableDataset):
        return False
    return _token_saving(dataset, sample_rows) >= AUTO_SHARED_PROMPT_MIN_SAVING
