"""
Run one of TRL's own generator scripts offline, saving its output locally instead of pushing it to the Hub.

Used by `run.py`, one subprocess per generator (a generator does its work at import time and may crash):

    python build_offline.py --src TRL_SRC --out OUT model scripts.generate_tiny_models.for_causal_lm.qwen2_for_causal_lm_2_5
    python build_offline.py --src TRL_SRC --out OUT dataset scripts/generate_zen_dataset.py

`TRL_SRC` is a run-time copy of TRL's `scripts/` and `trl/chat_templates/`; nothing of TRL's lives in this repo.
What a tiny model ends up as `OUT/trl-internal-testing/<name>/` (`save_pretrained` layout); a data set as
`OUT/<repo_id>/<config>/<split>-00000-of-00001.parquet` plus a `README.md` whose `configs:` block is what
`push_to_hub` writes, so `load_dataset("<repo_id>", "<config>")` finds it when `OUT` is the working directory.

Offline substitutions (the generators would otherwise download these from the Hub):

- `check_transformers_version`, `check_dtype_pattern`, `print_config_diff`: no-ops (pins / Hub metadata reads).
- `AutoTokenizer.from_pretrained(<reference model>)`: a byte-level BPE tokenizer from `trl_rankalign.tiny`
  (`build_tiny_tokenizer`: Qwen2's pre-tokenizer, 1024 tokens, here trained on the text of TRL's dataset generators
  and chat templates, so sequence lengths stay near the real tokenizers'), given the reference model's *real* chat template (TRL's copy in
  `trl/chat_templates/*.jinja`), its `<|...|>` markup tokens as special tokens, and its bos/eos/pad strings.
- `GenerationConfig.from_pretrained(<reference model>)`: a plain `GenerationConfig` with that tokenizer's ids.
- `AutoProcessor.from_pretrained(<reference model>)`: none; VLM generators fail with a clear reason (the Qwen-VL
  family's processors also need torchvision for their video processors, which is not installed).
- Vocabulary sizes and token ids hard-coded in a generator's config are kept; the tokenizer's ids are all smaller
  (for Olmo 3, whose config sizes the vocabulary from the tokenizer but hard-codes pad id 100277, the tokenizer's
  BPE vocabulary is padded with unreachable filler entries up to 100278).
"""

import argparse
import json
import os
import re
import runpy
import sys
from pathlib import Path


