"""Launch commands for N devices and several nodes, and a SLURM sbatch script.

Distributed work goes through the standard launchers (torchrun, accelerate, deepspeed);
each starts ``python -m weightsurgeon.recipes.train.runner CONFIG [overrides]`` once per
device. We only build their command lines; we never manage processes ourselves.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from .config import RecipeConfig

RUNNER = "weightsurgeon.recipes.train.runner"


def launch_command(
    cfg: RecipeConfig,
    config_path: str,
    overrides: list[str] | tuple[str, ...] = (),
    master_addr: str = "${MASTER_ADDR:-127.0.0.1}",
    master_port: str | int = "${MASTER_PORT:-29500}",
    node_rank: str | int = "$NODE_RANK",
    python: str = "python",
) -> list[str]:
    """The argv of the recipe's launcher. Multi-node values default to shell variables."""
    d = cfg.distributed
    tail = [config_path, *overrides]
    multi = d.nnodes > 1
    if d.launcher == "torchrun":
        cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={d.nproc_per_node}", f"--nnodes={d.nnodes}"]
        if multi:
            cmd += [f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]
        else:
            cmd += [f"--master_port={master_port}"]
        return cmd + ["-m", RUNNER, *tail]
    if d.launcher == "accelerate":
        cmd = ["accelerate", "launch", "--use_deepspeed", f"--num_processes={d.nproc_per_node * d.nnodes}",
               f"--num_machines={d.nnodes}", f"--zero_stage={d.zero_stage}", f"--main_process_port={master_port}"]
        if multi:
            cmd += [f"--machine_rank={node_rank}", f"--main_process_ip={master_addr}"]
        return cmd + ["-m", RUNNER, *tail]
    # deepspeed: its launcher reads a hostfile for several nodes (pdsh/ssh).
    cmd = ["deepspeed", f"--num_gpus={d.nproc_per_node}", f"--num_nodes={d.nnodes}", f"--master_port={master_port}"]
    if multi:
        cmd += ["--hostfile=hostfile", f"--master_addr={master_addr}"]
    return cmd + ["--module", RUNNER, *tail]


def shell_line(argv: list[str]) -> str:
    """Quote everything except shell variables, which the launch shell must expand."""
    return " ".join(a if "$" in a and " " not in a else shlex.quote(a) for a in argv)


def sbatch_script(cfg: RecipeConfig, config_path: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """A SLURM script: one task per node, each node running the launcher for its devices."""
    d = cfg.distributed
    name = cfg.name or Path(config_path).stem
    cmd = launch_command(cfg, config_path, overrides, master_addr="$MASTER_ADDR", master_port="$MASTER_PORT",
                         node_rank="$SLURM_NODEID")
    if d.launcher == "deepspeed":
        # The deepspeed launcher starts remote nodes itself; under SLURM use torchrun per node instead.
        cmd = launch_command(_with_launcher(cfg, "torchrun"), config_path, overrides, node_rank="$SLURM_NODEID")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={d.nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={d.nproc_per_node}",
        f"#SBATCH --time={d.slurm_time}",
        f"#SBATCH --output={name}-%j.log",
    ]
    if d.slurm_partition:
        lines.append(f"#SBATCH --partition={d.slurm_partition}")
    lines += [
        "set -euo pipefail",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_PORT=${MASTER_PORT:-29500}",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
        # One srun task per node; SLURM_NODEID must expand inside each task, not here.
        f"srun bash -c {shlex.quote(shell_line(cmd))}",
        "",
    ]
    return "\n".join(lines)


def _with_launcher(cfg: RecipeConfig, launcher: str) -> RecipeConfig:
    import dataclasses

    return dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, launcher=launcher))
