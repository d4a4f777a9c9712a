"""Multi-node launch: `recipes/launch.slurm`, `trl-rankalign launch` (trl_rankalign/cli/launch.py) and the
`recipes/accelerate/multi_node_*.yaml` configs.

The SLURM script is run by bash here with stand-ins for `scontrol` (prints the job's hosts) and `srun` (runs its
command once per node, concurrently, with that node's `SLURM_NODEID`), so the real rendezvous test goes through the
script, the launcher and two `accelerate launch` groups (`--num_machines 2`, `--machine_rank 0/1`, head 127.0.0.1,
gloo, one CPU process each) exactly as a 2-node job would, on this host.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from trl_rankalign.cli import launch
from trl_rankalign.cli import main as cli


ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "trl_rankalign" / "recipes"
SLURM_SCRIPT = PACKAGED / "launch.slurm"
MULTI_NODE = {"ddp": "ddp", "zero2": "zero2", "zero3": "zero3", "fsdp2": "fsdp2"}  # multi_node_<key> -> single node
NODE_KEYS = set(launch.NODE_KEYS)
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "PYTHON": sys.executable,
}
for name in (cli.LAUNCHED_ENV, "ACCELERATE_MIXED_PRECISION", "LOCAL_RANK", "DRY_RUN", "GPUS_PER_NODE"):
    ENV.pop(name, None)
for name in [name for name in ENV if name.startswith("SLURM_")]:
    ENV.pop(name)

FAKE_SCONTROL = """#!/bin/bash
# `scontrol show hostnames NODELIST`: the hosts of the fake allocation, one a line
[[ "$1 $2" == "show hostnames" ]] || exit 1
printf '%s\\n' $FAKE_HOSTS
"""
FAKE_SRUN = """#!/bin/bash
# srun on one host: records its options, then runs the command once per node of the job, concurrently, with the
# variables SLURM sets in each task
echo "$*" >> "$SRUN_LOG"
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 SLURM_STEP_NUM_NODES=$SLURM_JOB_NUM_NODES \\
        SLURM_STEP_NUM_TASKS=$SLURM_JOB_NUM_NODES "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def _fake_slurm(tmp_path: Path, hosts: str, nodes: int, **extra) -> dict:
    """An environment in which `scontrol` and `srun` are the stand-ins above, inside job 4242 of `nodes` nodes."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **ENV,
        "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}",
        "FAKE_HOSTS": hosts,
        "SRUN_LOG": str(tmp_path / "srun.log"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_JOB_NODELIST": "node[001-002]",
        **extra,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the configs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MULTI_NODE))
def test_multi_node_config(kind):
    """Resolvable by name like the single-node ones, valid for accelerate's own loader, the single-node config's
    settings exactly (so the two cannot drift apart) with the per-machine values left to the launcher."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    name = f"multi_node_{kind}"
    path = cli.resolve_accelerate_config(name)
    assert path == str(PACKAGED / "accelerate" / f"{name}.yaml")
    assert cli.resolve_accelerate_config(f"recipes/accelerate/{name}.yaml").endswith(f"{name}.yaml")
    config = load_config_from_file(path)
    assert config.num_machines == 2 and config.num_processes == 16  # the documented shape; the launcher overrides
    assert config.main_process_ip is None and config.machine_rank == 0  # absent from the file
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    single = yaml.safe_load((PACKAGED / "accelerate" / f"{MULTI_NODE[kind]}.yaml").read_text(encoding="utf-8"))
    assert {k: v for k, v in raw.items() if k not in NODE_KEYS} == {
        k: v for k, v in single.items() if k not in NODE_KEYS
    }
    assert not {"machine_rank", "main_process_ip", "main_process_port"} & set(raw)
    if config.deepspeed_config:  # torchrun on each node: no pdsh/ssh between nodes
        assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    # The launcher's flags are `accelerate launch` flags with these values
    topology = launch.Topology(num_machines=2, processes_per_machine=8, main_process_ip="node001")
    command = launch.node_command("rankdpo", ["--config", "recipes/tiny/rankdpo.yaml"], name, topology, 1)
    parsed = launch_command_parser().parse_args(command[3:])
    assert parsed.config_file == path
    assert (parsed.num_machines, parsed.num_processes, parsed.machine_rank) == (2, 16, 1)
    assert (parsed.main_process_ip, parsed.main_process_port) == ("node001", 29500)
    assert parsed.module and parsed.training_script == "trl_rankalign" and parsed.training_script_args[0] == "rankdpo"


