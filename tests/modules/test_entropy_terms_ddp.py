"""Entropy control under data parallelism: two gloo processes (the spawner of tests/test_distributed.py)
run the module-side glue (modules/entropy_terms.py) on ragged per-rank micro-batches. Both ranks must
get the same forking threshold, equal to the quantile of the concatenated valid entropies, and the
same adaptive coefficient, moved by the globally averaged entropy of the kept tokens."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ares_lit.core import AdaptiveEntropyCoef
from ares_lit.modules.entropy_terms import EntropyControl, EntropyTermsMixin

RHO = 0.3
SETTINGS = dict(top_entropy_quantile=RHO, adaptive=True, entropy_coef=0.01, entropy_target=5.0, entropy_coef_delta=0.004)
# Per rank, per micro-batch: (entropy [B, T], response mask [B, T]); rank 1 has a shorter, different
# second micro-batch, and runs out of rows at the third (a zero-weight dummy whose tokens must not count).
G = torch.Generator().manual_seed(0)
MICROS = [
    [(torch.rand(3, 5, generator=G) * 2, torch.rand(3, 5, generator=G) > 0.3) for _ in range(3)],
    [(torch.rand(2, 7, generator=G) * 2, torch.rand(2, 7, generator=G) > 0.3), (torch.rand(1, 2, generator=G) * 2, torch.ones(1, 2, dtype=torch.bool))],
]
DUMMY = (torch.full((1, 1), 50.0), torch.ones(1, 1, dtype=torch.bool))


class Host(EntropyTermsMixin):
    def __init__(self):
        self.hparams = SimpleNamespace(policy_loss="vanilla", loss_agg="token-mean")
        self.configure_entropy_control(EntropyControl(**SETTINGS))


def one_step(host: Host, rank: int) -> list[dict]:
    """The micro-batches of one optimizer step (3 on every rank: the collectives line up), then its end."""
    out = []
    for j in range(3):
        dummy = j >= len(MICROS[rank])
        ent, mask = DUMMY if dummy else MICROS[rank][j]
        micro = {"response_mask": mask, "dummy": dummy}
        corr, bonus, metrics = host.entropy_terms(micro, ent, {}, {"normalizer": 10.0, "horizon": None})
        out.append({"keep": corr["weights"].bool(), "threshold": float(metrics["forking_threshold"]), "bonus": bonus})
    host.entropy_step_end()
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        host = Host()
        steps = [one_step(host, rank), one_step(host, rank)]
        torch.save({"steps": steps, "ctl": host.entropy_coef_ctl.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_forking_threshold_and_the_adaptive_coefficient(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    ctl = AdaptiveEntropyCoef(0.01, True, 5.0, 0.004)  # the single-process controller on the union
    for step in range(2):
        kept_sum, kept_count = 0.0, 0.0
        for j in range(3):
            # the threshold: the (1 − ρ)-quantile of every rank's valid entropies of micro-batch j (no dummy)
            parts = [MICROS[r][j] for r in range(2) if j < len(MICROS[r])]
            union = torch.cat([e[m] for e, m in parts])
            want = float(torch.quantile(union, 1 - RHO))
            got0, got1 = r0["steps"][step][j]["threshold"], r1["steps"][step][j]["threshold"]
            assert got0 == got1 == want, (step, j)
            for r, res in ((0, r0), (1, r1)):
                keep = res["steps"][step][j]["keep"]
                if j < len(MICROS[r]):
                    e, m = MICROS[r][j]
                    assert torch.equal(keep, (e >= want) & m)
                    kept_sum += float(e[keep].double().sum())
                    kept_count += float(keep.sum())
                else:
                    assert not keep.any()  # the dummy keeps nothing and adds nothing to the controller
        ctl.update(kept_sum, kept_count)
    assert r0["ctl"] == r1["ctl"]
    assert r0["ctl"]["coef"] == pytest.approx(ctl.coef) and r0["ctl"]["last_entropy"] == pytest.approx(ctl.last_entropy, rel=1e-12)
    assert r0["ctl"]["coef"] == pytest.approx(0.018)  # H <= target: +δ at each of the two optimizer steps
    # the first step applied no bonus (no measurement yet), the second the c set by the first one, on both ranks
    assert all(res["steps"][0][j]["bonus"] is None for res in (r0, r1) for j in range(3))
    assert all(res["steps"][1][j]["bonus"] is not None for res in (r0, r1) for j in range(3))
