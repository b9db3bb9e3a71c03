"""Two DDP processes (gloo, CPU) end with identical weights and log the single-process loss."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp

from robust_w2s.align import setup
from robust_w2s.align.config import load_config
from robust_w2s.align.loop import train

# Deterministic attacks (start at x): the global batch then gets the same x^ however it is split.
DDP_RUN = ["train.steps=3", "train.batch_size=16", "train.checkpoint_every=3", "train.eval_every=0",
           "attack.steps=2", "attack.refine_steps=1", "attack.start_noise_std=0", "optim.warmup_steps=1",
           "optim.lr=1e-4", "check.tasks=[]"]


def _worker(rank: int, world_size: int, port: int, home: str, out: str) -> None:
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
    train(load_config(None, DDP_RUN), out, home=home)
    torch.save({k: v.detach().clone() for k, v in models[0].state_dict().items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _losses(folder):
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def test_two_gloo_processes_match_each_other_and_a_single_process_run(world_home, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(world_home), str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])

    train(load_config(None, DDP_RUN), tmp_path / "single", home=world_home)
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 3
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(single, ddp)), (single, ddp)
    from safetensors.torch import load_file
    weights = load_file(tmp_path / "single" / "checkpoint" / "open_clip_model.safetensors")
    assert all(torch.allclose(weights[k], ranks[0][k], atol=1e-5) for k in weights)