def test_slurm_script_is_package_data():
    """The packaged script matches a package-data glob of pyproject.toml (setuptools globs recursively)."""
    import glob

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["trl_rankalign"]
    package = ROOT / "trl_rankalign"
    matched = {Path(p) for pattern in globs for p in glob.glob(str(package / pattern), recursive=True)}
    assert SLURM_SCRIPT in matched
    assert (ROOT / "recipes" / "launch.slurm").resolve() == SLURM_SCRIPT  # the checkout's recipes/ link
    assert cli.resolve_recipe("recipes/launch.slurm") in ("recipes/launch.slurm", str(SLURM_SCRIPT))


# ---- the generated commands ---------------------------------------------------------------------------------------


def _expected_two_by_two(head: str, port: int = 29500) -> list[str]:
    """2 nodes x 2 processes, multi_node_zero3, the tiny RankDPO recipe with one override: what each node runs."""
    config = PACKAGED / "accelerate" / "multi_node_zero3.yaml"
    recipe = PACKAGED / "tiny" / "rankdpo.yaml"
    lines = [f"# 2 machines x 2 processes, head {head}:{port}"]
    for rank in (0, 1):
        lines.append(f"# machine {rank}")
        lines.append(
            f"{shlex.quote(sys.executable)} -m accelerate.commands.launch --config_file {config} --num_machines 2 "
            f"--num_processes 4 --machine_rank {rank} --main_process_ip {head} --main_process_port {port} "
            f"-m trl_rankalign rankdpo --config {recipe} --learning_rate 1e-4"
        )
    return lines


