"""Length controls as reward terms (issue #23): DAPO's soft overlong punishment, Kimi k1.5's group
length reward and ShorterBetter's sample-optimal-length reward, on hand-computed groups, against
verl 0.9.1's DAPO reward manager, and as hypothesis properties."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core import kimi_length_reward, overlong_penalty, sample_optimal_length, shorter_better_reward


def t(*xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


# ------------------------------------------------------------------ DAPO overlong punishment
def test_overlong_hand_computed():
    # L_max = 20, L_c = 8: free up to 12, linear to -1 at 20, -1 beyond (the paper's eq. 13)
    lengths = t(0, 12, 13, 16, 19, 20, 21, 40)
    expected = t(0, 0, -1 / 8, -0.5, -7 / 8, -1, -1, -1)
    torch.testing.assert_close(overlong_penalty(lengths, 20, 8), expected)
    torch.testing.assert_close(overlong_penalty(lengths, 20, 8, penalty_factor=0.5), expected * 0.5)
    torch.testing.assert_close(overlong_penalty(t(5, 6), 6, 6), t(-5 / 6, -1))  # L_c = L_max: from L = 0
    assert overlong_penalty(torch.zeros(0), 20, 8).shape == (0,)
    for bad in (0, 21):
        with pytest.raises(ValueError, match="buffer_len"):
            overlong_penalty(lengths, 20, bad)


@pytest.mark.parametrize("buffer_len,penalty_factor", [(8, 1.0), (5, 0.7), (20, 1.0)])
def test_overlong_matches_verl_dapo_reward_manager(buffer_len, penalty_factor):
    """verl 0.9.1 `DAPORewardManager` (overlong_buffer enable/len/penalty_factor) with a zero score:
    its reward IS the overlong term. Every length verl can see (1..max_resp_len)."""
    pytest.importorskip("verl")
    from verl import DataProto
    from verl.workers.reward_manager.dapo import DAPORewardManager

    max_len, prompt_len = 20, 3
    lengths = torch.arange(1, max_len + 1)
    n = lengths.numel()
    attention = torch.cat([torch.ones(n, prompt_len), (torch.arange(max_len)[None] < lengths[:, None]).float()], 1)
    data = DataProto.from_dict(
        tensors={"prompts": torch.ones(n, prompt_len, dtype=torch.long), "responses": torch.ones(n, max_len, dtype=torch.long),
                 "attention_mask": attention.long()},
        non_tensors={"reward_model": np.array([{"ground_truth": "1"}] * n, dtype=object), "data_source": np.array(["x"] * n, dtype=object)},
    )  # fmt: skip
    tokenizer = SimpleNamespace(eos_token="</s>", decode=lambda ids, skip_special_tokens=True: "")
    cfg = SimpleNamespace(enable=True, len=buffer_len, penalty_factor=penalty_factor, log=True)
    manager = DAPORewardManager(tokenizer, 0, compute_score=lambda **kw: 0.0, max_resp_len=max_len, overlong_buffer_cfg=cfg)
    theirs = manager(data, return_dict=True)["reward_tensor"].sum(-1)
    torch.testing.assert_close(overlong_penalty(lengths, max_len, buffer_len, penalty_factor), theirs)


@given(st.integers(1, 400), st.data())
def test_overlong_is_zero_below_the_buffer_and_non_increasing(max_length, data):
    buffer_len = data.draw(st.integers(1, max_length))
    p = data.draw(st.floats(0, 3))
    lengths = torch.arange(0, 2 * max_length + 2)
    r = overlong_penalty(lengths, max_length, buffer_len, p)
    assert (r[: max_length - buffer_len + 1] == 0).all()
    assert (r[1:] <= r[:-1]).all()
    assert (r >= -p - 1e-6).all() and (r[max_length:] == -p).all()


# ------------------------------------------------------------------ Kimi k1.5
def test_kimi_hand_computed():
    # group 7: lengths 10, 16, 18 (min 10, max 18): λ = 0.5, -0.25, -0.5; group 3: 20, 25 both wrong;
    # group 5: equal lengths, λ = 0
    lengths = t(10, 16, 18, 20, 25, 9, 9)
    correct = t(1, 0, 1, 0, 0, 1, 0, dtype=torch.bool)
    groups = t(7, 7, 7, 3, 3, 5, 5, dtype=torch.long)
    torch.testing.assert_close(kimi_length_reward(lengths, correct, groups), t(0.5, -0.25, -0.5, 0, -0.5, 0, 0))
    torch.testing.assert_close(kimi_length_reward(lengths, correct, groups, weight=0.2), t(0.1, -0.05, -0.1, 0, -0.1, 0, 0))
    assert kimi_length_reward(torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)).shape == (0,)


groups_st = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans()), min_size=1, max_size=24)


def _split(rows):
    g, length, c = zip(*rows)
    return t(*length), t(*c, dtype=torch.bool), t(*g, dtype=torch.long)


@given(groups_st, st.floats(0.01, 4))
def test_kimi_lambda_range_and_the_shortest_correct_answer(rows, w):
    lengths, correct, groups = _split(rows)
    r = kimi_length_reward(lengths, correct, groups, weight=w)
    assert (r.abs() <= 0.5 * w + 1e-6).all()
    assert (r[~correct] <= 0).all()  # a wrong answer is never rewarded for being short
    for g in groups.unique():
        m = groups == g
        lo, hi = lengths[m].min(), lengths[m].max()
        if lo == hi:
            assert (r[m] == 0).all()
            continue
        shortest_right = m & correct & (lengths == lo)
        assert torch.allclose(r[shortest_right], torch.tensor(0.5 * w))
        assert torch.allclose(r[m & (lengths == hi)], torch.tensor(-0.5 * w))


# ------------------------------------------------------------------ ShorterBetter
def test_shorter_better_hand_computed():
    # group 0: correct lengths 30 and 50 -> SOL 30; group 1: nothing correct -> SOL = mean(100, 200) = 150
    lengths = t(30, 50, 10, 100, 200)
    correct = t(1, 1, 0, 0, 0, dtype=torch.bool)
    groups = t(0, 0, 0, 1, 1, dtype=torch.long)
    torch.testing.assert_close(sample_optimal_length(lengths, correct, groups), t(30, 30, 30, 150, 150))
    # α = 2, β = 0.001 (the authors' release)
    torch.testing.assert_close(shorter_better_reward(lengths, correct, groups), t(2.0, 1.98, -0.02, -0.05, -0.05))
    torch.testing.assert_close(shorter_better_reward(lengths, correct, groups, alpha=1.0, beta=0.01), t(1.0, 0.8, -0.2, -0.5, -0.5))


@given(groups_st, st.floats(0.1, 4), st.floats(1e-4, 0.1))
def test_shorter_better_is_maximal_at_the_shortest_correct_length(rows, alpha, beta):
    lengths, correct, groups = _split(rows)
    r = shorter_better_reward(lengths, correct, groups, alpha, beta)
    sol = sample_optimal_length(lengths, correct, groups)
    for g in groups.unique():
        m = groups == g
        if not correct[m].any():
            torch.testing.assert_close(sol[m], lengths[m].mean().expand(int(m.sum())))
            continue
        best = m & correct & (lengths == lengths[m & correct].min())
        assert torch.allclose(r[best], torch.tensor(alpha))  # the group's best reward: α at L = SOL
        assert (r[m] <= alpha + 1e-6).all()
        right = m & correct  # every right answer is >= SOL long: its reward falls with its length
        order = lengths[right].argsort()
        assert (r[right][order].diff() <= 1e-6).all()
