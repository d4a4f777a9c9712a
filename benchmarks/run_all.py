"""Run both benchmarks (`make bench`): quality (reward-vs-KL frontiers) then speed/memory vs TRL's DPOTrainer.

    python benchmarks/run_all.py            # full: ~50 min quality (exact labels; add --labels noisy to quality.py for the noisy variant) + ~20 min speed on a 2-core CPU
    python benchmarks/run_all.py --quick    # a few minutes

Results land in `benchmarks/results/` (quality.json|png|md, speed.json|png); the SFT policy and sampled lists are
cached in `benchmarks/results/cache/`.
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
import speed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    flags = ["--quick"] if args.quick else []
    quality.main(flags)
    speed.main(flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