def test_dry_run_two_nodes_two_processes(capsys, monkeypatch):
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    argv = ["launch", "--dry_run", "--accelerate_config", "multi_node_zero3", "--num_machines", "2"]
    argv += ["--num_processes_per_machine", "2", "--main_process_ip", "node001"]
    argv += ["rankdpo", "--config", "recipes/tiny/rankdpo.yaml", "--learning_rate", "1e-4"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == _expected_two_by_two("node001")
    # One machine only, as that machine would run it
    assert cli.main(argv[:1] + ["--machine_rank", "1"] + argv[1:]) == 0
    assert (
        capsys.readouterr().out.splitlines()
        == _expected_two_by_two("node001")[:1] + _expected_two_by_two("node001")[3:]
    )


def test_slurm_script_dry_run(tmp_path):
    """`DRY_RUN=1 sbatch --nodes=2 --gres=gpu:2 recipes/launch.slurm rankdpo ...`: what the job's two nodes run."""
    env = _fake_slurm(tmp_path, "node001 node002", 2, SLURM_GPUS_ON_NODE="2", DRY_RUN="1", MAIN_PROCESS_PORT="29600")
    env["SLURM_NODEID"] = "0"  # as in the batch script's own environment: a dry run still prints every node
    command = ["bash", str(SLURM_SCRIPT), "rankdpo", "recipes/tiny/rankdpo.yaml", "multi_node_zero3"]
    result = subprocess.run(
        command + ["--learning_rate", "1e-4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == _expected_two_by_two("node001", 29600)
    assert not (tmp_path / "srun.log").exists()  # nothing launched


def test_slurm_script_usage(tmp_path):
    result = subprocess.run(["bash", str(SLURM_SCRIPT)], env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "sbatch --nodes=2 recipes/launch.slurm STAGE RECIPE ACCELERATE_CONFIG" in (
        result.stdout
    )
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "rankdpo", "recipes/tiny/rankdpo.yaml", "multi_node_zero3"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "run this script with sbatch" in result.stderr


def test_pipeline_launch(tmp_path, capsys, monkeypatch):
    """`pipeline` runs its driver on every machine with a node config holding that machine's five values, which
    accelerate loads; a pipeline whose stages bring their own accelerate config is refused."""
    from accelerate.commands.config.config_args import load_config_from_file

    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    argv = ["--dry_run", "--accelerate_config", "multi_node_ddp", "--num_machines", "2", "--main_process_ip", "h0"]
    argv += ["--num_processes_per_machine", "8", "--node_config_dir", str(tmp_path / "nodes")]
    assert launch.main(argv + ["pipeline", "--config", "recipes/tldr/pipeline.yaml", "--output_dir", "/shared/o"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pipeline = PACKAGED / "tldr" / "pipeline.yaml"
    for rank in (0, 1):
        node_config = tmp_path / "nodes" / f"multi_node_ddp-machine{rank}-of2.yaml"
        assert lines[lines.index(f"# machine {rank}") + 2] == shlex.join(
            [sys.executable, "-m", "trl_rankalign", "pipeline", "--config", str(pipeline)]
            + ["--output_dir", "/shared/o", "--accelerate_config", str(node_config)]
        )
        topology = launch.Topology(num_machines=2, processes_per_machine=8, main_process_ip="h0")
        written = launch.write_node_config(
            cli.resolve_accelerate_config("multi_node_ddp"), topology, rank, node_config
        )
        config = load_config_from_file(str(written))
        assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, rank)
        assert (config.main_process_ip, config.main_process_port) == ("h0", 29500)
        assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "bf16"
    assert not (tmp_path / "nodes" / "multi_node_ddp-machine0-of2.yaml").read_text().count("None")

    own = tmp_path / "own.yaml"
    own.write_text("stages:\n  - {name: sft, stage: sft, config: recipes/tiny/sft.yaml, accelerate_config: ddp}\n")
    with pytest.raises(ValueError, match=r"\['sft'\] set their own accelerate_config"):
        launch.main(argv + ["pipeline", "--config", str(own)])
    with pytest.raises(ValueError, match="Give --accelerate_config to the launcher"):
        launch.main(argv + ["rankdpo", "--config", "recipes/tiny/rankdpo.yaml", "--accelerate_config", "ddp"])
    with pytest.raises(ValueError, match="Unknown stage"):
        launch.main(argv + ["no_such_stage", "--config", "recipes/tiny/rankdpo.yaml"])


def _options(**given) -> Namespace:
    values = dict(num_machines=None, num_processes_per_machine=None, machine_rank=None, main_process_ip=None)
    return Namespace(**{**values, "main_process_port": 29500, **given})


def test_topology_from_slurm(tmp_path, monkeypatch):
    """Under SLURM what is not given comes from the job: SLURM_JOB_NUM_NODES, SLURM_NODEID, the first host of
    `scontrol show hostnames $SLURM_JOB_NODELIST`, SLURM_GPUS_ON_NODE (or SLURM_GPUS_PER_NODE, `a100:8`)."""
    env = _fake_slurm(tmp_path, "gpu-a17 gpu-b02 gpu-b03", 3, SLURM_GPUS_PER_NODE="a100:8", SLURM_NODEID="2")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_HOSTS", env["FAKE_HOSTS"])
    topology, rank = launch.resolve_topology(_options(), env)
    assert topology == launch.Topology(3, 8, "gpu-a17", 29500) and rank == 2 and topology.num_processes == 24
    # Given values win
    topology, rank = launch.resolve_topology(_options(main_process_ip="10.0.0.1", machine_rank=0), env)
    assert topology.main_process_ip == "10.0.0.1" and rank == 0
    with pytest.raises(ValueError, match="exactly one task per node"):
        launch.resolve_topology(_options(), {**env, "SLURM_STEP_NUM_TASKS": "6", "SLURM_STEP_NUM_NODES": "3"})
    with pytest.raises(ValueError, match=r"machine_rank 3 is not in \[0, 3\)"):
        launch.resolve_topology(_options(), {**env, "SLURM_NODEID": "3"})
    # Outside SLURM every value is given, else the error names what is missing
    topology, rank = launch.resolve_topology(
        _options(num_machines=2, num_processes_per_machine=4, machine_rank=1, main_process_ip="h"), {}
    )
    assert topology.num_processes == 8 and rank == 1
    with pytest.raises(ValueError, match="Missing --num_machines, --main_process_ip, --machine_rank"):
        launch.resolve_topology(_options(num_processes_per_machine=4), {})
    topology, rank = launch.resolve_topology(
        _options(num_machines=2, num_processes_per_machine=4, main_process_ip="h"), {}, need_rank=False
    )
    assert rank is None
    topology, rank = launch.resolve_topology(_options(), env, need_rank=False)  # a dry run in the batch script
    assert rank is None and topology.num_machines == 3


# ---- a real two-machine rendezvous on this host -------------------------------------------------------------------


def _losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _sbatch_two_machines(tmp_path: Path, *script_args: str, timeout: int = 540) -> str:
    """`sbatch --nodes=2 recipes/launch.slurm SCRIPT_ARGS` with one process per node, through the fake srun, heads
    127.0.0.1; returns the job's log (both nodes)."""
    import psutil

    env = _fake_slurm(tmp_path, "127.0.0.1 127.0.0.2", 2, GPUS_PER_NODE="1", MAIN_PROCESS_PORT=str(_free_port()))
    env["TMPDIR"] = str(tmp_path / "node_tmp")  # where a pipeline's node configs go (node-local on a cluster)
    env["PYTHONFAULTHANDLER"] = "1"  # a hung process killed below prints where it was
    (tmp_path / "node_tmp").mkdir(exist_ok=True)
    log_path = tmp_path / "job.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            ["bash", str(SLURM_SCRIPT), *script_args], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Everything this job started (torchrun puts its workers in sessions of their own): SIGABRT first, which
            # makes a Python process print its threads' stacks (PYTHONFAULTHANDLER), then SIGKILL
            processes = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
            for signal_number in (6, 9):
                for child in processes:
                    try:
                        child.send_signal(signal_number)
                    except psutil.NoSuchProcess:
                        pass
                psutil.wait_procs(processes, timeout=10)
            process.wait()
            raise AssertionError(
                f"the two-machine job did not finish in {timeout} s:\n" + log_path.read_text()[-8000:]
            ) from None
    log = log_path.read_text()
    assert process.returncode == 0, log[-8000:]
    assert "--nodes=2 --ntasks=2 --ntasks-per-node=1" in (tmp_path / "srun.log").read_text()
    return log


@pytest.mark.slow
def test_two_machine_rendezvous_matches_one_process(tmp_path):
    """`sbatch --nodes=2 recipes/launch.slurm rankdpo recipes/tiny/rankdpo.yaml cpu2` with 1 process per node, through
    the fake srun: two `accelerate launch` groups (machine_rank 0 and 1, head 127.0.0.1, gloo) train the tiny RankDPO
    recipe for 2 steps at per-device batch 2 (global 4); the loss curve is a 1-process run's at batch 4. About 90 s
    on a busy 2-core machine.

    Same global batch, same lists: the seedable sampler (`data_seed`) draws one permutation, and the 2-process
    dataloader hands batch 2i to rank 0 and 2i+1 to rank 1, so each step sees the 1-process run's 4 lists (K from 2
    to 6: each rank pads to its own K_max, masked). Step 1's logged loss is the mean over ranks of the same per-list
    losses; step 2's follows one AdamW step on the all-reduced (averaged) gradient, which is the 1-process gradient
    up to float32 summation order. Observed: both steps bit-identical. Tolerance 1e-5 relative (as the single-node
    DDP test): room for float32 reduction order on another CPU, while a wrong global batch (ranks seeing the same
    lists, gradients not averaged) moves the loss by far more (step 2 is 1.6% below step 1).
    """
    output = tmp_path / "two_machines"
    overrides = ["--max_steps", "2", "--logging_steps", "1", "--eval_strategy", "no", "--data_seed", "0"]
    log = _sbatch_two_machines(
        tmp_path,
        "rankdpo",
        "recipes/tiny/rankdpo.yaml",
        "cpu2",
        "--output_dir",
        str(output),
        "--per_device_train_batch_size",
        "2",
        *overrides,
    )
    for rank in (0, 1):
        assert f"--num_machines 2 --num_processes 2 --machine_rank {rank} --main_process_ip 127.0.0.1 " in log
    summary = json.loads((output / "rankalign_stage.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_step"] == 2

    one = tmp_path / "one_process"
    argv = ["rankdpo", "--config", "recipes/tiny/rankdpo.yaml", "--output_dir", str(one)]
    assert cli.main(argv + ["--per_device_train_batch_size", "4", *overrides]) == 0
    two_losses, one_losses = _losses(output), _losses(one)
    assert len(two_losses) == len(one_losses) == 2
    assert two_losses == pytest.approx(one_losses, rel=1e-5)


@pytest.mark.slow
def test_two_machine_pipeline(tmp_path):
    """`sbatch --nodes=2 recipes/launch.slurm pipeline ...`: each node's pipeline driver launches every stage (SFT,
    then RankDPO from it) into one 2-machine group through its node config; the shared output folder gets each
    stage's model and marker once."""
    pipeline = tmp_path / "pipeline.yaml"
    short = {"max_steps": 1, "eval_strategy": "no", "per_device_train_batch_size": 2, "save_strategy": "no"}
    pipeline.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"name": "sft", "stage": "sft", "config": str(PACKAGED / "tiny" / "sft.yaml"), "overrides": short},
                    {
                        "name": "rankdpo",
                        "stage": "rankdpo",
                        "config": str(PACKAGED / "tiny" / "rankdpo.yaml"),
                        "inputs": {"model_name_or_path": "sft"},
                        "overrides": short,
                    },
                ]
            }
        )
    )
    output = tmp_path / "shared"
    log = _sbatch_two_machines(tmp_path, "pipeline", str(pipeline), "cpu2", "--output_dir", str(output))
    for rank in (0, 1):
        node_config = tmp_path / "node_tmp" / "trl-rankalign-launch-4242" / f"cpu2-machine{rank}-of2.yaml"
        assert yaml.safe_load(node_config.read_text())["machine_rank"] == rank
        assert f"--accelerate_config {node_config}" in log
    for stage in ("sft", "rankdpo"):
        summary = json.loads((output / stage / "rankalign_stage.json").read_text())
        assert summary["num_processes"] == 2 and summary["global_step"] == 1
    assert json.loads((output / "rankdpo" / "rankalign_stage.json").read_text())["model_name_or_path"] == str(
        output / "sft"
    )
