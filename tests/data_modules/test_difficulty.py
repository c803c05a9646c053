"""DifficultyTracker: buckets from current rollouts, bounded history, T_d / α_d order, checkpoints."""

import math

import pytest
import torch

from ares_lit.core import EASY, HARD, MEDIUM
from data_modules.difficulty import DifficultyTracker


def test_assign_group_of_eight_records_bucket_and_history():
    tr = DifficultyTracker()
    ids = [f"p{k}" for k in range(9)]
    acc = torch.arange(9, dtype=torch.float32) / 8  # k of 8 rollouts right
    buckets = tr.assign(ids, acc)
    assert buckets.dtype == torch.long
    assert buckets.tolist() == [HARD, HARD, HARD, MEDIUM, MEDIUM, MEDIUM, EASY, EASY, EASY]
    state = tr.state_dict()
    assert [state["bucket"][i] for i in ids] == buckets.tolist()
    assert state["history"]["p3"] == [pytest.approx(3 / 8)]
    assert set(state["bucket"]) == set(state["history"]) == set(ids)
    assert tr.last_batch_counts.tolist() == [3, 3, 3]

    # the bucket follows the CURRENT rollouts: p0 was hard, now it is solved 7/8 times
    assert tr.assign(["p0"], torch.tensor([7 / 8])).tolist() == [EASY]
    state = tr.state_dict()
    assert state["bucket"]["p0"] == EASY
    assert state["history"]["p0"] == [0.0, pytest.approx(7 / 8)]
    assert [list(state["bucket"].values()).count(d) for d in (EASY, MEDIUM, HARD)] == [4, 3, 2]
    assert tr.last_batch_counts.tolist() == [1, 0, 0]


def test_custom_thresholds():
    tr = DifficultyTracker(easy_min=0.9, medium_min=0.5)
    assert tr.assign(["a", "b", "c"], torch.tensor([0.875, 0.5, 0.4])).tolist() == [MEDIUM, MEDIUM, HARD]


def test_history_is_bounded_and_keeps_the_latest():
    tr = DifficultyTracker(history=3)
    for k in range(6):
        tr.assign(["p"], torch.tensor([k / 8]))
    assert tr.state_dict()["history"]["p"] == pytest.approx([3 / 8, 4 / 8, 5 / 8])


def test_update_targets_hand_worked():
    tr = DifficultyTracker(alpha_init=0.5, alpha_eta=0.02, alpha_update="absolute")
    assert torch.isnan(tr.targets).all() and tr.alpha.tolist() == [0.5, 0.5, 0.5]

    # batch 1: easy {10, 20}, medium {30}, hard {6}. No previous target: α cannot move yet.
    t, a = tr.update_targets(torch.tensor([10.0, 20.0, 30.0, 6.0]), torch.tensor([0, 0, 1, 2]))
    assert t.tolist() == [15.0, 30.0, 6.0]
    assert a.tolist() == [0.5, 0.5, 0.5]
    assert tr.alpha.tolist() == [0.5, 0.5, 0.5]

    # batch 2: easy {25, 35} (mean 30), medium empty, hard {2}
    t, a = tr.update_targets(torch.tensor([25.0, 35.0, 2.0]), torch.tensor([0, 0, 2]))
    assert t.tolist() == [30.0, 30.0, 2.0]  # medium keeps its last target
    assert a.tolist() == [0.5, 0.5, 0.5]  # this batch's reward uses α from before the batch
    # α moves against the PREVIOUS target: easy += η(30 - 15); hard += η(6 - 2); medium absent
    assert tr.alpha.tolist() == pytest.approx([0.5 + 0.02 * 15, 0.5, 0.5 + 0.02 * 4])
    assert tr.targets.tolist() == [30.0, 30.0, 2.0]

    # batch 3: easy {20}: returns batch 2's α; easy α steps down by η(20 - 30)
    t, a = tr.update_targets(torch.tensor([20.0]), torch.tensor([0]))
    assert t.tolist() == [20.0, 30.0, 2.0]
    assert a.tolist() == pytest.approx([0.8, 0.5, 0.58])
    assert tr.alpha.tolist() == pytest.approx([0.6, 0.5, 0.58])


