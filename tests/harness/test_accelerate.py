"""``accelerate launch`` with two processes on a tiny model (CPU, gloo), as docs/harness.md
promises: both processes train one run together (data parallel: half the steps), only rank 0
records it."""

from __future__ import annotations

import os
import subprocess
import sys

from unipelt.harness.store import Store

# `python -m unipelt.cli` (cli.main), with what each process's Trainer saw printed afterwards
LAUNCHED = """
import os, sys
import torch.distributed as dist
from unipelt import cli
from unipelt.harness import runner

seen = {}
train = runner.ProtocolTrainer.train

def watched(self, *args, **kwargs):
    out = train(self, *args, **kwargs)
    seen.update(world=self.args.world_size, steps=self.state.global_step, backend=dist.get_backend_config())
    return out

runner.ProtocolTrainer.train = watched
code = cli.main(sys.argv[1:])
print(f"rank={os.environ['RANK']} world={seen['world']} steps={seen['steps']} backend={seen['backend']}", flush=True)
sys.exit(code)
"""


def test_accelerate_launch_two_cpu_processes(tmp_path, glue_dir, tiny_model):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    store = tmp_path / "s.sqlite"
    # on a machine without GPUs, --multi_gpu is what makes accelerate start torchrun's processes
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    train = ["-q", "train", "--task", "rte", "--preset", "lora", "--model", tiny_model, "--k", "16"]
    train += [
        "--batch-size",
        "4",
        "--dev-size",
        "20",
        "--epochs",
        "2",
        "--glue-dir",
        str(glue_dir),
        "--store",
        str(store),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*launch, *train], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # 16 examples, 4 per process and step, 2 processes: 2 steps per epoch (8 in all on one process)
    ranks = sorted(line.split() for line in lines if line.startswith("rank="))
    assert [r[:3] for r in ranks] == [[f"rank={r}", "world=2", "steps=4"] for r in (0, 1)], done.stdout
    assert all(r[3].startswith("backend=") and "gloo" in r[3] and "nccl" not in r[3] for r in ranks)
    assert sum("rte lora K=16 seed=111: test accuracy" in line for line in lines) == 1  # rank 0 reports
    with Store(store, readonly=True) as s:
        runs, attempts, epochs = s.runs(), s.attempts(), s.epochs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and len(attempts) == 1 and len(epochs) == 2
    assert runs.loc[0, "sizes"] == {"train": 16, "dev": 20, "test": 30}
