"""Multi-node launch: one `accelerate launch` per machine, for any stage and for `pipeline`.

```bash
# SLURM (recipes/launch.slurm calls this on every node through `srun --ntasks-per-node=1`):
sbatch --nodes=2 recipes/launch.slurm rankdpo recipes/ultrafeedback/rankdpo.yaml multi_node_zero3
# Any cluster: the same command on every machine, MACHINE_RANK = 0 on the head node, 1, 2, ... on the others:
trl-rankalign launch --accelerate_config multi_node_zero3 --num_machines 2 --num_processes_per_machine 8 \
    --machine_rank MACHINE_RANK --main_process_ip HEAD_IP rankdpo --config recipes/ultrafeedback/rankdpo.yaml
# Print what every machine would run, run nothing:
trl-rankalign launch --dry_run --accelerate_config multi_node_zero3 --num_machines 2 --num_processes_per_machine 8 \
    --main_process_ip HEAD_IP rankdpo --config recipes/ultrafeedback/rankdpo.yaml
```

A stage runs as `python -m accelerate.commands.launch --config_file CONFIG --num_machines N --num_processes N*G
--machine_rank R --main_process_ip HEAD --main_process_port PORT -m trl_rankalign STAGE ARGS...` on machine R (the
command-line values override the config file's). `pipeline` runs its driver on every machine (`python -m trl_rankalign
pipeline ... --accelerate_config NODE_CONFIG`), NODE_CONFIG being the accelerate config with those five values written
in ([`write_node_config`], a node-local file), so every stage it starts joins the same multi-machine group. Stage
outputs must be on a filesystem that every machine sees.

Under SLURM (`SLURM_JOB_ID` set) what is not given is read from the job: the number of machines from
`SLURM_JOB_NUM_NODES`, this machine's rank from `SLURM_NODEID` (its index in the job's node list), the head node as
`scontrol show hostnames $SLURM_JOB_NODELIST | head -n1`, the processes per machine from `SLURM_GPUS_ON_NODE`.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml


DEFAULT_PORT = 29500
# The five values a multi-machine launch sets on every machine (accelerate config keys = `accelerate launch` flags)
NODE_KEYS = ("num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port")


@dataclass(frozen=True)
class Topology:
    """Where a multi-machine run lives: `num_machines` machines of `processes_per_machine` processes each, the head
    (machine 0) reachable at `main_process_ip:main_process_port`."""

    num_machines: int
    processes_per_machine: int
    main_process_ip: str
    main_process_port: int = DEFAULT_PORT

    def __post_init__(self):
        if self.num_machines < 1 or self.processes_per_machine < 1:
            raise ValueError(
                f"Need at least one machine and one process per machine, got num_machines={self.num_machines}, "
                f"processes_per_machine={self.processes_per_machine}."
            )
        if not self.main_process_ip:
            raise ValueError("The head node's address (main_process_ip) is empty.")

    @property
    def num_processes(self) -> int:
        """All processes of all machines (what `accelerate launch --num_processes` means)."""
        return self.num_machines * self.processes_per_machine

    def node_values(self, machine_rank: int) -> dict:
        """The five per-machine values of [`NODE_KEYS`] for `machine_rank`."""
        if not 0 <= machine_rank < self.num_machines:
            raise ValueError(f"machine_rank {machine_rank} is not in [0, {self.num_machines}).")
        return {
            "num_machines": self.num_machines,
            "num_processes": self.num_processes,
            "machine_rank": machine_rank,
            "main_process_ip": self.main_process_ip,
            "main_process_port": self.main_process_port,
        }


def _node_flags(topology: Topology, machine_rank: int) -> list[str]:
    flags = []
    for key, value in topology.node_values(machine_rank).items():
        flags += [f"--{key}", str(value)]
    return flags


def _stage_names() -> set[str]:
    from .stages import STAGES

    return set(STAGES)


def _resolve_stage_args(stage: str, args: list[str]) -> list[str]:
    """`args` with `--config`'s value an absolute path (resolved as the CLI does, packaged recipes included), so every
    machine reads the same file whatever its working folder. `--accelerate_config` belongs to the launcher."""
    from .main import resolve_recipe

    args = list(args)
    if "--accelerate_config" in args:
        raise ValueError(
            f"Give --accelerate_config to the launcher (`trl-rankalign launch --accelerate_config NAME {stage} ...`), "
            f"not to the {stage} command."
        )
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise ValueError("Expected a recipe path after `--config`.")
        args[index + 1] = str(Path(resolve_recipe(args[index + 1])).resolve())
    return args


def _check_pipeline(args: list[str]) -> None:
    """A pipeline stage with its own `accelerate_config` would run on each machine alone (it wins over the launcher's
    config), so N machines would train N separate copies into one folder: refused."""
    from .pipeline import load_pipeline

    if "--config" not in args:
        raise ValueError("`pipeline` needs --config PIPELINE.yaml.")
    spec = load_pipeline(args[args.index("--config") + 1])
    own = [stage["name"] for stage in spec["stages"] if stage.get("accelerate_config")]
    if own:
        raise ValueError(
            f"Pipeline stages {own} set their own accelerate_config; a multi-machine pipeline launches every stage "
            "with the launcher's config. Remove it from those stages."
        )


def node_config_path(accelerate_config: str, topology: Topology, machine_rank: int, directory) -> Path:
    """Where [`write_node_config`] puts the node config of `machine_rank` in `directory`."""
    name = f"{Path(accelerate_config).stem}-machine{machine_rank}-of{topology.num_machines}.yaml"
    return Path(directory) / name


def write_node_config(accelerate_config: str, topology: Topology, machine_rank: int, path) -> Path:
    """Write the accelerate config `accelerate_config` (a file) with the five per-machine values of `machine_rank` set
    to `path`: what a launch that cannot take `accelerate launch` flags (a `pipeline`'s stages) is given."""
    config = yaml.safe_load(Path(accelerate_config).read_text(encoding="utf-8")) or {}
    config.update(topology.node_values(machine_rank))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {Path(accelerate_config).name} for machine {machine_rank} of {topology.num_machines} (trl-rankalign launch)\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    return path


def node_command(
    stage: str,
    args: list[str],
    accelerate_config: str,
    topology: Topology,
    machine_rank: int,
    node_config_dir=None,
    python: str | None = None,
) -> list[str]:
    """The command machine `machine_rank` runs for `trl-rankalign STAGE ARGS` (`stage` may be `pipeline`).

    `accelerate_config` is a name or file ([`trl_rankalign.cli.main.resolve_accelerate_config`]); `args` are the stage's
    (`--config RECIPE` and overrides) or the pipeline's; `node_config_dir` is where a pipeline's node config is written
    (by [`write_node_config`], not here); `python` defaults to this interpreter.
    """
    from .main import resolve_accelerate_config

    python = python or sys.executable
    config_file = str(Path(resolve_accelerate_config(accelerate_config)).resolve())
    if stage == "pipeline":
        args = _resolve_stage_args(stage, args)
        node_config = node_config_path(config_file, topology, machine_rank, node_config_dir or _default_node_dir())
        return [python, "-m", "trl_rankalign", "pipeline", *args, "--accelerate_config", str(node_config)]
    if stage not in _stage_names():
        raise ValueError(f"Unknown stage {stage!r}: one of {sorted(_stage_names())} or `pipeline`.")
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config_file,
        *_node_flags(topology, machine_rank),
        "-m",
        "trl_rankalign",
        stage,
        *_resolve_stage_args(stage, args),
    ]