def _two_steps(tr, t_prev, mean):
    """Batch 1 sets T = t_prev for easy and hard; batch 2 has mean N_HE `mean` in both."""
    tr.update_targets(torch.tensor([t_prev, t_prev]), torch.tensor([EASY, HARD]))
    tr.update_targets(torch.tensor([mean, mean]), torch.tensor([EASY, HARD]))
    return tr.alpha.tolist()


def test_relative_alpha_update_keeps_its_old_hand_values():
    """The withdrawn 2026-11-30 rule, kept as a named option: its own η (0.05) and no response minimum."""
    assert DifficultyTracker().alpha_update == "log_ratio"
    relative = lambda: DifficultyTracker(alpha_update="relative")  # noqa: E731
    # T = 20, mean N_HE = 30, η = 0.05: step 0.05·10/20 = 0.025; hard sign flipped; medium unseen
    assert _two_steps(relative(), 20.0, 30.0) == pytest.approx([0.525, 0.5, 0.475])
    # T = 0.4 < 1: divided by max(T, 1) = 1, so the step is η·(1.4 - 0.4) = 0.05
    assert _two_steps(relative(), 0.4, 1.4) == pytest.approx([0.55, 0.5, 0.45])
    # uses the target from BEFORE the batch (20), not the new one (30)
    tr = relative()
    _two_steps(tr, 20.0, 30.0)
    assert tr.targets.tolist()[0] == 30.0


def test_absolute_alpha_update_option_hand_values():
    tr = DifficultyTracker(alpha_update="absolute")
    # same values: 0.5 ± 0.05·(30 - 20) = 0.5 ± 0.5
    assert _two_steps(tr, 20.0, 30.0) == pytest.approx([1.0, 0.5, 0.0])
    assert _two_steps(DifficultyTracker(alpha_update="absolute"), 0.4, 1.4) == pytest.approx([0.55, 0.5, 0.45])
    with pytest.raises(ValueError, match="alpha_update"):
        DifficultyTracker(alpha_update="percent")


def test_relative_alpha_stays_inside_bounds_where_absolute_saturates():
    # 8 steps of realistic N_HE (tens of tokens) per bucket, the same stream for both trackers
    gen = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(9):
        n = torch.cat([torch.randint(20, 60, (4,), generator=gen), torch.randint(30, 90, (4,), generator=gen),
                       torch.randint(40, 120, (4,), generator=gen)]).float()
        steps.append((n, torch.tensor([EASY] * 4 + [MEDIUM] * 4 + [HARD] * 4)))
    rel, ab = DifficultyTracker(alpha_update="relative"), DifficultyTracker(alpha_update="absolute")
    rel_hist, abs_hist = [], []
    for n, b in steps:  # step 0 sets the targets; 8 α updates follow
        rel.update_targets(n, b)
        ab.update_targets(n, b)
        rel_hist.append(rel.alpha.clone())
        abs_hist.append(ab.alpha.clone())
    rel_all, abs_all = torch.stack(rel_hist), torch.stack(abs_hist)
    assert ((rel_all > 0.0) & (rel_all < 2.0)).all(), rel_all
    assert ((abs_all == 0.0) | (abs_all == 2.0)).any(), abs_all  # the absolute form hits a bound


def test_empty_bucket_keeps_nan_until_first_seen():
    tr = DifficultyTracker(alpha_min_responses=1)
    t, _ = tr.update_targets(torch.tensor([4.0, 8.0]), torch.tensor([1, 1]))
    assert math.isnan(t[0]) and t[1] == 6.0 and math.isnan(t[2])
    t, _ = tr.update_targets(torch.tensor([3.0]), torch.tensor([2]))
    assert math.isnan(t[0]) and t[1] == 6.0 and t[2] == 3.0


