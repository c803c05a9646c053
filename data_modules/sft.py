"""SFT batches of the cold-start stage: features from curated records, length grouping, collation.

A feature is {"prompt_ids", "response_ids", "bracket"} (plus "multimodal", the `MultimodalInputs`
of an image row): prompt = the shared ARES prompt (`prompting.build_prompt_text`, chat template
with generation prompt, each `<|image_pad|>` expanded to its image's vision tokens), response =
normalized trace + eos. Batches are length-grouped (rows sorted by length within seeded groups
of `group_batches` batches) so that padding stays small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ares_lit.prompting import build_prompt_text
from ares_lit.vision import ImageError, load_image, merge_multimodal
from data_modules.curation import token_ids

__all__ = ["SFTBatches", "collate_sft", "length_grouped_batches", "sft_features"]


def sft_features(
    records: list[dict], tokenizer: Any, processor: Any, image_dir: Path, prompt_suffix: str, system_prompt: str | None
) -> list[dict]:
    """One feature per curated record; images are read from `image_dir` (the cached set's folder)."""
    prompts = [
        build_prompt_text(tokenizer, r["question"], prompt_suffix, system_prompt, len(r.get("images", [])))
        for r in records
    ]
    prompt_ids = token_ids(tokenizer, prompts)
    response_ids = token_ids(tokenizer, [r["response"] for r in records])
    eos = tokenizer.eos_token_id
    features = []
    for p, r, rec in zip(prompt_ids, response_ids, records):
        feature = {"prompt_ids": list(p), "response_ids": list(r) + [eos], "bracket": rec["bracket"]}
        if rec.get("images"):
            try:
                images = [load_image(name, image_dir) for name in rec["images"]]
            except ImageError as err:
                raise ValueError(
                    f"the cached cold-start set {image_dir} lost an image ({err}); delete that folder to curate again"
                ) from err
            feature["prompt_ids"] = processor.expand(feature["prompt_ids"], images)
            feature["multimodal"] = processor.pixels(images)
        features.append(feature)
    return features


def collate_sft(features: list[dict], pad_id: int, bracket_n: int) -> dict[str, Any]:
    """Right-padded prompt + response rows; labels are -100 on the prompt and on padding.

    Returns `input_ids`, `attention_mask`, `labels` [B, T], `bracket` [B] and `bracket_n`. Features
    with images carry "multimodal" (`MultimodalInputs`); the batch then also holds "pixel_values"
    [Σ patches, C·T·P·P] and "image_grid_thw" [num_images, 3], concatenated in row order (keys
    absent for text-only batches).
    """
    width = max(len(f["prompt_ids"]) + len(f["response_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    for i, f in enumerate(features):
        p, r = len(f["prompt_ids"]), len(f["response_ids"])
        ids[i, : p + r] = torch.tensor(f["prompt_ids"] + f["response_ids"])
        mask[i, : p + r] = 1
        labels[i, p : p + r] = torch.tensor(f["response_ids"])
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "bracket": torch.tensor([f["bracket"] for f in features], dtype=torch.long),
        "bracket_n": bracket_n,
    }
    vision = merge_multimodal([f.get("multimodal") for f in features])
    if vision is not None:
        batch.update(vision)
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, group_batches: int, seed: int) -> list[list[int]]:
    """Batches of row indices: a seeded shuffle, then rows sorted by length inside groups of
    `group_batches` batches, so each batch holds similar lengths (little padding)."""
    order = np.random.default_rng([seed, 0, 3]).permutation(len(lengths)).tolist()
    group = batch_size * group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    return batches


class SFTBatches(Dataset):
    """Precomputed length-grouped batches; index [b] (or a list of batch indices) returns their rows."""

    def __init__(self, features: list[dict], batches: list[list[int]]) -> None:
        self.features = features
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index):
        rows = [i for b in (index if isinstance(index, (list, tuple)) else [index]) for i in self.batches[b]]
        return [self.features[i] for i in rows]
