"""The SLURM launcher: node lists, SLURM variables -> torchrun arguments, the batch script, and SIGUSR1 -> 143."""
from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ffcv_imagenet import slurm_launch as slurm
from ffcv_imagenet.cli import EXIT_PREEMPTED
from ffcv_imagenet.checkpointing import last_checkpoint_path, load_checkpoint
from helpers import DEMO_RECIPE, REPO, TRAIN, cpu_env, epoch_records, free_port, tiny_overrides

SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"
LAUNCHER = [sys.executable, "-m", "ffcv_imagenet.slurm"]
SCRIPT = ["train_imagenet.py", "--config", "rcfg/rn50_88.yaml"]


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu07", ["gpu07"]),
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[3,5]", ["rack1-n3", "rack1-n5", "rack2-n3", "rack2-n5"]),
    ("a,b[2-3],c", ["a", "b2", "b3", "c"]),
])
def test_compressed_node_lists_expand_in_slurms_order(nodelist: str, hosts: list[str]) -> None:
    assert slurm.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["", "gpu[01-03", "gpu01-03]", "gpu[3-1]", "gpu[a-b]", "gpu[]", "a,,b"])
def test_malformed_node_lists_name_the_variable(nodelist: str) -> None:
    with pytest.raises(slurm.SlurmEnvError, match=r"^SLURM_JOB_NODELIST: "):
        slurm.expand_nodelist(nodelist)


def job(**changes: str) -> dict[str, str]:
    """The variables SLURM sets in a task of a 3-node job with 8 GPUs per node, on its second node."""
    env = {"SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_NNODES": "3", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_GPUS_ON_NODE": "8"}
    env.update(changes)
    return {name: value for name, value in env.items() if value is not None}


def test_torchrun_arguments_from_a_multi_node_job() -> None:
    command = slurm.torchrun_command(job(), SCRIPT, port=29611)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--nnodes=3", "--nproc_per_node=8",
                       "--rdzv_backend=c10d", "--rdzv_endpoint=gpu07:29611", "--rdzv_id=4242",
                       "--rdzv_conf=is_host=0", *SCRIPT]
    first = slurm.torchrun_command(job(SLURM_NODEID="0"), SCRIPT)
    assert "--rdzv_conf=is_host=1" in first and "--rdzv_endpoint=gpu07:29500" in first  # default port


def test_one_node_and_compressed_lists_with_suffixes() -> None:
    single = slurm.torchrun_command(job(SLURM_JOB_NODELIST="dgx3", SLURM_NNODES="1", SLURM_NODEID="0"), SCRIPT)
    assert single[3:5] == ["--nnodes=1", "--nproc_per_node=8"] and "--rdzv_endpoint=dgx3:29500" in single
    suffixed = slurm.torchrun_command(job(SLURM_JOB_NODELIST="node[2-3]-ib,node9-ib", SLURM_NNODES="3"), SCRIPT)
    assert "--rdzv_endpoint=node2-ib:29500" in suffixed


@pytest.mark.parametrize("gpu_variables, nproc", [
    ({"SLURM_GPUS_PER_NODE": "4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:2,gpu:v100:2"}, 4),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "8"}, 2),  # what this node got wins
])
def test_gpus_per_node_fallbacks(gpu_variables: dict[str, str], nproc: int) -> None:
    env = {**job(SLURM_GPUS_ON_NODE=None), **gpu_variables}
    assert f"--nproc_per_node={nproc}" in slurm.torchrun_command(env, SCRIPT)
    assert "--nproc_per_node=1" in slurm.torchrun_command(env, SCRIPT, nproc_per_node=1)  # the option wins


