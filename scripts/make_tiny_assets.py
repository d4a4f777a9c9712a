# Copyright 2025 The trl-rankalign authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
Regenerate the shipped assets of the tiny review language (`trl_rankalign/tiny/language.py`):

- `trl_rankalign/tiny/assets/tiny_corpus.txt`: 2500 `prompt + completion` lines, the tokenizer's training text;
- `trl_rankalign/tiny/assets/tiny_ranked.jsonl`: 300 ranked rows `{"prompt", "completions", "scores"}`, K in 2..6;
- `trl_rankalign/tiny/assets/tiny_sft.jsonl`: 300 prompt-completion rows `{"prompt", "completion"}`.

Deterministic (seed 0): rerunning rewrites identical files. The files are committed; regenerate them only when the
grammar changes, and bump `TINY_BUILDER_VERSION` in `trl_rankalign/tiny.py` if the corpus changed (the corpus hash
already invalidates cached tiny models, the version documents it).

    python scripts/make_tiny_assets.py [--output_dir trl_rankalign/tiny/assets]
"""

import argparse
import json
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from trl_rankalign.tiny.language import make_corpus, make_ranked_dataset, make_sft_dataset  # noqa: E402


SEED = 0
NUM_CORPUS_LINES = 2500  # keeps the three files under 400 KB together
NUM_RANKED_ROWS = 300
NUM_SFT_ROWS = 300
DEFAULT_OUTPUT_DIR = REPO_ROOT / "trl_rankalign" / "assets"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(output_dir: Path = DEFAULT_OUTPUT_DIR) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    corpus_path = output_dir / "tiny_corpus.txt"
    with open(corpus_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(make_corpus(NUM_CORPUS_LINES, seed=SEED)) + "\n")
    _write_jsonl(output_dir / "tiny_ranked.jsonl", make_ranked_dataset(NUM_RANKED_ROWS, seed=SEED))
    _write_jsonl(output_dir / "tiny_sft.jsonl", make_sft_dataset(NUM_SFT_ROWS, seed=SEED))
    for name in ("tiny_corpus.txt", "tiny_ranked.jsonl", "tiny_sft.jsonl"):
        print(f"{output_dir / name}: {(output_dir / name).stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    main(parser.parse_args().output_dir)
