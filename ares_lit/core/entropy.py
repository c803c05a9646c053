"""Token entropy and window entropy (docs/algorithm.md "Token entropy", "Window entropy").

Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import torch

__all__ = ["token_entropy", "entropy_from_log_probs", "window_entropy", "entropy_chunk_rows"]

# Default budget for the fp32 scratch space of `token_entropy`: never more than this many bytes,
# and never more than a quarter of the input itself.
DEFAULT_ENTROPY_BUDGET_BYTES = 256 * 1024 * 1024
_SCRATCH_BUFFERS = 2  # fp32 (rows, V) buffers alive at once inside one chunk


def entropy_chunk_rows(n_rows: int, vocab: int, input_bytes: int, budget_bytes: int | None = None) -> int:
    """How many rows of logits one chunk of `token_entropy` may hold.

    The scratch space of a chunk is `_SCRATCH_BUFFERS` fp32 arrays of shape (rows, V). The budget is
    `budget_bytes` if given, else min(256 MiB, input_bytes / 4), so that peak extra memory stays
    well below the size of the input. At least one row is always processed.
    """
    if budget_bytes is None:
        budget_bytes = min(DEFAULT_ENTROPY_BUDGET_BYTES, max(input_bytes // 4, 1))
    per_row = _SCRATCH_BUFFERS * 4 * max(vocab, 1)
    return int(max(1, min(n_rows, budget_bytes // per_row)))


def _entropy_rows(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Differentiable entropy of softmax(z / T) per row of a 2-D chunk, in fp32."""
    x = z.float() / temperature
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    p = logp.exp()
    # 0 * (-inf) = nan for masked-out vocabulary entries: they contribute nothing.
    return -torch.nan_to_num(p * logp, nan=0.0).sum(dim=-1)


def token_entropy(
    logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    budget_bytes: int | None = None,
) -> torch.Tensor:
    """Exact full-vocabulary entropy H_t = -sum_v p_v log p_v of p = softmax(logits / T).

    docs/algorithm.md "Token entropy". Accumulates in fp32 whatever the input dtype (bf16 included) and
    returns fp32 of shape `logits.shape[:-1]`.

    The work is chunked over rows under a memory budget (see `entropy_chunk_rows`), so that peak
    extra memory is O(chunk x V) and well below the size of the input, never O(B x L x V) in fp32.
    When gradients are needed the out-of-place path is used; otherwise scratch buffers are reused.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    lead_shape = logits.shape[:-1]
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    n_rows = flat.shape[0]
    out = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return out.reshape(lead_shape)
    rows = entropy_chunk_rows(n_rows, vocab, flat.numel() * flat.element_size(), budget_bytes)
    if torch.is_grad_enabled() and logits.requires_grad:
        parts = [_entropy_rows(flat[i : i + rows], temperature) for i in range(0, n_rows, rows)]
        return torch.cat(parts).reshape(lead_shape)
    # No-grad path: two fp32 scratch buffers allocated once and reused by every chunk, so peak
    # memory is exactly the budget and the allocator sees no churn.
    # H = log S - sum(e * x) / S with x = z/T - max(z/T), e = exp(x), S = sum(e): the same
    # quantity as verl's logsumexp(z) - sum(softmax(z) * z).
    x_buf = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
    e_buf = torch.empty_like(x_buf)
    with torch.no_grad():
        for start in range(0, n_rows, rows):
            chunk = flat[start : start + rows]
            x = x_buf[: chunk.shape[0]]
            e = e_buf[: chunk.shape[0]]
            x.copy_(chunk)
            if temperature != 1.0:
                x.div_(temperature)
            m = x.amax(dim=-1, keepdim=True)
            # A row of -inf (fully masked vocabulary) would give nan; its entropy is taken as 0.
            x.sub_(torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
            torch.exp(x, out=e)
            total = e.sum(dim=-1)
            e.mul_(x).nan_to_num_(nan=0.0)  # 0 * (-inf) for masked vocabulary entries
            out[start : start + chunk.shape[0]] = total.log() - e.sum(dim=-1) / total
    return out.reshape(lead_shape)


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """H_t = -sum_v p_v log p_v from a log-softmax already at hand (docs/algorithm.md "Token entropy").

    For callers that compute log p = log_softmax(z / T) anyway (the trainer's log-prob pass takes
    the sampled tokens' log-probs from it): no second pass over the logits. Pass fp32 for an fp32
    entropy, and chunk over rows as for `token_entropy`. Masked vocabulary entries (log p = -inf)
    contribute 0 (0 · log 0 = 0). Returns `log_probs.shape[:-1]`.
    """
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)


def window_entropy(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    window: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window entropy H̄_{t:w} = (1/w) sum_{tau=t}^{t+w-1} H_tau (docs/algorithm.md "Window entropy").

    Args:
        entropy: [B, T] token entropies.
        mask: [B, T] response mask (bool or 0/1).
        window: w >= 1.

    Returns:
        (win, valid): `win` [B, T] fp32, and `valid` [B, T] bool, True only where all w tokens
        t..t+w-1 exist and are response tokens. `win` is 0 where not valid.

    Each window is summed directly over its w values (an unfold, not a running cumsum), so it is
    exact for 16k-token responses: a float32 prefix sum would drift by ~1e-3 there.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    if entropy.dim() != 2 or entropy.shape != mask.shape:
        raise ValueError(f"entropy and mask must both be [B, T]; got {tuple(entropy.shape)} and {tuple(mask.shape)}")
    bsz, length = entropy.shape
    m = mask.bool()
    win = torch.zeros(bsz, length, dtype=torch.float32, device=entropy.device)
    valid = torch.zeros(bsz, length, dtype=torch.bool, device=entropy.device)
    if length < window:
        return win, valid
    h = torch.where(m, entropy.float(), torch.zeros((), dtype=torch.float32, device=entropy.device))
    n = length - window + 1
    win[:, :n] = h.unfold(1, window, 1).sum(dim=-1) / window
    valid[:, :n] = m.unfold(1, window, 1).all(dim=-1)
    win.masked_fill_(~valid, 0.0)
    return win, valid
