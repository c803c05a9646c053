"""The finished rollout batch that the rollout callback hands to the AEPO module.

Layout (as verl): prompts left-padded to P, responses right-padded to R, concatenated into
`input_ids` [N, P + R]. Per-token tensors are over the R response positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["RolloutBatch", "pad_engine_log_probs", "plan_micro_batches", "row_lengths", "trim_columns"]


def row_lengths(attention_mask: torch.Tensor, response_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] prompt lengths, [N] response lengths) of rows in verl's layout (prompts left-padded,
    responses right-padded to `response_len`)."""
    p_width = attention_mask.shape[1] - response_len
    return attention_mask[:, :p_width].sum(-1), attention_mask[:, p_width:].sum(-1)


def trim_columns(attention_mask: torch.Tensor, response_len: int) -> tuple[slice, int]:
    """The columns that rows `attention_mask` [n, P + R] need: (a slice of the P + R columns, R'),
    cut to the rows' own longest prompt and longest response (R' >= 1, so the layout stays defined)."""
    p_width = attention_mask.shape[1] - response_len
    p_lens, r_lens = row_lengths(attention_mask, response_len)
    p_keep = int(p_lens.max()) if p_lens.numel() else 0
    r_keep = max(1, int(r_lens.max()) if r_lens.numel() else 1)
    return slice(p_width - p_keep, p_width + r_keep), r_keep


def plan_micro_batches(
    prompt_lens: torch.Tensor, response_lens: torch.Tensor, rows: torch.Tensor, max_rows: int, max_tokens: int | None
) -> list[torch.Tensor]:
    """Cut `rows` (indices into the length tensors) into micro-batches of similar lengths.

    Rows are sorted by response length, then prompt length, longest first (the first micro-batch
    is the largest, so memory runs out at once if it runs out at all). A micro-batch, once cut to
    its own longest prompt and response (`trim_columns`), costs rows x (P' + R') positions:
    with `max_tokens` it takes rows while that stays within the budget (at least one row; a row
    longer than the budget runs alone); without, it takes `max_rows` rows. Sorting only reorders
    rows within the set, so the sum of their gradients is the same (up to float summation order).
    """
    if rows.numel() == 0:
        return []
    p, r = prompt_lens[rows].tolist(), response_lens[rows].tolist()
    order = sorted(range(len(p)), key=lambda i: (-r[i], -p[i], i))
    plans: list[list[int]] = []
    cur: list[int] = []
    p_max = r_max = 0
    for i in order:
        new_p, new_r = max(p_max, p[i]), max(r_max, r[i], 1)
        full = len(cur) >= max_rows if max_tokens is None else (len(cur) + 1) * (new_p + new_r) > max_tokens
        if cur and full:
            plans.append(cur)
            cur, new_p, new_r = [], p[i], max(r[i], 1)
        cur.append(i)
        p_max, r_max = new_p, new_r
    plans.append(cur)
    return [rows[torch.tensor(c, dtype=torch.long, device=rows.device)] for c in plans]