def _default_node_dir() -> Path:
    job = os.environ.get("SLURM_JOB_ID") or str(os.getpid())
    return Path(tempfile.gettempdir()) / f"trl-rankalign-launch-{job}"


# ---- reading the topology from the command line and SLURM ----------------------------------------------------------


def slurm_head_node(nodelist: str) -> str:
    """`scontrol show hostnames NODELIST | head -n1`: the first host of a SLURM node list (`node[001-004]`)."""
    try:
        output = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout
    except FileNotFoundError as error:
        raise RuntimeError("`scontrol` is not on PATH: pass --main_process_ip HEAD_NODE.") from error
    hosts = output.split()
    if not hosts:
        raise RuntimeError(f"`scontrol show hostnames {nodelist}` printed no host: pass --main_process_ip HEAD_NODE.")
    return hosts[0]


def _gpus_from_slurm(env) -> int | None:
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(name, "").strip()
        if value:  # SLURM_GPUS_PER_NODE may read `a100:8`
            return int(value.rsplit(":", 1)[-1])
    return None


def resolve_topology(options: argparse.Namespace, env=None, need_rank: bool = True) -> tuple[Topology, int | None]:
    """The topology and this machine's rank: command-line values first, then SLURM's variables (when `SLURM_JOB_ID` is
    set), then the local GPU count for the processes per machine. `need_rank=False` (a dry run, which prints every
    machine's command unless one is named) takes the rank from the command line only, else none."""
    env = os.environ if env is None else env
    slurm = bool(env.get("SLURM_JOB_ID"))
    missing = []

    num_machines = options.num_machines
    if num_machines is None and slurm:
        num_machines = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 0) or None
    if num_machines is None:
        missing.append("--num_machines")

    head = options.main_process_ip
    if head is None and slurm and env.get("SLURM_JOB_NODELIST"):
        head = slurm_head_node(env["SLURM_JOB_NODELIST"])
    if head is None:
        missing.append("--main_process_ip")

    per_machine = options.num_processes_per_machine
    if per_machine is None and slurm:
        per_machine = _gpus_from_slurm(env)
    if per_machine is None:
        import torch

        per_machine = torch.cuda.device_count() or None
    if per_machine is None:
        missing.append("--num_processes_per_machine")

    rank = options.machine_rank
    if rank is None and need_rank and slurm and env.get("SLURM_NODEID"):
        # One launcher per machine: several tasks on a node would start several groups claiming the same rank
        tasks, nodes = env.get("SLURM_STEP_NUM_TASKS"), env.get("SLURM_STEP_NUM_NODES")
        if tasks and nodes and tasks != nodes:
            raise ValueError(
                f"This SLURM step runs {tasks} tasks on {nodes} nodes; the launcher needs exactly one task per node "
                "(srun --ntasks-per-node=1)."
            )
        rank = int(env["SLURM_NODEID"])
    if rank is None and need_rank:
        missing.append("--machine_rank")

    if missing:
        where = "" if slurm else " (outside a SLURM job every value is given on the command line)"
        raise ValueError(f"Missing {', '.join(missing)}{where}.")
    topology = Topology(num_machines, per_machine, head, options.main_process_port)
    if rank is not None:
        topology.node_values(rank)  # range check
    return topology, rank


