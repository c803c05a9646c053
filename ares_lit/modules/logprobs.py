"""Per-token log-probs (and exact entropy) of response tokens, without full-batch fp32 logits.

The decoder runs once; the LM head, the fp32 log-softmax and the entropy run over chunks of
response positions. With gradients, each chunk runs under activation checkpointing, so backward
keeps only the hidden states and recomputes one chunk of logits at a time: peak memory is
O(chunk x V) in fp32, never O(B x T x V).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ares_lit.core.entropy import token_entropy

__all__ = ["chunk_logprobs", "position_ids_from_mask", "response_logprobs", "tokens_per_chunk"]

DEFAULT_LOGIT_BUDGET_BYTES = 256 * 1024 * 1024


def tokens_per_chunk(vocab: int, budget_bytes: int = DEFAULT_LOGIT_BUDGET_BYTES) -> int:
    """Rows of fp32 logits per chunk: about three (rows, V) fp32 buffers live at once."""
    return max(1, budget_bytes // (3 * 4 * vocab))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions for left-padded prompts: count real tokens only (0 on padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    budget_bytes: int = DEFAULT_LOGIT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `response_len` tokens of each row under softmax(logits / T).

    Args:
        model: a Hugging Face causal LM (`get_decoder()` and `get_output_embeddings()`).
        input_ids: [B, P + R] left-padded prompts followed by right-padded responses.
        attention_mask: [B, P + R].
        response_len: R.
        temperature: the sampling temperature (the policy being optimised is softmax(z / T)).
        with_entropy: also return the exact full-vocabulary token entropy (no gradient).

    Returns:
        (log_probs [B, R] fp32, entropy [B, R] fp32 or None). Values at padding are meaningless
        and must be masked by the caller.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    total = input_ids.shape[1]
    # The token at position p is predicted by the hidden state at p - 1.
    h = hidden[:, total - response_len - 1 : total - 1]
    targets = input_ids[:, total - response_len :]
    bsz = h.shape[0]
    flat_h = h.reshape(bsz * response_len, -1)
    flat_t = targets.reshape(-1)
    rows = tokens_per_chunk(head.weight.shape[0], budget_bytes)
    grad = torch.is_grad_enabled() and flat_h.requires_grad
    logps, ents = [], []
    for start in range(0, flat_h.shape[0], rows):
        hc, tc = flat_h[start : start + rows], flat_t[start : start + rows]
        if grad:
            logps.append(checkpoint(chunk_logprobs, head, hc, tc, temperature, use_reentrant=False))
            if with_entropy:
                with torch.no_grad():
                    ents.append(token_entropy(head(hc.detach()), temperature))
            continue
        # No gradient: one fp32 log-softmax per chunk gives both the log-probs and the exact entropy.
        logits = head(hc).float()
        if temperature != 1.0:
            logits = logits / temperature
        lsm = logits.log_softmax(-1)
        del logits
        logps.append(lsm.gather(-1, tc.unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            ents.append(-(lsm.exp() * lsm).sum(-1))
    log_probs = torch.cat(logps).reshape(bsz, response_len)
    entropy = torch.cat(ents).reshape(bsz, response_len) if with_entropy else None
    return log_probs, entropy
