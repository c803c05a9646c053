"""The α controller (docs/algorithm.md "The α controller", corrected 2026-12-04): the tests that would have
caught the drift of the 2026-11-30 rule, and the log_ratio default's hand values.

The stationary process is the issue's: 3 buckets, 4-12 responses of each per batch, zero-inflated
Poisson N_HE, 60 steps. Each run is one `DifficultyTracker` fed the same calls the pipeline makes.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.core import EASY, HARD, MEDIUM, entropy_shaping_reward, reward_inversions, total_reward
from data_modules.difficulty import DifficultyTracker

STEPS = 60
SEEDS = 30


def simulate(tracker_kwargs: dict, rates, zero_prob, seed: int, steps: int = STEPS, change=None) -> torch.Tensor:
    """α [steps, 3] after each of `steps` batches of zero-inflated Poisson N_HE (rate λ_d, and an
    extra zero with probability `zero_prob`). `change(step, rates) -> rates` alters the process."""
    rng = np.random.default_rng(seed)
    tr = DifficultyTracker(**tracker_kwargs)
    out = []
    for step in range(steps):
        lam = rates if change is None else change(step, rates)
        sizes = rng.integers(4, 13, size=3)
        bucket = np.repeat(np.arange(3), sizes)
        n = rng.poisson(np.repeat(lam, sizes)) * (rng.random(bucket.size) >= zero_prob)
        tr.update_targets(torch.tensor(n, dtype=torch.float32), torch.tensor(bucket))
        out.append(tr.alpha.clone())
    return torch.stack(out)


def runs(tracker_kwargs: dict, rates, zero_prob=0.3, change=None, seeds=SEEDS) -> torch.Tensor:
    """α [seeds, steps, 3]."""
    return torch.stack([simulate(tracker_kwargs, rates, zero_prob, seed, change=change) for seed in range(seeds)])


def median_alpha(tracker_kwargs: dict, rates, zero_prob=0.3, change=None) -> torch.Tensor:
    """Median over seeds of the final α [3]."""
    return runs(tracker_kwargs, rates, zero_prob, change)[:, -1].median(dim=0).values


@settings(max_examples=10)
@given(
    rates=st.tuples(*[st.floats(0.2, 60.0)] * 3),
    zero_prob=st.floats(0.0, 0.5),
)
def test_default_controller_stays_at_alpha0_on_average_under_stationary_nhe(rates, zero_prob):
    """Property: a stationary zero-inflated Poisson N_HE process leaves α near α_0 on average
    (over 16 runs and the 50 steps after calibration). A drifting rule fails this at once.

    Up to half zeros: beyond, the batch mean is so noisy that Jensen's inequality
    (E ln(1 + m) < ln(1 + E m)) biases α_hard up by 0.07-0.1 at 60-70% zeros; a bias, constant
    in time, not a drift, and `target_momentum` removes it (docs/stages.md "The α controller and τ")."""
    alpha = runs({}, rates, zero_prob, seeds=16)[:, 10:]
    assert (alpha.mean(dim=(0, 1)) - 0.5).abs().max() <= 0.1, (rates, zero_prob, alpha.mean(dim=(0, 1)))


@pytest.mark.parametrize("rates", [(3.0, 3.0, 3.0), (1.0, 1.0, 1.0), (40.0, 25.0, 10.0)])
def test_must_hold_median_final_alpha_within_01_of_alpha0(rates):
    """The issue's check: `DifficultyTracker()`, 60 stationary steps, 30 seeds; the median final α
    of every bucket is within 0.1 of α_0 (the 2026-11-30 rule ended at 0.87 / 0.92 / 0.14)."""
    med = median_alpha({}, rates)
    assert (med - 0.5).abs().max() <= 0.1, med


def test_the_relative_rule_drifts_where_the_default_does_not():
    """The 2026-11-30 rule on the same stationary process: α_easy up, α_hard down (the ablation's failure)."""
    rates = (3.0, 3.0, 3.0)
    relative = median_alpha({"alpha_update": "relative"}, rates)
    assert relative[EASY] > 0.6 and relative[HARD] < 0.4, relative
    assert (median_alpha({}, rates) - 0.5).abs().max() <= 0.1


@pytest.mark.parametrize("rates", [(2.0, 2.0, 2.0), (30.0, 30.0, 30.0)])
def test_alpha_moves_the_right_way_when_nhe_changes(rates):
    """After calibration: easy tripling its N_HE raises α_easy; hard dividing it by three raises α_hard;
    by at least 0.1 at any response length (scale-free), and the untouched bucket stays put."""
    after = 20  # well past the K = 5 calibration batches

    def easy_x3(step, lam):
        return (lam[0] * 3, lam[1], lam[2]) if step >= after else lam

    def hard_div3(step, lam):
        return (lam[0], lam[1], lam[2] / 3) if step >= after else lam

    up = median_alpha({}, rates, change=easy_x3)
    assert up[EASY] >= 0.6 and abs(up[HARD] - 0.5) <= 0.1, up
    down = median_alpha({}, rates, change=hard_div3)
    assert down[HARD] >= 0.6 and abs(down[EASY] - 0.5) <= 0.1, down


def test_alpha_eases_when_easy_grows_terse_and_hard_explores():
    def reverse(step, lam):
        return (lam[0] / 3, lam[1], lam[2] * 3) if step >= 20 else lam

    med = median_alpha({}, (12.0, 12.0, 12.0), change=reverse)
    assert med[EASY] <= 0.4 and med[HARD] <= 0.4 and abs(med[MEDIUM] - 0.5) <= 0.1, med


def test_log_ratio_hand_values_calibration_and_skips():
    tr = DifficultyTracker(calibration_batches=2)
    assert (tr.alpha_update, tr.alpha_eta, tr.alpha_min_responses) == ("log_ratio", 0.5, 4)
    e4 = lambda *v: (torch.tensor(v, dtype=torch.float32), torch.full((len(v),), EASY))  # noqa: E731

    # batch 1: easy {2, 4, 6, 8} (mean 5) calibrates; α stays α_0
    t, a = tr.update_targets(*e4(2, 4, 6, 8))
    assert t[EASY] == 5.0 and a.tolist() == [0.5, 0.5, 0.5]
    assert tr.setpoint_batches.tolist() == [1, 0, 0] and tr.alpha.tolist() == [0.5, 0.5, 0.5]
    # a batch with 3 easy responses updates nothing (fewer than alpha_min_responses = 4)
    t, _ = tr.update_targets(*e4(100, 100, 100))
    assert t[EASY] == 5.0 and tr.setpoint_batches[EASY] == 1
    # batch 2: easy {10, 10, 10, 10, 10, 10}: calibration done, T* = (20 + 60) / 10 = 8 (response-weighted)
    t, a = tr.update_targets(*e4(10, 10, 10, 10, 10, 10))
    assert a[EASY] == 0.5 and tr.calibrated.tolist() == [True, False, False]
    assert float(tr.setpoint[EASY]) == pytest.approx(8.0)
    # α for the next batch: 0.5 + 0.5·ln((1 + 10)/(1 + 8))
    assert float(tr.alpha[EASY]) == pytest.approx(0.5 + 0.5 * math.log(11 / 9))
    # batch 3: T = 26 → α = 0.5 + 0.5·ln(27/9); the reward of batch 3 used batch 2's α
    _, a = tr.update_targets(*e4(26, 26, 26, 26))
    assert float(a[EASY]) == pytest.approx(0.5 + 0.5 * math.log(11 / 9))
    assert float(tr.alpha[EASY]) == pytest.approx(0.5 + 0.5 * math.log(3.0))
    # hard is mirrored: fewer HWE tokens than at calibration raise α_hard
    h = lambda *v: (torch.tensor(v, dtype=torch.float32), torch.full((len(v),), HARD))  # noqa: E731
    tr.update_targets(*h(9, 9, 9, 9))
    tr.update_targets(*h(9, 9, 9, 9))
    tr.update_targets(*h(1, 1, 1, 1))
    assert float(tr.alpha[HARD]) == pytest.approx(0.5 - 0.5 * math.log(2 / 10))
    m = tr.metrics()
    assert m["bucket/easy/calibration"] == 2.0 and m["bucket/easy/setpoint"] == pytest.approx(8.0)
    assert m["bucket/medium/calibration"] == 0.0 and "bucket/medium/setpoint" not in m


def test_released_form_hand_values():
    """The authors' code: the target is round() of the same batch's mean, so α barely moves."""
    tr = DifficultyTracker(alpha_update="released")
    assert (tr.alpha_eta, tr.alpha_min_responses) == (0.05, 1)
    tr.update_targets(torch.tensor([3.0, 4.0, 10.0, 1.0]), torch.tensor([EASY, EASY, MEDIUM, HARD]))
    # easy mean 3.5 → round 4 (half to even) → -0.5; medium 10 - 10 = 0; hard 1 - 1 = 0
    assert tr.alpha.tolist() == pytest.approx([0.5 - 0.05 * 0.5, 0.5, 0.5])
    tr.update_targets(torch.tensor([2.0, 3.0]), torch.tensor([HARD, HARD]))  # hard mean 2.5 → round 2: +0.5, sign −
    assert tr.alpha.tolist() == pytest.approx([0.475, 0.5, 0.5 - 0.05 * 0.5])
    assert tr.metrics() == {}


def test_calibration_and_alpha_survive_a_checkpoint(tmp_path):
    tr = DifficultyTracker(calibration_batches=2)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 20, (12,), generator=gen).float(), torch.arange(12) % 3) for _ in range(5)]
    for n, b in batches[:3]:
        tr.update_targets(n, b)
    torch.save(tr.state_dict(), tmp_path / "t.pt")
    back = DifficultyTracker(calibration_batches=2)
    back.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    for key in ("setpoint_sum", "setpoint_count", "setpoint_batches", "alpha", "targets"):
        assert torch.equal(getattr(back, key), getattr(tr, key)), key
    assert back.alpha.tolist() != [0.5, 0.5, 0.5]
    for n, b in batches[3:]:
        for x, y in zip(back.update_targets(n, b), tr.update_targets(n, b)):
            assert torch.equal(x, y)
    assert torch.equal(back.alpha, tr.alpha)


