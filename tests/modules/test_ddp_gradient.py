"""The AEPO loss normalisation across data-parallel ranks (issue 12, item 2; verl's global token-mean).

Two gloo processes on the CPU each hold some rows of one rollout, with unequal row and token
counts (rank 1 runs out of rows in the second mini-batch and runs a zero-weight dummy), and run the
module's own mini-batch loss path; their gradients are averaged as DDP does. The result must equal
the single-process gradient on the union of both ranks' rows, in every aggregation mode. A control
run with the old per-rank (local) denominator must NOT match: the test can fail.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ares_lit.batch import RolloutBatch
from ares_lit.distributed import world_max
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.aepo import AEPOModule

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
MINI, MICRO, P, R, MAX_NEW = 3, 2, 4, 8, 16
LENGTHS = [7, 2, 5, 6, 1, 3]  # response tokens per row; rows 0-4 on rank 0, row 5 on rank 1
RANK_ROWS = [[0, 1, 2, 3, 4], [5]]
# The union's mini-batches: DDP mini-batch j = rank 0's j-th slice + rank 1's j-th slice.
UNION_MINIS = [[0, 1, 2, 5], [3, 4]]


def make_module(path: str) -> AEPOModule:
    m = AEPOModule(model_path=path, mini_batch_size=MINI, micro_batch_size=MICRO, kl_coef=0.05)
    m.configure_model()
    return m


def make_data(module: AEPOModule) -> dict:
    g = torch.Generator().manual_seed(1)
    n = len(LENGTHS)
    ids = torch.randint(3, module.policy.config.vocab_size, (n, P + R), generator=g)
    attention = torch.ones(n, P + R, dtype=torch.long)
    attention[1, :2] = 0  # a left-padded prompt
    response_mask = torch.arange(R)[None] < torch.tensor(LENGTHS)[:, None]
    attention[:, P:] = response_mask
    old, _ = module.score(module.policy, ids, attention, R, 1.0)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "response_mask": response_mask,
        "old_log_probs": old + 0.1 * torch.randn(n, R, generator=g),
        "ref_log_probs": old + 0.3 * torch.randn(n, R, generator=g),
        "advantages": torch.randn(n, generator=g),
        "bucket": torch.arange(n) % 3,
        "window_mask": torch.rand(n, R, generator=g) > 0.7,
    }


def subset(data: dict, rows: list[int]) -> RolloutBatch:
    idx = torch.tensor(rows, dtype=torch.long)
    return RolloutBatch(**{k: v[idx] for k, v in data.items()}, max_new_tokens=MAX_NEW)


def mini_batch_grad(module: AEPOModule, rb: RolloutBatch, mini: torch.Tensor, normalizer: float) -> torch.Tensor:
    """The flat gradient of one mini-batch through the module's own micro-batch loss path."""
    module.policy.zero_grad(set_to_none=True)
    for loss, *_ in module.mini_batch_losses(rb, mini, normalizer, module._horizon(rb)):
        loss.backward()
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def plan(module: AEPOModule, rb: RolloutBatch):
    """training_step's plan: mini-batches set by the largest rank, and their normalizers."""
    n_max = world_max(rb.size)
    return [torch.arange(rb.size)[s : s + MINI] for s in range(0, n_max, MINI)]


def _worker(rank: int, init_file: str, out: str, path: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        module = make_module(path)
        rb = subset(data, RANK_ROWS[rank])
        results = {}
        for mode in MODES:
            module.hparams.loss_agg = mode
            minis = plan(module, rb)
            normalizers = module._normalizers(rb, minis)
            # The old rule, for the control: this rank's own count.
            local = rb.loss_counts(minis, mode == "token-mean").clamp_min(1)[0].tolist()
            for rule, norms in (("global", normalizers), ("local", local)):
                for j, (mini, norm) in enumerate(zip(minis, norms)):
                    grad = mini_batch_grad(module, rb, mini, norm)
                    dist.all_reduce(grad)  # DDP: the average over ranks
                    results[mode, rule, j] = grad / 2
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2"))
    module = make_module(path)
    return path, module, make_data(module)


def test_ddp_gradient_equals_single_process_on_the_union(setup, tmp_path):
    path, module, data = setup
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out, path, data), nprocs=2, join=True)
    ddp = torch.load(out)
    try:
        for mode in MODES:
            module.hparams.loss_agg = mode
            for j, rows in enumerate(UNION_MINIS):
                rb = subset(data, rows)
                mini = torch.arange(rb.size)
                (norm,) = module._normalizers(rb, [mini])
                single = mini_batch_grad(module, rb, mini, norm)
                torch.testing.assert_close(ddp[mode, "global", j], single, atol=1e-5, rtol=1e-5, msg=f"{mode} mini-batch {j}")
                if j == 0:  # rank 1 holds 1 of the 4 rows: the per-rank denominator gets it wrong
                    assert not torch.allclose(ddp[mode, "local", j], single, atol=1e-4, rtol=1e-3), mode
    finally:
        module.hparams.loss_agg = "token-mean"


def test_single_process_normalizer_is_the_local_count(setup):
    _, module, data = setup
    rb = subset(data, list(range(len(LENGTHS))))
    minis = [torch.arange(0, 3), torch.arange(3, 6)]
    try:
        assert module._normalizers(rb, minis) == [14.0, 10.0]  # tokens: 7+2+5, 6+1+3
        module.hparams.loss_agg = "seq-mean-token-mean"
        assert module._normalizers(rb, minis) == [3.0, 3.0]
    finally:
        module.hparams.loss_agg = "token-mean"


def test_seq_mean_token_sum_norm_divides_by_max_new_tokens_not_the_padded_width(setup):
    _, module, data = setup
    rb = subset(data, [0, 1])
    module.hparams.loss_agg = "seq-mean-token-sum-norm"
    try:
        assert module._horizon(rb) == MAX_NEW != rb.response_len
        module.hparams.loss_horizon = 100
        assert module._horizon(rb) == 100
        module.hparams.loss_horizon = None
        rb.max_new_tokens = None  # a batch from a pipeline that does not say: the padded width
        assert module._horizon(rb) == R
    finally:
        module.hparams.loss_agg, module.hparams.loss_horizon = "token-mean", None
