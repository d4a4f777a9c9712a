"""The listwise machinery shared by every trainer of this package: a `DPOTrainer` that reads ranked lists.

`RankedPreferenceTrainer` changes only what K completions per prompt require and inherits everything else from
TRL's `DPOTrainer` (model and PEFT set-up, reference handling, the fused log-prob head, `log`, `evaluate`,
checkpoints, model cards):

- `_prepare_dataset`: validates each row, sorts its completions best first and tokenises the K completions;
- the collator: `DataCollatorForRankedPreference` (completion-major stacking, `list_mask`, `scores`);
- `_set_signature_columns_if_needed`: keeps the ranked columns;
- `compute_ref_log_probs` / `_precompute_ref_logps`: reference log-probs of all K completions;
- `_compute_loss`: one forward through the fused head, then `ranked_loss` (the subclass's one call into
  `losses.py`), then the ranking metrics.

Subclasses set `requires_reference_model` and implement `ranked_loss`.
"""

import contextlib
import json
import logging
import os

import torch
from accelerate.utils import broadcast_object_list, is_peft_model, tqdm
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from trl import DPOTrainer
from trl.data_utils import _tokenize, common_prefix_length, is_conversational
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer import dpo_trainer as _dpo_trainer_module
from trl.trainer.utils import global_then_local_main_first, use_adapter

from . import metrics as ranking_metrics
from .data.collator import DataCollatorForRankedPreference
from .data.schema import is_pairwise, is_ranked, rank_order, validate_ranked_example
from .shared_prompt import DataCollatorForSharedPromptRankedPreference, shared_prompt_logps, shared_prompt_model_inputs


logger = logging.getLogger(__name__)

# `shared_prompt_forward=None` turns the shared-prompt forward on when packing removes at least this share of the
# tokens. Measured on CPU (benchmarks/shared_prompt_micro.py): 69% fewer tokens (TL;DR shape) ran 2.3x faster, 25%
# fewer (UltraFeedback shape) ran 0.85x, because attention over the packed row grows with its square.
AUTO_SHARED_PROMPT_MIN_SAVING = 0.5


@contextlib.contextmanager
def _without_reference_model(policy_is_path: bool):
    """Stop `DPOTrainer.__init__` from loading a reference copy of the policy.

    `DPOTrainer` loads one whenever `ref_model` is None and neither PEFT nor precomputation is used, and has no switch
    for reference-free losses. In TRL 1.16 `create_model_from_path` is called at most twice there: for the policy
    (only when `model` is a path) and then for the reference. Let the first through when it is the policy.
    """
    original = _dpo_trainer_module.create_model_from_path
    calls_allowed = [1 if policy_is_path else 0]

    def create_policy_only(*args, **kwargs):
        if calls_allowed[0] > 0:
            calls_allowed[0] -= 1
            return original(*args, **kwargs)
        return None

    _dpo_trainer_module.create_model_from_path = create_policy_only
    try:
        yield
    finally:
        _dpo_trainer_module.create_model_from_path = original


