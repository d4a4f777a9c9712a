"""K samples per prompt, optionally scored, in batches, sharded across processes, resumable.

Shared by RSO's sampling stage, RAFT, the `rank` stage and evaluation. Finished prompts are appended to a JSONL file
as they complete (one line per prompt: its index, prompt, completions and, when a scorer is given, scores), and a
rerun with the same file skips the prompts already there, so hours of generation survive an interruption.
"""

import copy
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational

from .scorers import check_rewards


def _prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    if is_conversational({"prompt": prompt}):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    num_return_sequences: int = 1,
    generation_config: GenerationConfig | None = None,
    batch_size: int = 8,
    seed: int | None = None,
) -> list[list[Any]]:
    """Sample `num_return_sequences` completions for each prompt on this process (no sharding, no cache).

    Prompts are strings or chat-message lists; completions come back as strings, or as one assistant message list
    for conversational prompts. Returns a list (one per prompt) of lists of completions.
    """
    config = copy.deepcopy(generation_config or GenerationConfig(max_new_tokens=64, do_sample=True))
    config.num_return_sequences = num_return_sequences
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if seed is not None:
        torch.manual_seed(seed)
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    if pad_token is None:  # e.g. Llama-3 / Mistral tokenizers: pad with EOS while batching prompts
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            texts = [_prompt_text(tokenizer, p) for p in batch_prompts]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            output = model.generate(**inputs, generation_config=config)
            new_tokens = output[:, inputs["input_ids"].size(1) :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, prompt in enumerate(batch_prompts):
                texts_i = decoded[i * num_return_sequences : (i + 1) * num_return_sequences]
                if is_conversational({"prompt": prompt}):
                    results.append([[{"role": "assistant", "content": t.strip()}] for t in texts_i])
                else:
                    results.append(texts_i)
    finally:
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return results


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a truncated last line (interrupted write) is ignored."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # an interrupted append: everything before it is intact
    return rows


def sample_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    num_samples: int,
    scorer: Callable[[list, list], list[float]] | None = None,
    generation_config: GenerationConfig | None = None,
    batch_size: int = 8,
    cache_file: str | os.PathLike | None = None,
    seed: int = 0,
    desc: str = "Sampling",
) -> list[dict]:
    """Sample `num_samples` completions per prompt, score them, and return one row per prompt, in prompt order.

    Each row is `{"index", "prompt", "completions", "scores"}` (`scores` only with a `scorer`). Under several
    processes the prompts are split between them and the rows gathered, so every process returns all rows. With
    `cache_file`, each process appends its finished batches to that JSONL file (one write per batch), and a rerun
    skips the prompts already there.
    Prompts are generated in fixed batches of `batch_size` (batch `b` seeded with `seed + b`), so a resumed run
    draws what the uninterrupted one would have.
    """
    if len(prompts) == 0:
        raise ValueError("No prompts to sample from: the prompt set is empty.")
    state = PartialState()
    done = {row["index"]: row for row in read_jsonl(cache_file)} if cache_file is not None else {}
    state.wait_for_everyone()  # every process reads the cache before any appends to it: same to-do list everywhere
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    # Fixed batches of the global prompt order, each sampled with its own seed: a batch draws the same completions
    # whatever the number of processes and whether or not the run was resumed.
    batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
    todo = [b for b, indices in enumerate(batches) if not all(i in done for i in indices)]
    my_rows = []
    with state.split_between_processes(todo) as my_batches:
        progress = tqdm(total=len(todo), desc=desc, disable=not state.is_main_process or not todo)
        for b in my_batches:
            indices = batches[b]
            samples = generate_completions(
                model, tokenizer, [prompts[i] for i in indices], num_samples, generation_config, len(indices), seed + b
            )
            rows = [{"index": i, "prompt": prompts[i], "completions": c} for i, c in zip(indices, samples)]
            if scorer is not None:
                flat_prompts = [row["prompt"] for row in rows for _ in row["completions"]]
                flat_completions = [c for row in rows for c in row["completions"]]
                rewards = check_rewards(scorer(flat_prompts, flat_completions), len(flat_completions), "scorer")
                for r, row in enumerate(rows):
                    row["scores"] = rewards[r * num_samples : (r + 1) * num_samples]
            my_rows.extend(rows)
            if cache_file is not None:  # one append per batch: whole lines, whichever process writes
                with open(cache_file, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(row) + "\n" for row in rows))
                    f.flush()
                    os.fsync(f.fileno())
            progress.update(state.num_processes)
        progress.close()
    gathered = gather_object(my_rows) if state.num_processes > 1 else my_rows
    for row in gathered:
        done[row["index"]] = row
    return [done[i] for i in range(len(prompts))]
