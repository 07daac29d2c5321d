"""The quantiser under torch.distributed (gloo, two CPU processes): the EMA update and the
dead-code restart on two halves of a batch equal one process on the whole batch."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.world_model import VectorQuantizer


def _batch():
    torch.manual_seed(0)
    return torch.randn(4, 8, 6, 6) * 3   # (B, D, h, w): far from the initial codebook


def _quantizer():
    torch.manual_seed(1)
    # restart every step, and a high dead-usage bar so that most codes restart at once
    return VectorQuantizer(num_codes=32, dim=8, restart_every=1, dead_usage=10.0).train()


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    vq = _quantizer()
    z = _batch().chunk(world)[rank]
    for _ in range(2):
        vq(z)
    if rank == 0:
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, out_file)
    dist.destroy_process_group()


def test_two_processes_update_the_codebook_like_one(tmp_path):
    single = _quantizer()
    for _ in range(2):
        _, _, stats = single(_batch())
    assert stats["restarted"] > 0   # the restart path ran
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "vq.pt")), nprocs=2, join=True)
    shared = torch.load(tmp_path / "vq.pt", weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v.float(), shared[k].float(), atol=1e-5), k
