"""Train–inference mismatch correction (core/correction.py): truncated IS and sequence masking,
checked on hand-computed values; an engine equal to the trainer leaves every loss unchanged."""

import math

import pytest
import torch

from ares_lit.core import get_policy_loss
from ares_lit.core.correction import rollout_correction, rollout_correction_weights

# Row 0: log-ratios (old - engine) 0, 0.5, -0.4 and a padded token; row 1: 1.0, 0, 0.2, 0.
OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
ENGINE = torch.tensor([[-1.0, -2.5, -0.1, -4.0], [-2.0, -1.0, -1.2, -1.0]])
MASK = torch.tensor([[True, True, True, False], [True, True, True, True]])


def test_token_tis_weights_match_a_hand_computation():
    w, truncated = rollout_correction_weights(OLD, ENGINE, MASK, "token_tis", cap=2.0)
    e = math.exp
    expect = torch.tensor([[1.0, e(0.5), e(-0.4), 1.0], [2.0, 1.0, e(0.2), 1.0]])  # e^1 = 2.718 is cut to C = 2
    torch.testing.assert_close(w, expect, atol=1e-6, rtol=0)
    assert truncated.tolist() == [[False] * 4, [True, False, False, False]]
    _, metrics = rollout_correction(OLD, ENGINE, MASK, "token_tis", 2.0)
    assert float(metrics["tis_weight_mean"]) == pytest.approx((1 + e(0.5) + e(-0.4) + 2 + 1 + e(0.2) + 1) / 7, rel=1e-6)
    assert float(metrics["tis_truncated_frac"]) == pytest.approx(1 / 7)
    # a larger cap truncates nothing
    w3, t3 = rollout_correction_weights(OLD, ENGINE, MASK, "token_tis", cap=3.0)
    assert float(w3[1, 0]) == pytest.approx(e(1.0), rel=1e-6) and not t3.any()


def test_seq_mask_drops_whole_sequences_whose_ratio_exceeds_the_cap():
    # Π_t ρ_t: row 0 exp(0.1) ≤ 2 is kept with weight 1; row 1 exp(1.2) = 3.3 > 2 is masked out.
    w, truncated = rollout_correction_weights(OLD, ENGINE, MASK, "seq_mask", cap=2.0)
    assert w.tolist() == [[1.0] * 4, [0.0] * 4]
    assert truncated.tolist() == [[False] * 4, [True] * 4]
    _, metrics = rollout_correction(OLD, ENGINE, MASK, "seq_mask", 2.0)
    assert float(metrics["tis_weight_mean"]) == pytest.approx(3 / 7)
    assert float(metrics["tis_truncated_frac"]) == pytest.approx(4 / 7)
    w4, _ = rollout_correction_weights(OLD, ENGINE, MASK, "seq_mask", cap=4.0)  # exp(1.2) < 4: both kept
    assert bool((w4 == 1).all())


@pytest.mark.parametrize("name", ["vanilla", "gspo", "cispo"])
@pytest.mark.parametrize("mode", ["token_tis", "seq_mask"])
def test_engine_equal_to_trainer_leaves_the_loss_unchanged(name, mode):
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) * 3
    logp = (old + 0.1 * torch.randn(3, 5, generator=g)).requires_grad_()
    adv, mask = torch.randn(3, generator=g), torch.rand(3, 5, generator=g) > 0.3
    w, truncated = rollout_correction_weights(old, old.clone(), mask, mode, 2.0)
    assert bool((w == 1).all()) and not truncated.any()
    base, _ = get_policy_loss(name)(logp, old, adv, mask)
    corrected, _ = get_policy_loss(name)(logp, old, adv, mask, weights=w)
    assert abs(float(corrected.detach()) - float(base.detach())) <= 1e-7
    # and a weight scales its token's loss: halving every weight halves the loss
    half, _ = get_policy_loss(name)(logp, old, adv, mask, weights=w * 0.5)
    assert float(half.detach()) == pytest.approx(0.5 * float(base.detach()), rel=1e-6, abs=1e-9)


def test_unknown_mode_fails():
    with pytest.raises(ValueError, match="unknown rollout correction 'icepop'"):
        rollout_correction_weights(OLD, ENGINE, MASK, "icepop")
