"""Token entropy and window entropy (docs/algorithm.md "Token entropy", "Window entropy")."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.entropy import entropy_chunk_rows, entropy_from_log_probs, token_entropy, window_entropy


def reference_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Independent reference in fp64: -sum p log p with p = softmax(z / T)."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def test_matches_reference_fp32():
    x = torch.randn(4, 7, 301) * 3
    h = token_entropy(x)
    assert h.shape == (4, 7) and h.dtype == torch.float32
    torch.testing.assert_close(h.double(), reference_entropy(x), atol=1e-5, rtol=1e-5)


def test_bf16_input_accumulates_in_fp32():
    x = (torch.randn(16, 5000) * 4).to(torch.bfloat16)
    h = token_entropy(x)
    assert h.dtype == torch.float32
    # Same values as the fp64 entropy of the (bf16-rounded) logits: no bf16 accumulation error.
    torch.testing.assert_close(h.double(), reference_entropy(x.float()), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_temperature(temperature):
    x = torch.randn(3, 50)
    torch.testing.assert_close(token_entropy(x, temperature).double(), reference_entropy(x, temperature), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(x, 0.0)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_entropy_from_log_probs_matches_token_entropy(temperature):
    x = torch.randn(4, 9, 301) * 3
    h = entropy_from_log_probs((x / temperature).log_softmax(-1))
    assert h.shape == (4, 9) and h.dtype == torch.float32
    torch.testing.assert_close(h.double(), reference_entropy(x, temperature), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, token_entropy(x, temperature), atol=1e-5, rtol=1e-5)


def test_entropy_from_log_probs_masked_vocabulary_adds_nothing():
    x = torch.randn(3, 40)
    banned = x.clone()
    banned[:, 5:9] = float("-inf")  # e.g. a VL model's image placeholders, never sampled
    h = entropy_from_log_probs(banned.log_softmax(-1))
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.double(), reference_entropy(torch.cat([x[:, :5], x[:, 9:]], -1)), atol=1e-5, rtol=1e-5)


def test_chunking_gives_identical_results():
    x = torch.randn(37, 211)
    whole = token_entropy(x, budget_bytes=1 << 40)
    one_row_chunks = token_entropy(x, budget_bytes=1)
    torch.testing.assert_close(whole, one_row_chunks, atol=0, rtol=0)


def test_does_not_modify_fp32_input():
    x = torch.randn(5, 64)
    before = x.clone()
    token_entropy(x, temperature=0.7)
    assert torch.equal(x, before)


def test_chunk_rows_respects_budget():
    vocab = 151_936
    rows = entropy_chunk_rows(8 * 4096, vocab, input_bytes=8 * 4096 * vocab * 2)
    assert 2 * 4 * vocab * rows <= 256 * 1024 * 1024  # two fp32 scratch buffers within 256 MiB
    assert rows >= 1
    # A small input gets a budget of a quarter of itself, so extra memory stays below the input.
    small = entropy_chunk_rows(64, 1000, input_bytes=64 * 1000 * 2)
    assert 2 * 4 * 1000 * small <= 64 * 1000 * 2 // 4 + 2 * 4 * 1000
    assert entropy_chunk_rows(3, 10, input_bytes=10, budget_bytes=1) == 1


def test_gradient_path_matches_autograd_reference():
    x = torch.randn(6, 40, requires_grad=True)
    token_entropy(x, budget_bytes=1).sum().backward()
    g = x.grad.clone()
    x.grad = None
    reference_entropy(x).sum().backward()
    torch.testing.assert_close(g.double(), x.grad.double(), atol=1e-5, rtol=1e-4)


def test_masked_vocabulary_entries():
    x = torch.full((2, 8), -math.inf)
    x[0, 3] = 1.0  # one-hot
    x[1, :4] = 0.0  # uniform over 4
    h = token_entropy(x)
    torch.testing.assert_close(h, torch.tensor([0.0, math.log(4)]), atol=1e-6, rtol=0)


@given(st.integers(2, 3000), st.integers(0, 2999), st.floats(-50, 50))
def test_one_hot_has_zero_entropy(vocab, idx, offset):
    x = torch.full((1, vocab), offset)
    x[0, idx % vocab] = offset + 1e4
    assert abs(float(token_entropy(x))) < 1e-5


@given(st.integers(1, 5000), st.floats(-1e3, 1e3), st.sampled_from([torch.float32, torch.bfloat16]))
def test_uniform_has_log_v_entropy(vocab, value, dtype):
    x = torch.full((2, vocab), value).to(dtype)
    torch.testing.assert_close(token_entropy(x), torch.full((2,), math.log(vocab)), atol=1e-4, rtol=1e-5)


def test_peak_memory_well_below_input():
    """A 4096 x 32000 bf16 input (250 MiB): unchunked fp32 work would need >= 1 GiB extra."""
    code = textwrap.dedent(
        """
        import resource, torch
        from ares_lit.core.entropy import token_entropy
        torch.set_num_threads(2)
        x = torch.empty(4096, 32000, dtype=torch.bfloat16).normal_()
        token_entropy(x[:8])  # warm up allocator and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        h = token_entropy(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(after - before, x.numel() * x.element_size(), float(h.mean()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    extra, input_bytes, mean_h = int(out[0]), int(out[1]), float(out[2])
    assert extra < input_bytes / 2, f"peak extra {extra / 2**20:.0f} MiB vs input {input_bytes / 2**20:.0f} MiB"
    assert 9.0 < mean_h < math.log(32000)  # the computation really happened


