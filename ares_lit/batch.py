"""The finished rollout batch that the rollout callback hands to the AEPO module.

Layout (as verl): prompts left-padded to P, responses right-padded to R, concatenated into
`input_ids` [N, P + R]. Per-token tensors are over the R response positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["RolloutBatch"]


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

    def select(self, index: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The tensors the loss needs, for the rows in `index` (images concatenated in row order)."""
        from ares_lit.vision import merge_multimodal

        ref = None if self.ref_log_probs is None else self.ref_log_probs[index]
        mm = None
        if self.multimodal is not None:
            mm = merge_multimodal([self.multimodal[i] for i in index.tolist()])
        return {
            "multimodal": mm,
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "response_mask": self.response_mask[index],
            "old_log_probs": self.old_log_probs[index],
            "ref_log_probs": ref,
            "advantages": self.advantages[index],
            "bucket": self.bucket[index],
            "window_mask": self.window_mask[index],
        }
