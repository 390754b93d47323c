"""One DistributedDataParallel step with gloo in 2 CPU processes gives the single-process gradients."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent(r"""
    import os, sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from wcrnn_kernels import FusedWCRNN

    rank, world, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = FusedWCRNN(3, 6, num_layers=2, residual="diagonal", r=torch.linspace(0.9, 1.0, 6),
                       learn_residual=True, learn_gamma=True, dtype=torch.float64)
    ddp = DDP(model)
    x = torch.randn(5, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shard = x[:, rank * 4:(rank + 1) * 4]  # each rank takes half of the batch
    out, h = ddp(shard)
    loss = (out.square().sum() + h.sum()) / x.shape[1]  # per-rank share of the global mean...
    loss = loss * world  # ...DDP averages gradients over ranks, so scale to the global sum / B
    loss.backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, out_path)
    dist.barrier()
    dist.destroy_process_group()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_matches_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / f"g{r}.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log

    from wcrnn_kernels import FusedWCRNN
    torch.manual_seed(0)
    model = FusedWCRNN(3, 6, num_layers=2, residual="diagonal", r=torch.linspace(0.9, 1.0, 6),
                       learn_residual=True, learn_gamma=True, dtype=torch.float64)
    x = torch.randn(5, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, h = model(x)
    ((out.square().sum() + h.sum()) / x.shape[1]).backward()
    g0, g1 = torch.load(tmp_path / "g0.pt"), torch.load(tmp_path / "g1.pt")
    assert set(g0) == {n for n, _ in model.named_parameters()} and "r_l0" in g0 and "gamma_l1" in g0
    for n, p in model.named_parameters():
        torch.testing.assert_close(g0[n], p.grad, rtol=1e-12, atol=1e-14, msg=lambda m: f"{n}: {m}")
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0)