def test_bad_controller_settings_fail_at_construction():
    with pytest.raises(ValueError, match="alpha_update must be one of"):
        DifficultyTracker(alpha_update="proportional")
    with pytest.raises(ValueError, match="calibration_batches"):
        DifficultyTracker(calibration_batches=0)
    with pytest.raises(ValueError, match="alpha_min_responses"):
        DifficultyTracker(alpha_min_responses=0)
    with pytest.raises(ValueError, match="alpha_eta"):
        DifficultyTracker(alpha_eta=-0.1)


# ----------------------------------------------------------------- reward inversions
@given(
    alpha=st.floats(0.0, 0.55),
    target=st.floats(0.0, 80.0),
    n_hwe=st.lists(st.integers(0, 200), min_size=8, max_size=8),
    correct=st.lists(st.booleans(), min_size=8, max_size=8),
    bucket=st.sampled_from([EASY, MEDIUM]),
)
def test_no_inversions_for_easy_and_medium_while_alpha_is_at_most_055(alpha, target, n_hwe, correct, bucket):
    """Right ≥ 1 − α and wrong ≤ 0.8·α (medium) or 0.6·α (easy): no inversion while α ≤ 0.55."""
    n = torch.tensor(n_hwe, dtype=torch.float32)
    ok = torch.tensor(correct)
    b = torch.full((8,), bucket)
    r = total_reward(ok.float(), entropy_shaping_reward(n, target, b, ok, alpha))
    inverted, mixed = reward_inversions(r, ok, torch.arange(2).repeat_interleave(4), b)
    assert inverted.sum() == 0
    assert mixed[bucket] == sum(0 < sum(correct[k : k + 4]) < 4 for k in (0, 4))


def test_inversions_hand_worked():
    # group 0 (easy, α = 2): a right answer with N_HE far over T pays the whole cap −2, the wrong one gains
    # σ(·)·2·0.6 > 0 ≥ 1 − 2: inverted. group 1 (hard): right 1.0 > wrong 0.0: not. group 2: all right.
    reward = torch.tensor([-1.0, 0.3, 1.0, 0.0, 1.0, 1.0])
    correct = torch.tensor([True, False, True, False, True, True])
    groups = torch.tensor([7, 7, 3, 3, 5, 5])  # arbitrary ids
    bucket = torch.tensor([EASY, EASY, HARD, HARD, EASY, EASY])
    inverted, mixed = reward_inversions(reward, correct, groups, bucket)
    assert inverted.tolist() == [1, 0, 0] and mixed.tolist() == [1, 0, 1]
    # ties count: a wrong answer's reward equal to a right one's is an inversion
    inverted, _ = reward_inversions(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), torch.zeros(2), torch.tensor([1, 1]))
    assert inverted.tolist() == [0, 1, 0]
    empty = reward_inversions(torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert [x.tolist() for x in empty] == [[0, 0, 0], [0, 0, 0]]
