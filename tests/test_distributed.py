"""Multi-process runs of tiny stages on the CPU: 2-process DDP (gloo) against 1 process, DeepSpeed ZeRO-2/3.

`accelerate launch` starts several CPU processes only through torchrun: a `MULTI_CPU` config without MPI silently
runs one process. So `recipes/accelerate/cpu2.yaml` is a 2-process `MULTI_GPU` config and the tiny recipes'
`use_cpu: true` makes each process a CPU (gloo) rank.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_rankalign.cli import main as cli


ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
}
for name in (cli.LAUNCHED_ENV, "ACCELERATE_MIXED_PRECISION", "LOCAL_RANK"):
    ENV.pop(name, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fixed_k_recipe(tmp_path: Path, k: int = 4) -> Path:
    """recipes/tiny/rankdpo.yaml on the shipped lists with exactly K completions (51 rows for K=4), via TRL's json
    loader in a `datasets:` mixture. Same K on every rank: see `test_ddp_with_different_k_per_rank`."""
    rows = [json.loads(line) for line in (ROOT / "trl_rankalign" / "tiny" / "assets" / "tiny_ranked.jsonl").open()]
    data = tmp_path / f"tiny_k{k}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows if len(row["scores"]) == k))
    recipe = yaml.safe_load((TINY / "rankdpo.yaml").read_text())
    del recipe["dataset_name"]
    recipe["datasets"] = [{"path": "json", "data_files": str(data)}]
    recipe.update(max_steps=1, logging_steps=1, eval_strategy="no", data_seed=0)
    path = tmp_path / "rankdpo_k.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _launch(stage: str, recipe: Path, output_dir: Path, accelerate_config: str, *args: str, env=None):
    command = [sys.executable, "-m", "trl_rankalign", stage, "--config", str(recipe), "--output_dir", str(output_dir)]
    command += ["--accelerate_config", accelerate_config]
    for attempt in range(2):
        port = ["--main_process_port", str(_free_port())]
        try:
            result = subprocess.run(
                command + port + list(args), cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=300
            )
            break
        except subprocess.TimeoutExpired:
            # A teardown hang of the gloo group (seen once; unrelated to what these tests check) gets one more try
            if attempt == 1:
                raise
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads((output_dir / "rankalign_stage.json").read_text())


def _first_loss(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(entry["loss"] for entry in state["log_history"] if "loss" in entry)


def test_ddp_two_processes_match_one(tmp_path):
    """Global batch 4: per-device 2 x 2 gloo processes gives the first-step loss of per-device 4 x 1 process.

    The seedable sampler (`data_seed`) draws the same permutation in both runs; accelerate hands batch 2i to rank 0
    and batch 2i+1 to rank 1, so step 1 sees the same 4 lists, and the logged loss is the mean over processes.
    """
    recipe = _fixed_k_recipe(tmp_path)
    two = _launch("rankdpo", recipe, tmp_path / "two", "cpu2", "--per_device_train_batch_size", "2")
    assert two["num_processes"] == 2
    one_dir = tmp_path / "one"
    assert (
        cli.main(
            ["rankdpo", "--config", str(recipe), "--output_dir", str(one_dir), "--per_device_train_batch_size", "4"]
        )
        == 0
    )
    assert _first_loss(tmp_path / "two") == pytest.approx(_first_loss(one_dir), rel=1e-5)


@pytest.mark.slow
def test_ddp_with_different_k_per_rank(tmp_path):
    """The shipped data, first step: rank 0's lists have K=5, rank 1's K=6. Both ranks' lists reach the logged
    metrics (the gathered ranks include the 6th, padded on rank 0), the loss is finite, and the step moved the
    weights that were saved."""
    import math

    import torch
    from safetensors.torch import load_file

    from trl_rankalign.tiny import tiny_model_path

    output = tmp_path / "out"
    summary = _launch(
        "rankdpo",
        TINY / "rankdpo.yaml",
        output,
        "cpu2",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "1",
        "--eval_strategy",
        "no",
        "--data_seed",
        "0",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
    )
    assert summary["num_processes"] == 2 and summary["global_step"] == 1
    state = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())  # the logged, gathered metrics
    entry = next(entry for entry in state["log_history"] if "loss" in entry)
    assert math.isfinite(entry["loss"]) and entry["loss"] > 0
    assert "rewards/rank_5" in entry and "rewards/rank_6" in entry and "rewards/rank_7" not in entry
    assert entry["grad_norm"] > 0
    before, after = load_file(Path(tiny_model_path()) / "model.safetensors"), load_file(output / "model.safetensors")
    moved = [name for name, tensor in after.items() if not torch.equal(tensor, before[name])]
    assert len(moved) > len(after) // 2, moved


def _deepspeed_config(tmp_path: Path, name: str) -> str:
    """The shipped ZeRO config with 2 processes and fp32 (no bf16 on this CPU); every other key as shipped."""
    config = yaml.safe_load((ROOT / "recipes" / "accelerate" / f"{name}.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_cpu(tmp_path, zero):
    """A tiny RankDPO stage (policy + reference model) under DeepSpeed ZeRO-2 / ZeRO-3 with its CPU accelerator.

    The first run JIT-builds DeepSpeed's shared-memory communication op (needs a C++ compiler; cached afterwards).
    """
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e '.[deepspeed]')")
    env = {**ENV, "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}
    recipe = _fixed_k_recipe(tmp_path)
    summary = _launch(
        "rankdpo",
        recipe,
        tmp_path / "out",
        _deepspeed_config(tmp_path, zero),
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "2",
        env=env,
    )
    assert summary["num_processes"] == 2 and summary["distributed_type"] == "DEEPSPEED"
    assert summary["zero_stage"] == int(zero[-1])
    assert summary["global_step"] == 2 and summary["first_loss"] > 0
    assert (tmp_path / "out" / "model.safetensors").is_file()  # ZeRO-3: gathered with zero3_save_16bit_model


def test_iterate_two_processes(tmp_path):
    """`iterate` under `accelerate launch` with 2 gloo processes: the sampling is sharded and gathered (every prompt
    of every round sampled once), scoring too, and both rounds train."""
    output = tmp_path / "iterate"
    summary = _launch("iterate", TINY / "iterate.yaml", output, "cpu2", "--max_steps", "2")
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    for index, r in enumerate(rounds):
        samples = [json.loads(line) for line in (output / f"round_{index}" / "samples.jsonl").read_text().splitlines()]
        assert sorted(row["index"] for row in samples) == list(range(summary["prompts"]))
        assert r["samples"] == 4 * summary["prompts"] and r["lists"] > 0


def test_served_policy_is_updated_once_per_round_with_two_processes(tmp_path):
    """`iterate` with 2 gloo processes on a served policy (`policy_update=sglang`, a stub that records the calls): the
    main process asks the server to reload round 0's checkpoint once, and both processes sample round 1 under the name
    it answers."""
    from test_online_served import AdminStub

    stub = AdminStub()
    try:
        output = tmp_path / "iterate"
        _launch("iterate", TINY / "iterate.yaml", output, "cpu2", "--max_steps", "1", "--max_new_tokens", "8",
                "--generation_backend", "server", "--generation_base_url", stub.base_url, "--generation_model", "policy",
                "--policy_update", "sglang")  # fmt: skip
        reloads = stub.posts("model_path")
        assert [r["model_path"] for r in reloads] == [str((output / "round_0" / "model").resolve())]
        infos = [r for r in stub.requests if r.get("path") == "/get_model_info"]
        assert len(infos) == 1
        rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [0, 1]
    finally:
        stub.close()
