"""Where an online round's time goes: `iterate` on SmolLM2-135M-Instruct, sampling here or from a served policy.

    python benchmarks/online_round.py [--prompts 16] [--samples 4] [--new-tokens 32] [--steps 4] [--threads 2]

Two runs of `train_iterative` (RankDPO-PL, full weights, 2 rounds), the same prompts, settings and seed:

- `transformers`: the policy samples in this process (`generation_backend="transformers"`, each prompt prefilled
  once, then K samples);
- `server`: `transformers serve` on 127.0.0.1, started without a pinned model, samples (`generation_backend="server"`,
  `policy_update="reload"`): before round 1 samples, the server is pointed at round 0's checkpoint by its path and
  the update is verified (a one-token probe whose reply must name it); the server then loads those weights.

Each round records its own split (`rounds.jsonl`: `time/policy_update`, `time/sample`, `time/score`, `time/select`,
`time/train`, the last including saving the round's checkpoint). Round 1 is the steady state (round 0 pays the
first load); the table shows both. Prompts are the held-out-style arithmetic problems of `benchmarks/real.py`, scored
by its exact Python reward (scoring is therefore nearly free here; a reward model would cost about a policy forward per
sample). The server runs with `--threads` torch threads too; it and the trainer take turns (sampling waits on the
server), so both may use the two cores.

Writes `benchmarks/results/online_round.{json,md}`.
"""

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, write_json  # noqa: E402


PARTS = ("time/policy_update", "time/sample", "time/score", "time/select", "time/train")


def run_backend(backend: str, start: Path, prompts: list, args, work: Path) -> list[dict]:
    """Two `iterate` rounds with `backend`; the rounds' records (`rounds.jsonl`)."""
    from real import reward

    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.online import read_rounds
    from trl_rankalign.sampling.local_server import LocalTransformersServer

    output = work / backend
    options = dict(generation_backend="transformers")
    server = None
    if backend == "server":
        server = LocalTransformersServer(None, work / "serve.log", threads=args.threads)
        options = dict(generation_backend="server", generation_base_url=server.base_url,
                       generation_model=str(start.resolve()), generation_concurrency=4, generation_prompt_format="text",
                       policy_update="reload")  # fmt: skip
    try:
        config = IterativeConfig(
            output_dir=str(output), num_rounds=2, num_samples=args.samples, max_new_tokens=args.new_tokens,
            sampling_batch_size=args.prompts, sampling_temperature=1.0, max_steps=args.steps,
            per_device_train_batch_size=max(1, args.prompts // args.steps), learning_rate=1e-5, beta=0.1,
            bf16=False, activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
            disable_tqdm=True, logging_steps=1, seed=0, **options,
        )  # fmt: skip
        train_iterative(str(start), prompts, config, reward=reward)
    finally:
        if server is not None:
            server.close()
    return read_rounds(output)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# One online round on SmolLM2-135M-Instruct: where the time goes (`benchmarks/online_round.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; machine: {result['machine']}; load average before/after "
        f"{result['load_before']:.2f} / {result['load_after']:.2f}  ",
        f"Setup: `iterate` RankDPO-PL, full weights, {s['prompts']} prompts × K = {s['samples']} samples of at most "
        f"{s['new_tokens']} tokens per round, {s['steps']} optimizer steps per round, {s['threads']} torch threads.",
        "",
        "| backend | round | policy update s | sample s | score s | select s | train (+ save) s | round s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backend, rounds in result["rounds"].items():
        for r in rounds:
            parts = [r.get(p, 0.0) for p in PARTS]
            cells = " | ".join(f"{v:.1f}" if p in r else "—" for p, v in zip(PARTS, parts))
            lines.append(f"| {backend} | {r['round']} | {cells} | {sum(parts):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per round")
    parser.add_argument("--samples", type=int, default=4, help="K samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="at most this many sampled tokens")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (trainer and server)")
    parser.add_argument(
        "--backends", nargs="+", default=["transformers", "server"], choices=["transformers", "server"]
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from real import chat_prompt, problem_split
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rankalign.models import smollm2

    _, train = problem_split(8, args.prompts)
    prompts = [chat_prompt(a, b) for a, b in train]  # every round samples all of them (prompts_per_round unset)
    load_before = os.getloadavg()[0]
    result = {"rounds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = work / "start"  # the served start: SmolLM2 with a sampling generation config (servers then sample)
        policy = AutoModelForCausalLM.from_pretrained(smollm2())
        policy.generation_config.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        policy.save_pretrained(start)
        AutoTokenizer.from_pretrained(smollm2()).save_pretrained(start)
        for backend in args.backends:
            rounds = run_backend(backend, start, prompts, args, work)
            result["rounds"][backend] = [{k: v for k, v in r.items() if k == "round" or k in PARTS} for r in rounds]
            print(f"[{backend}] {result['rounds'][backend]}", flush=True)
    result.update(
        command=("python benchmarks/online_round.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        load_before=load_before,
        load_after=os.getloadavg()[0],
        settings=dict(
            prompts=args.prompts,
            samples=args.samples,
            new_tokens=args.new_tokens,
            steps=args.steps,
            threads=args.threads,
        ),  # fmt: skip
    )
    write_json(RESULTS_DIR / "online_round.json", result)
    (RESULTS_DIR / "online_round.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