@pytest.mark.parametrize("changes, variable", [
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST"),
    ({"SLURM_NNODES": None}, "SLURM_NNODES"),
    ({"SLURM_NNODES": "two"}, "SLURM_NNODES"),
    ({"SLURM_NNODES": "2"}, "SLURM_NNODES"),  # the list names 3 nodes
    ({"SLURM_NODEID": "3"}, "SLURM_NODEID"),
    ({"SLURM_NODEID": None}, "SLURM_NODEID"),
    ({"SLURM_JOB_ID": None}, "SLURM_JOB_ID"),
    ({"SLURM_GPUS_ON_NODE": None}, "SLURM_GPUS_ON_NODE"),
    ({"SLURM_GPUS_ON_NODE": "0"}, "SLURM_GPUS_ON_NODE"),
    ({"SLURM_GPUS_ON_NODE": None, "SLURM_GPUS_PER_NODE": "a100:x"}, "SLURM_GPUS_PER_NODE"),
])
def test_missing_or_bad_variables_name_themselves(changes: dict, variable: str) -> None:
    with pytest.raises(slurm.SlurmEnvError, match=rf"^{variable}: "):
        slurm.torchrun_command(job(**changes), SCRIPT)


def slurm_env(**changes: str) -> dict[str, str]:
    env = {name: value for name, value in cpu_env().items() if not name.startswith("SLURM_")}
    return {**env, **job(**changes)}


def test_command_line_prints_the_command_or_one_error_line() -> None:
    printed = subprocess.run([*LAUNCHER, "--dry-run", "--port=29612", "--", *SCRIPT], capture_output=True,
                             text=True, cwd=REPO, env=slurm_env(), timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert shlex.split(printed.stdout) == slurm.torchrun_command(job(), SCRIPT, port=29612)

    for changes, variable in (({"SLURM_JOB_NODELIST": "gpu[07-09"}, "SLURM_JOB_NODELIST"),
                              ({"SLURM_JOB_ID": ""}, "SLURM_JOB_ID")):
        failed = subprocess.run([*LAUNCHER, "--", *SCRIPT], capture_output=True, text=True, cwd=REPO,
                                env=slurm_env(**changes), timeout=120)
        assert failed.returncode == 2
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"python -m ffcv_imagenet.slurm: error: {variable}: ")
    no_script = subprocess.run([*LAUNCHER, "--dry-run"], capture_output=True, text=True, cwd=REPO,
                               env=slurm_env(), timeout=120)
    assert no_script.returncode == 2 and len(no_script.stderr.strip().splitlines()) == 1


def test_batch_script_parses_and_wires_the_signal_and_the_requeue() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the batch script"
    parsed = subprocess.run([bash, "-n", str(SBATCH)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    text = SBATCH.read_text()
    directives = [line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--signal=USR1@120" in directives and "--requeue" in directives and "--ntasks-per-node=1" in directives
    assert "-m ffcv_imagenet.slurm" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert slurm.EXIT_PREEMPTED == EXIT_PREEMPTED == 143 and '"$code" -eq 143' in text


def test_sigusr1_to_the_launcher_checkpoints_and_exits_143(demo_betons: dict, tmp_path: Path) -> None:
    """The launcher on one 'node' (localhost) runs the real torchrun. SIGUSR1 to torchrun itself (SLURM
    signals every process of a step) must not kill it; the training process, in its own session, gets
    the signal only through the launcher here."""
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 2, "resolution.fixres_epochs": 0})
    env = slurm_env(SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_GPUS_ON_NODE="1")
    launcher = subprocess.Popen([*LAUNCHER, f"--port={free_port()}", "--", str(TRAIN), "--config",
                                 str(DEMO_RECIPE), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((tmp_path / "log.jsonl").is_file() and epoch_records(tmp_path)):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    (torchrun,) = psutil.Process(launcher.pid).children()
    torchrun.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert torchrun.is_running() and torchrun.status() != psutil.STATUS_ZOMBIE
    launcher.send_signal(signal.SIGUSR1)  # lands in epoch 1 (or its loader's start)
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == slurm.EXIT_PREEMPTED, f"{stdout[-2000:]}\n{stderr[-3000:]}"
    assert "checkpoint saved" in stderr
    stopped = load_checkpoint(last_checkpoint_path(tmp_path))
    assert stopped["epoch"] == 1 and stopped["samples_in_epoch"] >= 1  # inside epoch 1, not its end
