"""Per-token log-probs (and exact entropy) of response tokens, without full-batch fp32 logits.

The decoder runs once; the LM head, the fp32 log-softmax and the entropy run over chunks of
response positions. With gradients, each chunk runs under activation checkpointing, so backward
keeps only the hidden states and recomputes one chunk of logits at a time: peak memory is
O(chunk x V) in fp32, never O(B x T x V). A micro-batch whose response positions fit in one chunk
skips the checkpoint (same peak, no second LM-head forward).

The exact entropy comes from the same fp32 log-softmax as the log-probs, chunk by chunk: without
gradient for scoring, the HWE statistics and the forking-token mask; with gradient
(`entropy_grad=True`) for an entropy bonus in the loss, through `_ChunkEntropy`, whose backward
needs only the chunk's log-softmax that the log-prob's backward keeps anyway (no extra forward,
no extra (rows, V) buffer in the graph).

Vision-language policies (Qwen2.5-VL): `decoder_hidden` runs the multimodal base model with the
prompt's `pixel_values` / `image_grid_thw` and 3-D M-RoPE positions from the model's own
`get_rope_index` (left padding skipped), the same positions HF `generate` and vLLM use, so the
trainer's log-probs of a sampled response match the engine's.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ares_lit.core.entropy import entropy_from_log_probs

__all__ = [
    "banned_token_ids",
    "chunk_logprobs", "chunk_logprobs_entropy", "decoder_hidden", "position_ids_from_mask", "response_logprobs",
    "tokens_per_chunk"]

DEFAULT_LOGIT_BUDGET_BYTES = 256 * 1024 * 1024


def tokens_per_chunk(vocab: int, budget_bytes: int = DEFAULT_LOGIT_BUDGET_BYTES) -> int:
    """Rows of fp32 logits per chunk: about three (rows, V) fp32 buffers live at once."""
    return max(1, budget_bytes // (3 * 4 * vocab))


def _vocab_rows(head: torch.nn.Module) -> int:
    """Output rows of the LM head, also when ZeRO-3 has partitioned its weight (shape [0], real ds_shape)."""
    return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions for left-padded prompts: count real tokens only (0 on padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def decoder_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    multimodal: dict[str, torch.Tensor] | None = None,
    vision_always: bool = False,
) -> torch.Tensor:
    """Last hidden states [B, L, D] of the decoder, before the LM head.

    Args:
        model: a Hugging Face causal LM, or a Qwen2-VL-style model (config has a vision_config).
        multimodal: {"pixel_values", "image_grid_thw"} of the batch's images, in row order; None
            for text. A VL model always gets 3-D positions, with or without images.
        vision_always: a VL model runs its vision tower even on a text-only batch (on one blank
            4-patch image, added with weight 0). With several ranks under ZeRO-3 the tower's
            parameter gathers are collectives, so every rank must enter it in every forward.
    """
    from ares_lit.vision import is_vision_language, mrope_position_ids

    if is_vision_language(model.config):
        mm = multimodal or {}
        grid = mm.get("image_grid_thw")
        pixels = mm.get("pixel_values")
        if pixels is not None:
            pixels = pixels.to(device=input_ids.device)
            grid = grid.to(input_ids.device)
        hidden = model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=mrope_position_ids(model, input_ids, attention_mask, grid),
            pixel_values=pixels,
            image_grid_thw=grid,
            use_cache=False,
        ).last_hidden_state
        if vision_always and pixels is None:
            hidden = hidden + 0.0 * _blank_vision_forward(model, hidden).sum()
        return hidden
    if multimodal is not None:
        raise ValueError("the batch has images but the model is not a vision-language model")
    return model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state


def banned_token_ids(model: torch.nn.Module) -> list[int]:
    """Tokens the rollout engines never sample (a VL model's image/video placeholders).

    The engines mask them before sampling, so the behaviour policy is the renormalised
    distribution without them; the trainer masks them too, so that π_θ is that same policy.
    """
    from ares_lit.vision import is_vision_language

    if not is_vision_language(model.config):
        return []
    ids = (getattr(model.config, "image_token_id", None), getattr(model.config, "video_token_id", None))
    return [int(i) for i in ids if i is not None]


def _logits(head: torch.nn.Module, hidden: torch.Tensor, temperature: float, banned: list[int] | None) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    if banned:
        logits[:, banned] = float("-inf")
    return logits


def _blank_vision_forward(model: torch.nn.Module, like: torch.Tensor) -> torch.Tensor:
    """The vision tower on one blank image of 2x2 patches (the smallest grid it accepts)."""
    visual = model.model.visual
    cfg = model.config.vision_config
    width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
    grid = torch.tensor([[1, 2, 2]], device=like.device)
    pixels = torch.zeros(4, width, device=like.device, dtype=next(visual.parameters()).dtype)
    out = visual(pixels, grid_thw=grid)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def chunk_logprobs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, banned: list[int] | None = None
) -> torch.Tensor:
    logits = _logits(head, hidden, temperature, banned)
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class _ChunkEntropy(torch.autograd.Function):
    """H = −Σ_v p_v log p_v of one chunk's log-softmax, differentiable: dH/dlog p_v = −p_v·(log p_v + 1),
    0 on masked vocabulary entries (log p = −inf). Saves only the log-softmax itself."""

    @staticmethod
    def forward(ctx, log_probs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(log_probs)
        return entropy_from_log_probs(log_probs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (log_probs,) = ctx.saved_tensors
        return -grad.unsqueeze(-1) * log_probs.exp() * (log_probs.nan_to_num(neginf=0.0) + 1.0)


def chunk_logprobs_entropy(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    banned: list[int] | None = None,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` and the exact entropy, from one fp32 log-softmax of the chunk; the
    entropy carries a gradient only with `entropy_grad`."""
    lsm = _logits(head, hidden, temperature, banned).log_softmax(-1)
    logp = lsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, (_ChunkEntropy.apply(lsm) if entropy_grad else entropy_from_log_probs(lsm.detach()))


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    budget_bytes: int = DEFAULT_LOGIT_BUDGET_BYTES,
    multimodal: dict[str, torch.Tensor] | None = None,
    vision_always: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `response_len` tokens of each row under softmax(logits / T).

    Args:
        model: a Hugging Face causal LM (`get_decoder()` and `get_output_embeddings()`).
        input_ids: [B, P + R] left-padded prompts followed by right-padded responses.
        attention_mask: [B, P + R].
        response_len: R.
        temperature: the sampling temperature (the policy being optimised is softmax(z / T)).
        with_entropy: also return the exact full-vocabulary token entropy (no gradient).
        entropy_grad: return the entropy with its gradient (for an entropy bonus; implies
            with_entropy), from the same chunked fp32 log-softmax as the log-probs.
        multimodal: the rows' images ({"pixel_values", "image_grid_thw"}), for VL models.

    Returns:
        (log_probs [B, R] fp32, entropy [B, R] fp32 or None). Values at padding are meaningless
        and must be masked by the caller.
    """
    head = model.get_output_embeddings()
    hidden = decoder_hidden(model, input_ids, attention_mask, multimodal, vision_always)
    banned = banned_token_ids(model)
    total = input_ids.shape[1]
    # The token at position p is predicted by the hidden state at p - 1.
    h = hidden[:, total - response_len - 1 : total - 1]
    targets = input_ids[:, total - response_len :]
    bsz = h.shape[0]
    flat_h = h.reshape(bsz * response_len, -1)
    flat_t = targets.reshape(-1)
    rows = tokens_per_chunk(_vocab_rows(head), budget_bytes)
    grad = torch.is_grad_enabled() and flat_h.requires_grad
    with_entropy = with_entropy or entropy_grad
    logps, ents = [], []
    # Under multi-rank ZeRO-3 every LM-head call is a collective: all ranks run the same number of
    # chunks (the last ones empty on ranks with fewer tokens).
    from ares_lit.modules.zero import same_count_on_all_ranks

    chunks = same_count_on_all_ranks(-(-flat_h.shape[0] // rows), head, flat_h.device)
    for c in range(chunks):
        hc, tc = flat_h[c * rows : (c + 1) * rows], flat_t[c * rows : (c + 1) * rows]
        if grad:
            # Several chunks: recompute this chunk's logits in backward (O(chunk x V) peak memory).
            # One chunk: backward needs that chunk's logits at once either way, so keeping them
            # from the forward costs no peak memory and saves recomputing the LM head.
            fn, args = (chunk_logprobs_entropy, (entropy_grad,)) if with_entropy else (chunk_logprobs, ())
            if chunks > 1:
                out = checkpoint(fn, head, hc, tc, temperature, banned, *args, use_reentrant=False)
            else:
                out = fn(head, hc, tc, temperature, banned, *args)
            logps.append(out[0] if with_entropy else out)
            if with_entropy:  # the same fp32 log-softmax as the log-probs: no second LM-head pass
                ents.append(out[1])
            continue
        # No gradient: one fp32 log-softmax per chunk gives both the log-probs and the exact entropy
        # (docs/algorithm.md "Token entropy", over the full vocabulary; banned tokens are -inf and add 0).
        lsm = _logits(head, hc, temperature, banned).log_softmax(-1)
        logps.append(lsm.gather(-1, tc.unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            ents.append(entropy_from_log_probs(lsm))
    log_probs = torch.cat(logps).reshape(bsz, response_len)
    entropy = torch.cat(ents).reshape(bsz, response_len) if with_entropy else None
    return log_probs, entropy
