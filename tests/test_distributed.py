"""ares_lit.distributed and the data-parallel controller state: identity in one process, gather-then-compute in two.

The two-process tests spawn a real gloo group on the CPU (a few seconds); the full DDP training run
is tests/e2e/test_ddp_cli.py.
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ares_lit.core.hwe import HWEThreshold, hwe_threshold, reduce_quantiles
from ares_lit.distributed import all_gather_cat, all_gather_object, world_max, world_size
from data_modules.difficulty import DifficultyTracker

# Two ranks' rollouts of one step. Rank 1 needed a refill round, so it calls `assign` twice, and
# prompt "shared" reached both ranks (refill streams are independent).
RANK_ASSIGNS = [
    [(["a", "b", "shared"], [1.0, 0.5, 0.0])],
    [(["c", "d"], [0.25, 0.75]), (["shared"], [0.875])],
]
RANK_NHWE = [torch.tensor([3.0, 5.0, 8.0, 1.0]), torch.tensor([13.0, 2.0])]
RANK_BUCKET = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 2])]
# Window entropies [B, T] and validity per rank; rank 1's second row has no valid window.
RANK_WIN = [torch.tensor([[0.1, 0.9, 0.4], [0.3, 0.2, 0.8]]), torch.tensor([[1.5, 0.5, 0.7], [9.0, 9.0, 9.0]])]
RANK_VALID = [torch.ones(2, 3, dtype=torch.bool), torch.tensor([[True, True, False], [False, False, False]])]
# The default log_ratio controller, calibrating over one batch and updating on any number of responses,
# so that the second step already moves α (the toy batches hold 1-3 responses per bucket).
TRACKER = {"calibration_batches": 1, "alpha_min_responses": 1}


def run_step(tracker: DifficultyTracker, rank: int, hwe: HWEThreshold):
    for ids, acc in RANK_ASSIGNS[rank]:
        tracker.assign(ids, torch.tensor(acc))
    targets, alpha = tracker.update_targets(RANK_NHWE[rank], RANK_BUCKET[rank])
    tau = hwe.from_quantiles(all_gather_cat(hwe.quantiles(RANK_WIN[rank], RANK_VALID[rank])))
    return targets, alpha, tau


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {
            "world_size": world_size(),
            "max": world_max(3 if rank == 0 else 7),
            "ragged": all_gather_cat(torch.arange(3 * rank + 1, dtype=torch.float64).reshape(-1, 1) + 10 * rank),
            "flags": all_gather_cat(torch.tensor([rank == 0, True])),
            "empty": all_gather_cat(torch.zeros(0, dtype=torch.long)),
            "objects": all_gather_object({"rank": rank}),
        }
        tracker = DifficultyTracker(**TRACKER)
        hwe_mean, hwe_median = HWEThreshold(reduce="mean", min_windows=0), HWEThreshold(reduce="median", min_windows=0)
        # Two steps: the second moves α against the first step's (global) targets.
        results["step1"] = run_step(tracker, rank, hwe_mean)
        # A rank whose groups were all dropped still joins the collectives, with zero rows.
        n, b = (torch.tensor([20.0]), torch.tensor([0])) if rank == 0 else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        results["step2"] = tracker.update_targets(n, b)
        results["tau_median"] = hwe_median.from_quantiles(all_gather_cat(hwe_median.quantiles(RANK_WIN[rank], RANK_VALID[rank])))
        win, valid = (RANK_WIN[0], RANK_VALID[0]) if rank == 0 else (torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.bool))
        results["tau_one_rank_empty"] = hwe_mean.from_quantiles(all_gather_cat(hwe_mean.quantiles(win, valid)))
        results["tracker"] = tracker.state_dict()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_single_process_is_identity():
    assert world_size() == 1  # (vLLM's in-process engine may leave a group of one; still identity)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert all_gather_cat(x) is x
    assert world_max(5) == 5
    obj = {"ids": ["a"]}
    assert all_gather_object(obj) == [obj] and all_gather_object(obj)[0] is obj

    # The tracker records at once and updates from this process's data alone.
    tracker, hwe = DifficultyTracker(**TRACKER), HWEThreshold(min_windows=0)
    targets, alpha, tau = run_step(tracker, 0, hwe)
    state = tracker.state_dict()
    assert state["history"]["shared"] == [0.0] and "c" not in state["bucket"]
    assert targets.tolist() == [4.0, 8.0, 1.0] and alpha.tolist() == [0.5, 0.5, 0.5]
    assert tau == pytest.approx(float(hwe_threshold(RANK_WIN[0], RANK_VALID[0])))


def test_reduce_quantiles_matches_the_batch_threshold():
    win, valid = torch.cat(RANK_WIN), torch.cat(RANK_VALID)
    for reduce in ("mean", "median"):
        hwe = HWEThreshold(reduce=reduce, min_windows=0)
        assert hwe.from_quantiles(hwe.quantiles(win, valid)) == hwe_threshold(win, valid, reduce=reduce)
    assert math.isnan(reduce_quantiles(torch.zeros(0)))
    with pytest.raises(ValueError, match="reduce must be"):
        reduce_quantiles(torch.ones(2), "max")


def test_two_ranks_gather_then_compute_identically(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))

    assert r0["world_size"] == 2
    # Ragged rows are concatenated in rank order: rank 0 sent [[0]], rank 1 sent [[10], ..., [13]].
    for r in (r0, r1):
        assert r["ragged"].flatten().tolist() == [0.0, 10.0, 11.0, 12.0, 13.0]
        assert r["ragged"].dtype == torch.float64
        assert r["flags"].tolist() == [True, True, False, True] and r["flags"].dtype == torch.bool
        assert r["empty"].numel() == 0
        assert r["objects"] == [{"rank": 0}, {"rank": 1}]
        assert r["max"] == 7

    # Every controller value is bit-identical on both ranks...
    for key in ("step1", "step2"):
        for x, y in zip(r0[key], r1[key]):
            assert torch.equal(x.nan_to_num(-1), y.nan_to_num(-1)), key
    t0, t1 = r0["tracker"], r1["tracker"]
    assert t0["bucket"] == t1["bucket"] and t0["history"] == t1["history"]
    for key in ("alpha", "targets", "setpoint_sum", "setpoint_count", "setpoint_batches"):
        assert torch.equal(t0[key].nan_to_num(-1), t1[key].nan_to_num(-1)), key
    assert r0["tau_median"] == r1["tau_median"]
    assert r0["tau_one_rank_empty"] == r1["tau_one_rank_empty"] == hwe_threshold(RANK_WIN[0], RANK_VALID[0])

    # ...and equals one process fed the whole global batch in rank order.
    ref, ref_hwe = DifficultyTracker(**TRACKER), HWEThreshold(min_windows=0)
    for ids, acc in RANK_ASSIGNS[0] + RANK_ASSIGNS[1]:
        ref.assign(ids, torch.tensor(acc))
    targets, alpha = ref.update_targets(torch.cat(RANK_NHWE), torch.cat(RANK_BUCKET))
    win, valid = torch.cat(RANK_WIN), torch.cat(RANK_VALID)
    assert targets.tolist() == r0["step1"][0].tolist() == [7.0, 8.0, 1.5]  # easy: (3 + 5 + 13) / 3
    assert torch.equal(alpha, r0["step1"][1])
    assert r0["step1"][2] == hwe_threshold(win, valid, reduce="mean")
    assert r0["tau_median"] == hwe_threshold(win, valid, reduce="median")
    targets, alpha = ref.update_targets(torch.tensor([20.0]), torch.tensor([0]))
    assert targets.tolist() == r0["step2"][0].tolist() == [20.0, 8.0, 1.5]
    assert torch.equal(ref.alpha, t0["alpha"])
    # The log_ratio α (docs/algorithm.md "The α controller"): step 1 calibrated T*_easy = 7 (the global mean),
    # step 2's T_easy = 20: α = 0.5 + 0.5·ln(21/8). Medium and hard stay calibrating at α_0.
    assert t0["setpoint_batches"].tolist() == [1, 1, 1] and t0["setpoint_sum"][0] == 21.0
    assert t0["alpha"].tolist() == pytest.approx([0.5 + 0.5 * math.log(21.0 / 8.0), 0.5, 0.5])
    # The tracker knows both ranks' prompts; "shared" got rank 0's record first, then rank 1's.
    assert set(t0["bucket"]) == {"a", "b", "c", "d", "shared"}
    assert t0["history"]["shared"] == [0.0, 0.875] and t0["bucket"]["shared"] == 0
    assert t0["history"] == ref.state_dict()["history"]