# ---- the command ---------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-rankalign launch",
        description="Run a stage (or `pipeline`) on several machines: one `accelerate launch` per machine.",
        allow_abbrev=False,
    )
    parser.add_argument("--accelerate_config", required=True, help="e.g. multi_node_zero3, multi_node_fsdp2, a file")
    parser.add_argument("--num_machines", type=int, default=None, help="default: SLURM_JOB_NUM_NODES")
    parser.add_argument(
        "--num_processes_per_machine",
        type=int,
        default=None,
        help="processes (GPUs) on each machine; default: SLURM_GPUS_ON_NODE, else this machine's GPU count",
    )
    parser.add_argument("--machine_rank", type=int, default=None, help="0 on the head node; default: SLURM_NODEID")
    parser.add_argument(
        "--main_process_ip", default=None, help="the head node; default: first host of SLURM_JOB_NODELIST"
    )
    parser.add_argument("--main_process_port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    parser.add_argument(
        "--node_config_dir",
        default=None,
        help="where `pipeline` writes this machine's accelerate config (node-local; default: a temp folder)",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="print each machine's command (all machines unless --machine_rank) and run nothing",
    )
    parser.add_argument("stage", help="a stage (rankdpo, sft, ...) or `pipeline`")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the stage's arguments: --config RECIPE ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .main import resolve_accelerate_config

    options = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    stage, args = options.stage, list(options.args)
    accelerate_config = resolve_accelerate_config(options.accelerate_config)  # fails before anything is printed
    if stage == "pipeline":
        args = _resolve_stage_args(stage, args)
        _check_pipeline(args)
    topology, rank = resolve_topology(options, need_rank=not options.dry_run)
    node_dir = Path(options.node_config_dir) if options.node_config_dir else _default_node_dir()
    if options.dry_run:
        print(
            f"# {topology.num_machines} machines x {topology.processes_per_machine} processes, head "
            f"{topology.main_process_ip}:{topology.main_process_port}"
        )
        for machine in range(topology.num_machines) if rank is None else [rank]:
            command = node_command(stage, args, options.accelerate_config, topology, machine, node_dir)
            print(f"# machine {machine}")
            if stage == "pipeline":
                values = " ".join(f"{key}={value}" for key, value in topology.node_values(machine).items())
                print(f"# writes {command[-1]}: {options.accelerate_config} with {values}")
            print(shlex.join(command))
        sys.stdout.flush()
        return 0
    command = node_command(stage, args, options.accelerate_config, topology, rank, node_dir)
    if stage == "pipeline":
        write_node_config(accelerate_config, topology, rank, command[-1])
    print(f"[launch] machine {rank} of {topology.num_machines}: {shlex.join(command)}", flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
