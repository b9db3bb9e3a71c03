"""Two DDP processes (gloo, CPU) end with identical weights and log the single-process loss; killed
and resumed, they end exactly as an uninterrupted DDP run."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from killed_runs import assert_same_run, train_with_kills
from safetensors.torch import load_file

from robust_w2s.align import setup
from robust_w2s.align.config import load_config
from robust_w2s.align.loop import train

# Deterministic attacks (start at x): the global batch then gets the same x^ however it is split.
DDP_RUN = ["train.steps=3", "train.batch_size=16", "train.checkpoint_every=3", "train.eval_every=0",
           "attack.steps=2", "attack.refine_steps=1", "attack.start_noise_std=0", "optim.warmup_steps=1",
           "optim.lr=1e-4", "check.tasks=[]"]


def random_run(student: str) -> list[str]:
    """A student drawing from each process's global RNG (patch dropout), random attack starts, EMA;
    64 images per process / 8 = 8 steps an epoch: steps=10 crosses an epoch boundary."""
    return DDP_RUN[1:] + [f"student={student}", "train.steps=10", "train.checkpoint_every=2",
                          "attack.start_noise_std=0.001", "optim.ema_decay=0.9"]


def _worker(rank: int, world_size: int, port: int, home: str, student: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    models = []
    real = setup.load_student

    def keep(*args, **kwargs):  # remember this rank's student to compare weights afterwards
        loaded = real(*args, **kwargs)
        models.append(loaded[0])
        return loaded

    setup.load_student = keep
    train(load_config(None, DDP_RUN), f"{out}/ddp", home=home)
    torch.save({k: v.detach().clone() for k, v in models[0].state_dict().items()}, f"{out}/ddp/rank{rank}.pt")
    setup.load_student = real

    config = load_config(None, random_run(student))
    train(config, f"{out}/whole", home=home)
    # every process dies in step 4 (step 3 lost, redone from step 2's state), then right after step 8's state
    train_with_kills(config, Path(out) / "killed", home, [("step", 3), ("saved", 8)])
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(world_home, random_student, tmp_path_factory) -> Path:
    """Two gloo processes, started once (their start-up is most of the time): DDP_RUN into ddp/, then
    ``random_run`` uninterrupted into whole/ and killed twice and resumed into killed/."""
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(world_home), random_student, str(out)), nprocs=2, join=True)
    return out


def _losses(folder):
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def test_two_gloo_processes_match_each_other_and_a_single_process_run(ddp_runs, world_home, tmp_path):
    ranks = [torch.load(ddp_runs / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])

    train(load_config(None, DDP_RUN), tmp_path / "single", home=world_home)
    single, ddp = _losses(tmp_path / "single"), _losses(ddp_runs / "ddp")
    assert len(single) == len(ddp) == 3
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(single, ddp)), (single, ddp)
    weights = load_file(tmp_path / "single" / "checkpoint" / "open_clip_model.safetensors")
    assert all(torch.allclose(weights[k], ranks[0][k], atol=1e-5) for k in weights)


def test_two_gloo_processes_killed_twice_resume_exactly(ddp_runs):
    assert_same_run(ddp_runs / "whole", ddp_runs / "killed")
    rng = torch.load(ddp_runs / "killed" / "state" / "train_state.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each process its own stream