def test_target_momentum_and_alpha_clipping():
    tr = DifficultyTracker(target_momentum=0.5, alpha_eta=1.0, alpha_bounds=(0.0, 2.0), alpha_update="absolute")
    tr.update_targets(torch.tensor([10.0, 6.0]), torch.tensor([0, 2]))
    t, _ = tr.update_targets(torch.tensor([30.0, 2.0]), torch.tensor([0, 2]))
    assert t[0] == 20.0 and t[2] == 4.0 and math.isnan(t[1])  # EMA: 0.5·10 + 0.5·30, 0.5·6 + 0.5·2
    # easy α: 0.5 + 1.0·(30 - 10) clipped to 2; hard α: 0.5 + 1.0·(6 - 2) clipped to 2
    assert tr.alpha.tolist() == [2.0, 0.5, 2.0]
    tr.update_targets(torch.tensor([0.0, 40.0]), torch.tensor([0, 2]))
    assert tr.alpha.tolist() == [0.0, 0.5, 0.0]  # big steps down clip at the lower bound


def test_state_dict_round_trip_through_a_file(tmp_path):
    tr = DifficultyTracker(history=4, alpha_eta=0.02, alpha_update="absolute")
    tr.assign(["a", "b", "c"], torch.tensor([1.0, 0.5, 0.0]))
    tr.assign(["a"], torch.tensor([0.25]))
    tr.update_targets(torch.tensor([10.0, 30.0]), torch.tensor([0, 1]))
    tr.update_targets(torch.tensor([20.0, 7.0]), torch.tensor([0, 2]))
    path = tmp_path / "tracker.pt"
    torch.save(tr.state_dict(), path)

    back = DifficultyTracker(history=4, alpha_eta=0.02, alpha_update="absolute")
    back.load_state_dict(torch.load(path, weights_only=True))
    assert "alpha_update" not in tr.state_dict()  # a setting from the config, not state
    assert torch.equal(back.targets.isnan(), tr.targets.isnan())
    assert back.targets.nan_to_num(-1).tolist() == tr.targets.nan_to_num(-1).tolist()
    assert back.alpha.tolist() == tr.alpha.tolist() and back.alpha.tolist() != [0.5, 0.5, 0.5]
    saved = back.state_dict()
    assert saved["bucket"] == {"a": HARD, "b": MEDIUM, "c": HARD}
    assert saved["history"] == {"a": [1.0, 0.25], "b": [0.5], "c": [0.0]}
    assert saved["last_batch_counts"].tolist() == tr.last_batch_counts.tolist() == [0, 0, 1]
    # both continue identically
    n, b = torch.tensor([12.0, 25.0, 3.0]), torch.tensor([0, 1, 2])
    for x, y in zip(back.update_targets(n, b), tr.update_targets(n, b)):
        assert x.tolist() == y.tolist()


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="medium_min"):
        DifficultyTracker(easy_min=0.2, medium_min=0.5)
    with pytest.raises(ValueError, match="alpha_init"):
        DifficultyTracker(alpha_init=3.0)
    with pytest.raises(ValueError, match="target_momentum"):
        DifficultyTracker(target_momentum=0.0)
    with pytest.raises(ValueError, match="alpha_update"):
        DifficultyTracker(alpha_update="rel")
    tr = DifficultyTracker()
    with pytest.raises(ValueError, match="2 prompt ids but 3"):
        tr.assign(["a", "b"], torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="buckets must be"):
        tr.update_targets(torch.tensor([1.0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="n_hwe has 2"):
        tr.update_targets(torch.tensor([1.0, 2.0]), torch.tensor([0]))


def test_old_checkpoint_without_alpha_update_loads(tmp_path):
    """A tracker state saved before alpha_update existed (same keys) loads into either mode."""
    old = {"targets": torch.tensor([20.0, float("nan"), 20.0]), "alpha": torch.tensor([0.6, 0.5, 0.4]),
           "last_batch_counts": torch.tensor([1, 0, 1]), "bucket": {"a": 0}, "history": {"a": [1.0]}}
    torch.save(old, tmp_path / "old.pt")
    for mode, want in (("relative", [0.625, 0.5, 0.375]), ("absolute", [1.1, 0.5, 0.0])):
        tr = DifficultyTracker(alpha_update=mode)
        tr.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
        assert tr.alpha.tolist() == pytest.approx([0.6, 0.5, 0.4])
        tr.update_targets(torch.tensor([30.0, 30.0]), torch.tensor([EASY, HARD]))
        assert tr.alpha.tolist() == pytest.approx(want)