ORG = "trl-internal-testing"
# reference model id -> (TRL chat template name, bos, eos, pad); tokens follow the real tokenizers.
SUBSTITUTES = {
    "Qwen/Qwen2.5-32B-Instruct": ("qwen2_5", None, "<|im_end|>", "<|endoftext|>"),
    "Qwen/Qwen3-30B-A3B": ("qwen3", None, "<|im_end|>", "<|endoftext|>"),
    "openai/gpt-oss-20b": ("gptoss", "<|startoftext|>", "<|return|>", "<|endoftext|>"),
    "CohereLabs/tiny-aya-earth": ("cohere2", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>"),
    "zai-org/GLM-4.5": ("glm4moe", None, "<|endoftext|>", "<|endoftext|>"),
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("nemotron_3_nano", "<s>", "<|im_end|>", "<|endoftext|>"),
    # no Olmo 3 template in TRL: ChatML; its config hard-codes pad id 100277 with vocab_size=len(tokenizer.vocab)
    "allenai/Olmo-3-7B-Think": ("qwen2_5", None, "<|endoftext|>", "<|pad|>", 100278),
    "LiquidAI/LFM2-1.2B": ("lfm2", "<|startoftext|>", "<|im_end|>", "<|pad|>"),
    "LiquidAI/LFM2.5-230M": ("lfm2_2_5", "<|startoftext|>", "<|im_end|>", "<|pad|>"),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama3_2", "<|begin_of_text|>", "<|eot_id|>", None),
}
DEFAULT_SUBSTITUTE = ("qwen2_5", None, "<|im_end|>", "<|endoftext|>")
SPECIAL_RE = re.compile(r"<\|[^|<>\s]{1,40}\|>|<[A-Z][A-Z_]+>|\[gMASK\]|<sop>")


def substitute_tokenizer(src: Path, model_id: str):
    """Offline stand-in for `AutoTokenizer.from_pretrained(model_id)` (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from trl_rankalign.tiny import build_tiny_tokenizer

    template_name, bos, eos, pad, *min_vocab = SUBSTITUTES.get(model_id, DEFAULT_SUBSTITUTE)
    template = (src / "trl" / "chat_templates" / f"{template_name}.jinja").read_text()
    # Train on text like what the tests feed it (TRL's dataset generators and chat templates), so that sequence
    # lengths stay in the range of the real tokenizers (the toolcall test truncates at 512 tokens).
    corpus = src / "tokenizer_corpus.txt"
    if not corpus.exists():
        files = sorted((src / "scripts").glob("generate_*_dataset.py")) + sorted(
            (src / "trl" / "chat_templates").glob("*.jinja")
        )
        corpus.write_text("\n".join(f.read_text() for f in files))
    tokenizer = build_tiny_tokenizer(corpus)
    tokenizer.model_max_length = 131072
    if min_vocab:  # pad the BPE vocabulary with unreachable entries, so that ids hard-coded in the config exist
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        vocab = spec["model"]["vocab"]
        vocab.update({f"<filler_{i}>": i for i in range(len(vocab), min_vocab[0])})
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token=tokenizer.eos_token,
            pad_token=tokenizer.pad_token, model_max_length=tokenizer.model_max_length,
        )  # fmt: skip
    specials = sorted(set(SPECIAL_RE.findall(template)) | {t for t in (bos, eos, pad) if t})
    tokenizer.add_tokens([t for t in specials if t not in tokenizer.get_vocab()], special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = bos, eos, pad
    tokenizer.chat_template = template
    print(f"[offline] tokenizer for {model_id}: tiny BPE ({len(tokenizer)} tokens) + {template_name}.jinja")
    return tokenizer


def install_model_patches(src: Path, out: Path, built: list):
    """Patch TRL's `_common` helpers and the Hub loaders before the generator module is imported."""
    import scripts.generate_tiny_models._common as common
    from transformers import AutoProcessor, AutoTokenizer, GenerationConfig

    state = {}
    noop = lambda *args, **kwargs: None  # noqa: E731
    common.check_transformers_version = common.check_dtype_pattern = common.print_config_diff = noop

    orig_tok, orig_gen = AutoTokenizer.from_pretrained, GenerationConfig.from_pretrained

    def tokenizer_from_pretrained(name, *args, **kwargs):
        if os.path.isdir(str(name)):
            return orig_tok(name, *args, **kwargs)
        state["tokenizer"] = substitute_tokenizer(src, str(name))
        return state["tokenizer"]

    def generation_config_from_pretrained(name, *args, **kwargs):
        if os.path.isdir(str(name)):
            return orig_gen(name, *args, **kwargs)
        tok = state.get("tokenizer")
        ids = {} if tok is None else dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id)  # fmt: skip
        return GenerationConfig(**ids)

    def push_to_hub(model, tokenizer, generation_config, prefix=None, suffix=None, create_pr=None):
        name = model.__class__.__name__ if prefix is None else f"{prefix}-{model.__class__.__name__}"
        repo_id = f"{ORG}/{name}" + (f"-{suffix}" if suffix is not None else "")
        target = out / repo_id
        model.save_pretrained(target)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
        if generation_config is not None:
            generation_config.save_pretrained(target)
        built.append(repo_id)
        print(f"[offline] saved {repo_id} -> {target}")

    def processor_from_pretrained(name, *args, **kwargs):
        raise RuntimeError(
            f"no offline substitute for AutoProcessor.from_pretrained({name!r}): a VLM processor needs the reference "
            "image/video processor configs from the Hub (and torchvision for video processors)"
        )

    AutoProcessor.from_pretrained = processor_from_pretrained
    AutoTokenizer.from_pretrained = tokenizer_from_pretrained
    GenerationConfig.from_pretrained = generation_config_from_pretrained
    common.push_to_hub = push_to_hub


def install_dataset_patches(out: Path, built: list):
    """Make `Dataset(Dict).push_to_hub(repo_id, config_name=...)` write parquet files and a README locally."""
    from datasets import Dataset, DatasetDict

    configs = {}

    def write_readme(repo_dir: Path):
        lines = ["---", "configs:"]
        for config, splits in sorted(configs[repo_dir].items()):
            lines += [f"- config_name: {config}", "  data_files:"]
            lines += [f"  - split: {s}\n    path: {config}/{s}-*" for s in splits]
        (repo_dir / "README.md").write_text("\n".join(lines + ["---", ""]))

    def save(dataset_dict, repo_id, config_name="default", **kwargs):
        repo_dir = out / repo_id
        for split, dataset in dataset_dict.items():
            (repo_dir / config_name).mkdir(parents=True, exist_ok=True)
            dataset.to_parquet(str(repo_dir / config_name / f"{split}-00000-of-00001.parquet"))
        configs.setdefault(repo_dir, {})[config_name] = list(dataset_dict)
        write_readme(repo_dir)
        built.append(f"{repo_id}:{config_name}")
        print(f"[offline] saved {repo_id} config {config_name} splits {list(dataset_dict)}")

    DatasetDict.push_to_hub = lambda self, repo_id, config_name="default", **kw: save(self, repo_id, config_name)
    Dataset.push_to_hub = lambda self, repo_id, config_name="default", split="train", **kw: save(
        {split: self}, repo_id, config_name
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="run-time copy of TRL (scripts/, trl/chat_templates/)")
    parser.add_argument("--out", type=Path, required=True, help="folder that will hold trl-internal-testing/...")
    parser.add_argument("kind", choices=["model", "dataset"])
    parser.add_argument("target", help="generator module (model) or script path relative to --src (dataset)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src))
    built = []
    if args.kind == "model":
        install_model_patches(args.src, args.out, built)
        sys.argv = [args.target]
        runpy.run_module(args.target, run_name="__main__", alter_sys=True)
    else:
        install_dataset_patches(args.out, built)
        script = args.src / args.target
        sys.argv = [str(script), "--push_to_hub", "true"]
        runpy.run_path(str(script), run_name="__main__")
    if not built:
        sys.exit(f"[offline] {args.target} saved nothing")


if __name__ == "__main__":
    main()