def _dataset_columns(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


class RankedPreferenceTrainer(DPOTrainer):
    """Base of the listwise trainers: a [`~trl.DPOTrainer`] over ranked lists (see the module docstring).

    Accepts the ranked schema (`prompt`, `completions`, `scores`; standard or conversational; K may vary by row) and
    TRL's pairwise data (`prompt`/`chosen`/`rejected`, converted to K=2 with scores [1, 0]).
    """

    requires_reference_model = True
    config_class = None  # the subclass's config dataclass, checked and used for a default
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
        if not self.requires_reference_model:
            if ref_model is not None:
                raise ValueError(f"{type(self).__name__} is reference-free: do not pass a `ref_model`.")
            if args is not None and args.precompute_ref_log_probs:
                raise ValueError(f"{type(self).__name__} is reference-free: `precompute_ref_log_probs` must be False.")
        self._user_data_collator = data_collator
        self.shared_prompt_forward = False  # resolved from the config when the train split is prepared
        self._shared_prompt_decided = False
        self.max_num_completions = None  # K of the training data's longest list (None for an IterableDataset)
        self._shared_prompt_auto = False
        no_reference = contextlib.nullcontext()
        if not self.requires_reference_model:
            no_reference = _without_reference_model(policy_is_path=isinstance(model, str))
        with no_reference:
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
        self._shared_prompt_model_check()
        if self.shared_prompt_forward and self.aux_loss_enabled:
            raise ValueError("shared_prompt_forward does not support the MoE router auxiliary loss; set it to False.")
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
            pad_token_id=self._tokenizer.pad_token_id,
            max_length=self.args.max_length,
            truncation_mode=self.args.truncation_mode,
            pad_to_multiple_of=self.args.pad_to_multiple_of,
            pad_to_num_completions=pad_to_num_completions,
        )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validate, sort best-first and tokenise each ranked list. Idempotent on an already tokenised dataset."""
        columns = _dataset_columns(dataset)
        if "completion_ids" in columns:  # already tokenised (lists in any order: the collator sorts them)
            self._note_train_dataset(dataset, args)
            return dataset
        if self._is_vision_dataset:
            raise ValueError(f"{type(self).__name__} does not support vision datasets yet.")
        if is_pairwise(columns) and not is_ranked(columns):
            from .data.converters import from_pairwise

            dataset = from_pairwise(dataset)
        elif not is_ranked(columns):
            raise ValueError(
                f"The {dataset_name} dataset has columns {columns}; expected a ranked dataset (prompt, completions, "
                "scores) or pairwise preference data (prompt, chosen, rejected)."
            )

        map_kwargs = {}
        if isinstance(dataset, Dataset):  # IterableDataset.map takes neither num_proc nor desc
            map_kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {dataset_name} dataset"}
        eos_token = self._tokenizer.eos_token
        max_prompt_length = args.max_length if args.truncation_mode == "keep_start" else None
        with global_then_local_main_first():
            dataset = dataset.map(
                _tokenize_ranked_example,
                with_indices=True,
                fn_kwargs={
                    "processing_class": processing_class,
                    "eos_token": eos_token,
                    "max_prompt_length": max_prompt_length,
                },
                **map_kwargs,
            )
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
        setting = getattr(args, "shared_prompt_forward", False)
        if args.truncation_mode == "keep_end" and args.max_length is not None:
            if setting:  # keep_end cuts a different part of the prompt for each completion: nothing to share
                raise ValueError("shared_prompt_forward needs truncation_mode='keep_start'.")
            setting = False
        self._shared_prompt_auto = setting is None
        self.shared_prompt_forward = _decide_shared_prompt(dataset, setting)

    def _shared_prompt_model_check(self) -> None:
        """Auto mode falls back to the default forward for a model the packed forward cannot run (the model is only
        known once `Trainer.__init__` ran); an explicit `shared_prompt_forward=True` lets those errors surface."""
        if not (self.shared_prompt_forward and self._shared_prompt_auto):
            return
        model = self.accelerator.unwrap_model(self.model)
        config = model.config.get_text_config()
        unsupported = []
        if config._attn_implementation not in ("sdpa", "eager"):
            unsupported.append(f"attn_implementation={config._attn_implementation!r}")
        if set(getattr(config, "layer_types", None) or []) - {"full_attention", "sliding_attention"}:
            unsupported.append("layer types other than full/sliding attention")
        if self.aux_loss_enabled:
            unsupported.append("the MoE router auxiliary loss")
        if is_peft_model(model) and model.active_peft_config.is_prompt_learning:
            unsupported.append("prompt-learning PEFT")
        if unsupported:
            logger.info("shared_prompt_forward (auto) stays off: %s.", ", ".join(unsupported))
            self.shared_prompt_forward = False

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "completion_ids", "scores", "ref_logps"]

    # ------------------------------------------------------------------------------------------ reference
    def compute_ref_log_probs(self, model, inputs):
        """Reference log-probs of every completion of a ranked batch, `(B, K)` (TRL's pairwise `(B,)` twice)."""
        if "segment_ids" in inputs:  # a packed shared-prompt batch
            return self._shared_prompt_ref_logps(model, inputs)
        batch_size, num_completions = inputs["list_mask"].shape
        sequence_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "completion_mask")}
        # DPOTrainer's version handles no_grad, autocast, checkpointing and the PEFT adapter; it splits the sequences
        # in two halves, which `torch.cat` undoes.
        ref_logps = torch.cat(super().compute_ref_log_probs(model, sequence_inputs))  # (K * B,)
        return ref_logps.view(num_completions, batch_size).T  # (B, K)

    def _shared_prompt_ref_logps(self, model, inputs):
        # The same context as DPOTrainer.compute_ref_log_probs (no grad, no checkpointing, adapter off, autocast)
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            return shared_prompt_logps(model, inputs).logps  # (B, K)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Add a `ref_logps` column (K floats per row) computed once with the reference model, cached on disk."""
        if not self.requires_reference_model:
            return dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError("`precompute_ref_log_probs=True` needs a map-style Dataset, not an IterableDataset.")
        self._shared_prompt_model_check()  # precomputation runs inside DPOTrainer.__init__, before our own check
        settings = (self.args.max_length, self.args.truncation_mode, "ranked_ref_logps")
        fingerprint = [Hasher.hash((dataset._fingerprint, self._precompute_model_hash, settings))]
        broadcast_object_list(fingerprint, from_process=0)
        cache_file = dataset._get_cache_file_path(fingerprint[0])
        if os.path.exists(cache_file):
            return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

        # Pad every batch to the dataset's largest K so batches of all processes gather into one tensor.
        all_scores = dataset["scores"]
        num_completions = [len(scores) for scores in all_scores]
        collator = self._ranked_collator(pad_to_num_completions=max(num_completions))
        loader = DataLoader(
            dataset.select_columns(["prompt_ids", "completion_ids", "scores"]),
            batch_size=batch_size,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        if self.ref_model is None and self.is_deepspeed_enabled:  # parameters still on CPU / sharded: as TRL does
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        ref_logps = []
        for batch in tqdm(loader, desc=f"Computing reference log probs for {name} dataset"):
            ref_logps.append(self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch)).cpu())
        ref_logps = torch.cat(ref_logps)  # (N, K_max), rows in dataset order, slots in the collator's rank order

        if self.accelerator.is_main_process:

            def add_ref_logps(_, indices):
                # Back to each row's own completion order, which the collator sorts again (with the ref_logps)
                rows = []
                for i in indices:
                    row = [0.0] * num_completions[i]
                    for rank, k in enumerate(rank_order(all_scores[i])):
                        row[k] = ref_logps[i, rank].item()
                    rows.append(row)
                return {"ref_logps": rows}

            dataset.map(
                add_ref_logps,
                with_indices=True,
                batched=True,
                remove_columns=dataset.column_names,
                new_fingerprint=fingerprint[0],
                cache_file_name=cache_file,
                desc=f"Caching reference log probs for {name} dataset",
            )
        self.accelerator.wait_for_everyone()
        return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

    def reference_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`(B, K)` reference log-probs: precomputed ones from the batch, else a no-grad reference forward."""
        if self.precompute_ref_logps:
            return inputs["ref_logps"]
        model = self.ref_model if self.ref_model is not None else self.model
        return self.compute_ref_log_probs(model, inputs)

    # ------------------------------------------------------------------------------------------------ loss
    def ranked_loss(
        self,
        logps: torch.Tensor,
        per_token_logps: torch.Tensor,
        shift_completion_mask: torch.Tensor,
        inputs: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the scalar loss and detached per-completion rewards `(B, K)` for logging. Subclasses implement it.

        Args:
            logps: `(B, K)` summed completion log-probs under the policy (0 at padded slots).
            per_token_logps: `(K * B, L - 1)` completion-major per-token log-probs (0 outside completions).
            shift_completion_mask: `(K * B, L - 1)` which of those positions are completion tokens.
            inputs: the collated batch (`list_mask`, `scores`, optional `ref_logps`, ...).
        """
        raise NotImplementedError

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        batch_size, num_completions = inputs["list_mask"].shape
        if "segment_ids" in inputs:  # shared-prompt forward: one packed row per prompt
            shared = shared_prompt_logps(model, inputs)
            outputs, logps = shared.outputs, shared.logps  # (B, K)
            per_token_logps, shift_completion_mask = shared.per_token_logps, shared.completion_mask  # (K * B, T)
            entropy, num_tokens = shared.entropy, inputs["padding_mask"].sum()
        else:
            model_kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            if self.aux_loss_enabled:
                model_kwargs["output_router_logits"] = True
            completion_mask = inputs["completion_mask"]
            shift_completion_mask = completion_mask[:, 1:]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
            seq_len = shift_completion_mask.size(1)
            per_token_logps = outputs.log_probs[:, -seq_len:]  # (K * B, L - 1)
            logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
            entropy, num_tokens = outputs.entropy[:, -seq_len:], inputs["attention_mask"].sum()

        loss, rewards = self.ranked_loss(logps, per_token_logps, shift_completion_mask, inputs)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_ranked_metrics(mode, inputs, logps.detach(), rewards, entropy, shift_completion_mask, num_tokens)

        if return_outputs:
            with torch.no_grad():
                if "segment_ids" in inputs:
                    outputs = model(**shared_prompt_model_inputs(model, inputs), use_cache=False)
                else:
                    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return loss, outputs
        return loss

    def sft_loss(self, per_token_logps: torch.Tensor, shift_completion_mask: torch.Tensor, batch_size: int):
        """Token-mean NLL over the batch's top-ranked completions (rows `0..B-1`), as TRL's `sft` loss type."""
        top_logps = per_token_logps[:batch_size]
        top_mask = shift_completion_mask[:batch_size].bool()
        return -top_logps[top_mask].mean()

    # --------------------------------------------------------------------------------------------- metrics
    def log_loss_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Log scalar loss components (averaged across processes) under their names."""
        mode = "train" if self.model.training else "eval"
        values = self.accelerator.gather_for_metrics(torch.stack([t.detach().float() for t in terms.values()])[None])
        for name, value in zip(terms, values.mean(dim=0).tolist()):
            self._metrics[mode][name].append(value)

    def _gather_lists(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        # Processes may hold different K_max: pad dim 1 (zeros, and False for masks) before gathering
        padded = [self.accelerator.pad_across_processes(t.contiguous(), dim=1) for t in tensors]
        return [self.accelerator.gather_for_metrics(t) for t in padded]

    @torch.no_grad()
    def _log_ranked_metrics(self, mode, inputs, logps, rewards, entropy, shift_completion_mask, num_tokens):
        metrics = self._metrics[mode]
        # One float32 dtype on every process: padding a bool mask can change its dtype on some processes only
        rewards, logps, scores, mask = self._gather_lists(
            rewards.float(), logps.float(), inputs["scores"].float(), inputs["list_mask"].float()
        )
        mask = mask.bool()
        rows = torch.arange(mask.size(0), device=mask.device)
        last = mask.sum(dim=1).clamp(min=1) - 1  # index of each list's bottom-ranked completion

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

        # Entropy and token count, as DPOTrainer logs them
        entropy_sum = self.accelerator.gather_for_metrics((entropy * shift_completion_mask).sum()).sum()
        total_tokens = self.accelerator.gather_for_metrics(shift_completion_mask.sum()).sum()
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            num_tokens = self.accelerator.gather_for_metrics(num_tokens).sum().item()
            self._total_train_tokens += num_tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]


def _tokenize_ranked_example(example, index, processing_class, eos_token, max_prompt_length):
    """Validate one ranked row, sort it best first and tokenise prompt and completions (as TRL's DPO does for 2)."""
    validate_ranked_example(example, index)
    order = rank_order(example["scores"])
    completions = [example["completions"][k] for k in order]
    scores = [float(example["scores"][k]) for k in order]
    prompt = example["prompt"]

    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    template_kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
    if is_conversational(example):
        prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **template_kwargs)["input_ids"]
        full_ids = [_tokenize(processing_class, prompt + c, **template_kwargs)["input_ids"] for c in completions]
    else:
        completions = [c if c.endswith(eos_token) else c + eos_token for c in completions]
        prompt_ids = _tokenize(processing_class, prompt)["input_ids"]
        full_ids = [_tokenize(processing_class, prompt + c)["input_ids"] for c in completions]

    # The completion starts where the tokenised prompt and prompt+completion diverge (see TRL's DPO)
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    if max_prompt_length is not None and prompt_len >= max_prompt_length:
        raise ValueError(
            f"row {index}, field 'prompt': the prompt alone is {prompt_len} tokens, >= max_length={max_prompt_length}, "
            "so every completion would be truncated away. Raise `max_length` or filter out long prompts."
        )
    for k, ids in enumerate(full_ids):
        if len(ids) <= prompt_len:
            raise ValueError(f"row {index}, field 'completions[{order[k]}]': the completion tokenises to nothing")
    return {
        "prompt_ids": prompt_ids[:prompt_len],
        "completion_ids": [ids[prompt_len:] for ids in full_ids],
        "completions": completions,
        "scores": scores,
    }


def _decide_shared_prompt(dataset: Dataset | IterableDataset, setting: bool | None, sample_rows: int = 1000) -> bool:
    """Resolve `shared_prompt_forward`: an explicit True/False, or None (auto) from the share of tokens it saves.

    Packing a prompt with its K completions runs `P - 1 + sum_k L_k` tokens instead of `sum_k (P + L_k)`; auto turns
    it on when that removes at least `AUTO_SHARED_PROMPT_MIN_SAVING` of the tokens on the first `sample_rows` rows.
    """
    if setting is not None:
        return bool(setting)
    if isinstance(dataset, IterableDataset):
        return False
    rows = dataset.select_columns(["prompt_ids", "completion_ids"]).select(range(min(sample_rows, len(dataset))))
    unshared = shared = 0
    for row in rows:
        prompt, completions = len(row["prompt_ids"]), [len(c) for c in row["completion_ids"]]
        unshared += len(completions) * prompt + sum(completions)
        shared += max(prompt - 1, 0) + sum(completions)
    return unshared > 0 and 1 - shared / unshared >= AUTO_SHARED_PROMPT_MIN_SAVING