def pad_engine_log_probs(engine_lp: list, like: torch.Tensor) -> torch.Tensor | None:
    """Per-completion engine log-prob lists → an [N, R] tensor shaped like `like` (zeros past each
    response); None when any completion has none (an engine that does not report log-probs)."""
    if any(lp is None for lp in engine_lp):
        return None
    out = torch.zeros_like(like)
    for i, lp in enumerate(engine_lp):
        lp = lp[: like.shape[1]]
        if lp:
            out[i, : len(lp)] = torch.tensor(lp, dtype=like.dtype)
    return out


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [N, P + R] long
    attention_mask: torch.Tensor  # [N, P + R] long
    response_mask: torch.Tensor  # [N, R] bool
    old_log_probs: torch.Tensor  # [N, R] fp32, policy before the update, at the sampling temperature
    ref_log_probs: torch.Tensor | None  # [N, R] fp32, frozen reference; None when the KL loss is off
    advantages: torch.Tensor  # [N] fp32
    bucket: torch.Tensor  # [N] long, 0 easy / 1 medium / 2 hard
    window_mask: torch.Tensor  # [N, R] bool, tokens inside validated HWE windows
    temperature: float = 1.0
    # Per-sample values for logging (accuracy, rewards, n_hwe, ...), and scalar metrics.
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # a few decoded responses for the text panel
    # Vision-language policies: one MultimodalInputs (pixel_values, image_grid_thw) or None per row;
    # a prompt's n samples share one object. None for text-only batches.
    multimodal: list | None = None
    # The engine's own log-probs of the sampled tokens ([N, R] fp32, 0 on padding; `Completion.logprobs`
    # padded like old_log_probs): the train-inference mismatch correction (model.rollout_correction)
    # weighs tokens by π_old/π_engine. None when the engine returned none.
    engine_log_probs: torch.Tensor | None = None
    # The rollout's max_new_tokens: the constant horizon of loss_agg=seq-mean-token-sum-norm
    # (None: the module falls back to its own model.loss_horizon, else the padded width R).
    max_new_tokens: int | None = None
    # Branching with prefix_loss="dedupe": [N, R] bool, the response tokens the policy and KL losses
    # train (a child's inherited prefix is 0: its parent trains those tokens). None: response_mask.
    loss_mask: torch.Tensor | None = None

    @property
    def trained_mask(self) -> torch.Tensor:
        """The response tokens the losses train: `loss_mask`, else `response_mask`."""
        return self.response_mask if self.loss_mask is None else self.loss_mask

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_len(self) -> int:
        return int(self.response_mask.shape[1])

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif f.name == "extras":
                v = {k: t.to(device) for k, t in v.items()}
            elif f.name == "multimodal" and v is not None:
                once: dict[int, object] = {}  # move each prompt's images once, keep them shared
                for m in v:
                    if m is not None and id(m) not in once:
                        once[id(m)] = type(m)(m.pixel_values.to(device), m.image_grid_thw.to(device))
                v = [None if m is None else once[id(m)] for m in v]
            moved[f.name] = v
        return RolloutBatch(**moved)

    @classmethod
    def placeholder(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, with_ref: bool) -> RolloutBatch:
        """A one-row batch of zeros around `input_ids`, for a zero-weight dummy micro-batch (it only
        keeps the collective counts equal across ranks)."""
        dev = input_ids.device
        zeros = torch.zeros(1, response_len, device=dev)
        none = torch.zeros(1, response_len, dtype=torch.bool, device=dev)
        idx = torch.zeros(1, dtype=torch.long, device=dev)
        return cls(input_ids, attention_mask, ~none, zeros, zeros if with_ref else None, zeros[:, 0], idx, none)

    def loss_counts(self, minis: list[torch.Tensor], token_mean: bool) -> torch.Tensor:
        """[1, M] fp64: each mini-batch's response tokens (token_mean) or sequences with a token."""
        counts = torch.zeros(1, len(minis), dtype=torch.float64, device=self.response_mask.device)
        for j, mini in enumerate(minis):  # a few mini-batches per step, not a loop over tokens
            m = self.trained_mask[mini]
            counts[0, j] = m.sum() if token_mean else (m.sum(-1) > 0).sum()
        return counts

    def micro_batches(self, rows: torch.Tensor, max_rows: int, max_tokens: int | None) -> list[torch.Tensor]:
        """`plan_micro_batches` over this batch's rows `rows` (a mini-batch)."""
        p_lens, r_lens = row_lengths(self.attention_mask, self.response_len)
        return plan_micro_batches(p_lens, r_lens, rows, max_rows, max_tokens)

    def select(self, index: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The tensors the loss needs, for the rows in `index` (images concatenated in row order),
        cut to these rows' own longest prompt and response (`trim_columns`): no column that is
        padding in every row is computed. "response_len" is the kept response width R'.
        "response_mask" is the `trained_mask` (branching's dedupe leaves inherited prefixes out)."""
        from ares_lit.vision import merge_multimodal

        cols, r_keep = trim_columns(self.attention_mask[index], self.response_len)
        ref = None if self.ref_log_probs is None else self.ref_log_probs[index, :r_keep]
        engine = None if self.engine_log_probs is None else self.engine_log_probs[index, :r_keep]
        mm = None
        if self.multimodal is not None:
            mm = merge_multimodal([self.multimodal[i] for i in index.tolist()])
        return {
            "multimodal": mm,
            "input_ids": self.input_ids[index, cols],
            "attention_mask": self.attention_mask[index, cols],
            "response_len": r_keep,
            "response_mask": self.trained_mask[index, :r_keep],
            "old_log_probs": self.old_log_probs[index, :r_keep],
            "ref_log_probs": ref,
            "engine_log_probs": engine,
            "advantages": self.advantages[index],
            "bucket": self.bucket[index],
            "window_mask": self.window_mask[index, :r_keep],
        }