# ---------------------------------------------------------------- window entropy


def test_window_hand_worked():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    win, valid = window_entropy(h, mask, window=2)
    assert valid.tolist() == [[True, True, True, True, False, False]]
    torch.testing.assert_close(win, torch.tensor([[1.5, 2.5, 3.5, 4.5, 0.0, 0.0]]))
    win4, valid4 = window_entropy(h, mask, window=4)
    assert valid4.tolist() == [[True, True, False, False, False, False]]
    torch.testing.assert_close(win4[0, :2], torch.tensor([2.5, 3.5]))


def test_window_requires_all_tokens_be_response():
    h = torch.ones(1, 6)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1]])  # a hole at 3 (e.g. a masked tool token)
    _, valid = window_entropy(h, mask, window=2)
    assert valid.tolist() == [[False, True, False, False, True, False]]


def test_window_longer_than_sequence():
    win, valid = window_entropy(torch.ones(2, 3), torch.ones(2, 3), window=4)
    assert not valid.any() and not win.any()
    with pytest.raises(ValueError, match="window"):
        window_entropy(torch.ones(1, 3), torch.ones(1, 3), window=0)


@given(st.integers(1, 8), st.integers(1, 40), st.floats(0, 12), st.integers(0, 5))
def test_window_of_constant_is_constant(window, length, value, pad):
    h = torch.full((2, length + pad), value)
    mask = torch.zeros(2, length + pad, dtype=torch.bool)
    mask[:, :length] = True
    win, valid = window_entropy(h, mask, window)
    assert int(valid[0].sum()) == max(0, length - window + 1)
    torch.testing.assert_close(win[valid], torch.full((int(valid.sum()),), value), atol=1e-5, rtol=1e-6)


@given(st.integers(1, 6), st.lists(st.booleans(), min_size=1, max_size=30))
def test_window_ignores_values_outside_mask(window, mask_list):
    mask = torch.tensor([mask_list])
    a = torch.rand(1, len(mask_list))
    b = torch.where(mask, a, torch.full_like(a, 1e6))  # garbage where not a response token
    wa, va = window_entropy(a, mask, window)
    wb, vb = window_entropy(b, mask, window)
    assert torch.equal(va, vb) and torch.equal(wa, wb)


def test_window_exact_on_16k_tokens():
    """A float32 running sum (cumsum) drifts by ~1e-3 at 16k tokens; windows must stay exact."""
    g = torch.Generator().manual_seed(1)
    h = torch.rand(2, 16384, generator=g, dtype=torch.float64) * 10
    win, valid = window_entropy(h.float(), torch.ones(2, 16384, dtype=torch.bool), window=8)
    ref = h.unfold(1, 8, 1).mean(-1)
    err = (win[:, : ref.shape[1]].double() - ref).abs().max().item()
    assert err < 5e-6, err
    assert valid[:, : ref.shape[1]].all() and not valid[:, ref.shape[1] :].any()
