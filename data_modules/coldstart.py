"""`ColdstartDataModule`: difficulty-aware curation and SFT batches for AdaCS (ARES_SPEC "AdaCS").

Input schema (JSON lines, .json or .parquet; one problem per row; key names are configurable):

    source    str   data source; L(0), L(1) are computed per source (missing: "default")
    question  str   the problem text
    images    list  optional; a row with a non-empty list is multimodal (needs image_key set).
                    Items: paths (relative to the pool file's folder), bytes, PIL images or
                    `datasets` Image values; one image may stand alone instead of a list
    answer    str   the gold final answer (numbers are converted to strings)
    traces    list  candidate reasoning traces: strings, or {"text": str, "correct": bool}
                    ("correct" optional: when absent the trace is graded with ares_lit.grading)
    k, n      int   pass rate p = k / n: k correct out of n reference samples (paper: n = 8)
    p         float alternatively, the pass rate itself in [0, 1]; k and n win when both exist

`python -m ares_lit.tools.pass_rate` fills k and n by sampling a reference model.

Curation (ours where the paper is silent, marked *):
1. Every candidate is graded against the answer (unless it carries "correct") and normalized
   (rules below). Only correct candidates are eligible, unless `allow_incorrect`. * Candidates
   that cannot fit `max_length` (prompt + trace + eos) are not eligible either.
2. Lengths are tokens of the normalized trace under the policy's own tokenizer.
3. Per source, L(0) and L(1) are the medians of the eligible candidates' lengths over the
   problems with p = 0 and p = 1 exactly. * Fallback when a source has no such problem: the
   median over all sources ("global"); when no source has one, the median of the source's
   lowest (for L(0)) or highest (for L(1)) pass-rate bracket present ("nearest_bracket").
   The report says which was used.
4. L_target(p) = (1 − p)·L(0) + p·L(1); each problem keeps the eligible candidate whose length is
   closest to it (* ties: the shorter, then the earlier).
5. Problems are binned into brackets b = round(p · bracket_n) (k/n with n = bracket_n = 8) and
   `size` of them are sampled uniformly across the non-empty brackets (* water-filling: each
   bracket gets an equal share, a bracket with fewer problems gives its leftover to the others,
   and an indivisible remainder goes to the hardest brackets first). With `multimodal_fraction`
   set, round(size · fraction) places go to multimodal rows and the rest to text rows, each filled
   uniformly across brackets; * a modality that runs short hands its places to the other.

Normalization to `<think>…</think>` + `\\boxed{}` (* our rules):
- A trace that starts with `<think>` and has exactly one `<think>` and one `</think>` keeps its
  reasoning and its tail (the text after `</think>`). Any other trace is raw reasoning: stray
  think tags are removed and all of it goes inside the tags, with an empty tail.
- If the tail has no balanced `\\boxed{}`, one is appended to it: the trace's own last boxed answer
  if it has one, else the gold answer (only for traces flagged or graded correct; an incorrect
  trace without a boxed answer cannot be normalized and is dropped).
- Output: "<think>\\n{reasoning}\\n</think>\\n{tail}", which `grading.format_ok` accepts.

Bad input: rows are skipped and counted in `drop_counts` (and the report), under the first
reason that applies: malformed (unreadable line, not an object, bad types, image count unlike
the prompt's image placeholders), empty_prompt, no_answer, no_pass_rate (missing, or k/n/p out of
range), no_traces (missing or empty list), missing_image (an image path that does not exist),
bad_image (an image that cannot be decoded), no_correct_trace (no eligible candidate), too_long
(correct candidates exist but none fits `max_length`). Configured keys that are not columns raise
before the tokenizer (and the model) load; a pool with no usable row raises with the drop counts.

Images (`image_key` set; `path: builtin:visual` sets it): `self.processor`, the policy's
`VisionProcessor`, is built in setup (data.tokenizer_path must be a Qwen2-VL / Qwen2.5-VL model).
Every image is decoded once during curation; each `<|image_pad|>` of a prompt counts as the
image's vision tokens (resized within `min_pixels` / `max_pixels`), so `max_length` counts them.
The selected problems' images are saved as PNG files under `cache_dir/<key>/images/`, and
curated.jsonl refers to them by paths relative to that folder, so a cached set needs nothing
else. Features then carry `MultimodalInputs` (pixel patches and grids, computed in setup).

Cache: the curated set and its report are saved under `cache_dir/<key>/` (curated.jsonl,
report.json, images/), key = sha256 of the pool's bytes (or the builtin's settings), every
curation setting (pixel limits included) and the tokenizer. A rerun or a resumed run with the
same inputs loads them instead of curating again. The report is also written to the run's log dir (curation_report.json) and to
TensorBoard (text `curation/report`, figures `curation/brackets` and `curation/lengths`).

Batches: prompt = the shared ARES prompt (`prompting.build_prompt_text`, chat template with
generation prompt), response = normalized trace + eos; right-padded `input_ids`,
`attention_mask`, `labels` (-100 on the prompt and on padding), `bracket` [B] and `bracket_n`;
with images in the batch also `pixel_values` [Σ patches, C·T·P·P] and `image_grid_thw`
[num_images, 3], the rows' images concatenated in row order (keys absent for text-only batches).
Batches are length-grouped (rows sorted by length within seeded groups of `group_batches`
batches) so padding stays small; their order is reshuffled each epoch and resumes mid-epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from ares_lit.grading import Grader, extract_boxed, format_ok
from ares_lit.models.resolve import attached_policy_path, resolve_model_path
from ares_lit.prompting import ARES_PROMPT_SUFFIX, build_prompt_text
from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageError, image_reason, load_image, merge_multimodal
from data_modules.prompts import MALFORMED, ResumableBatchSampler, as_text, image_values, load_rows, prompt_id

__all__ = [
    "DROP_REASONS",
    "ColdstartDataModule",
    "collate_sft",
    "normalize_trace",
    "target_length",
    "uniform_quotas",
]

log = logging.getLogger(__name__)

DROP_REASONS = (
    "malformed",
    "empty_prompt",
    "no_answer",
    "no_pass_rate",
    "no_traces",
    "missing_image",
    "bad_image",
    "no_correct_trace",
    "too_long",
)
BUILTIN = "builtin:coldstart"
BUILTIN_VISUAL = "builtin:visual"
CURATION_VERSION = 2  # bump when curation changes, so that cached sets are not reused
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


# ------------------------------------------------------------------------------ pure helpers
def normalize_trace(text: str, fallback_answer: str | None = None) -> str | None:
    """The trace as "<think>\\n…\\n</think>\\n… \\boxed{…}" (module docstring), or None if impossible."""
    body = text.strip()
    if (
        body.startswith(_THINK_OPEN)
        and body.count(_THINK_OPEN) == 1
        and body.count(_THINK_CLOSE) == 1
    ):
        end = body.index(_THINK_CLOSE)
        reasoning, tail = body[len(_THINK_OPEN) : end].strip(), body[end + len(_THINK_CLOSE) :].strip()
    else:
        reasoning, tail = body.replace(_THINK_OPEN, " ").replace(_THINK_CLOSE, " ").strip(), ""
    if extract_boxed(tail) is None:
        final = extract_boxed(reasoning)
        final = final if final is not None else fallback_answer
        if final is None:
            return None
        tail = f"{tail}\n\\boxed{{{final}}}" if tail else f"\\boxed{{{final}}}"
    out = f"{_THINK_OPEN}\n{reasoning}\n{_THINK_CLOSE}\n{tail}"
    return out if format_ok(out) else None


def target_length(p: float, l0: float, l1: float) -> float:
    """L_target(p) = (1 − p)·L(0) + p·L(1) (ARES_SPEC "AdaCS")."""
    return (1.0 - p) * l0 + p * l1


def uniform_quotas(counts: dict[int, int], total: int) -> dict[int, int]:
    """Places per bracket: equal shares, capped by what each bracket has (module docstring, step 5)."""
    quotas = dict.fromkeys(counts, 0)
    remaining = min(total, sum(counts.values()))
    open_ = sorted(b for b, c in counts.items() if c > 0)
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:  # fewer places than brackets: the hardest brackets first
            for b in open_[:remaining]:
                quotas[b] += 1
            break
        for b in open_:
            add = min(share, counts[b] - quotas[b])
            quotas[b] += add
            remaining -= add
        open_ = [b for b in open_ if quotas[b] < counts[b]]
    return quotas


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _pass_rate(row: dict, k_key: str, n_key: str, p_key: str) -> float | None:
    """p from k/n (preferred) or p; None when missing or out of range."""
    k, n = row.get(k_key), row.get(n_key)
    if k is not None or n is not None:
        ints = all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in (k, n))
        if not ints or not 1 <= n or not 0 <= k <= n:
            return None
        return float(k) / float(n)
    p = row.get(p_key)
    if isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0.0 <= p <= 1.0:
        return float(p)
    return None


def _candidates(traces: Any) -> list[tuple[str, bool | None]] | None:
    """[(text, correct flag or None)] of the usable trace items; None if `traces` is not a list."""
    if not isinstance(traces, (list, tuple)):
        return None
    out = []
    for item in traces:
        flag = None
        if isinstance(item, dict):
            flag = item.get("correct")
            if not isinstance(flag, bool):
                flag = None
            item = item.get("text")
        text = as_text(item, numbers_ok=False)
        if text is not None and text is not MALFORMED and text:
            out.append((text, flag))
    return out


# ------------------------------------------------------------------------------ batches
def collate_sft(features: list[dict], pad_id: int, bracket_n: int) -> dict[str, Any]:
    """Right-padded prompt + response rows; labels are -100 on the prompt and on padding.

    Features with images carry "multimodal" (`MultimodalInputs`); the batch then also holds
    "pixel_values" and "image_grid_thw", concatenated in row order.
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


class _Batches(Dataset):
    """Precomputed length-grouped batches; index [b] returns the rows of batch b."""

    def __init__(self, features: list[dict], batches: list[list[int]]) -> None:
        self.features = features
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index):
        rows = [i for b in (index if isinstance(index, (list, tuple)) else [index]) for i in self.batches[b]]
        return [self.features[i] for i in rows]


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


# ------------------------------------------------------------------------------ datamodule
class ColdstartDataModule(LightningDataModule):
    """AdaCS curation (difficulty-aware trace selection) and SFT batches.

    Args:
        path: 'builtin:coldstart' (generated arithmetic pool), 'builtin:visual' (generated picture pool) or a local
            .json/.jsonl/.parquet pool file.
        tokenizer_path: the policy's tokenizer; None = the attached module's model_path.
        cache_dir: where curated sets are kept, keyed by inputs + settings; None = $ARES_LIT_CACHE/coldstart.
        size: problems to keep after curation (all usable problems if fewer).
        bracket_n: pass-rate brackets are round(p · bracket_n) / bracket_n (paper: n = 8 samples).
        multimodal_fraction: share of multimodal (image) rows in the curated set; None keeps the pool's mix.
        allow_incorrect: let incorrect traces be selected too (off: correct traces only, as the paper).
        max_length: prompt + response + eos tokens; longer candidates are not eligible.
        source_key: column naming the data source; None = a single source.
        question_key: column holding the question.
        answer_key: column holding the gold answer.
        traces_key: column holding the list of candidate traces.
        image_key: column holding images (multimodal rows); None = text only ('builtin:visual' sets 'images').
        min_pixels: lower bound of an image's area after resizing (pixels), as the VL processor's.
        max_pixels: upper bound of an image's area after resizing (pixels); bounds its vision tokens.
        id_key: column holding a stable id; None hashes question and answer.
        k_key: column holding the number of correct reference samples k.
        n_key: column holding the number of reference samples n.
        p_key: column holding a pass rate p in [0, 1] (used when a row has no k/n).
        builtin_size: problems in the 'builtin:coldstart' / 'builtin:visual' pool.
        builtin_seed: seed of the 'builtin:coldstart' / 'builtin:visual' generator.
        prompt_suffix: text appended to every question after a newline ('' for none).
        system_prompt: optional system message of the chat template.
        batch_size: sequences per training batch on each device.
        group_batches: batches per length-sorting group (1 = no length grouping).
        seed: seed of the sampling across brackets and of the batch order.
        grade_timeout: seconds per graded candidate trace.
        val_path: problems to validate on during fit (`trainer.val_check_interval`): a question/answer file
            or name as PromptDataModule reads it (same question_key / answer_key), e.g. 'builtin:math:test'.
        val_size: keep only the first val_size usable problems of val_path (0 = all).
    """

    def __init__(
        self,
        path: str = BUILTIN,
        tokenizer_path: str | None = None,
        cache_dir: str | None = None,
        size: int = 96,
        bracket_n: int = 8,
        multimodal_fraction: float | None = None,
        allow_incorrect: bool = False,
        max_length: int = 384,
        source_key: str | None = "source",
        question_key: str = "question",
        answer_key: str = "answer",
        traces_key: str = "traces",
        image_key: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        id_key: str | None = None,
        k_key: str = "k",
        n_key: str = "n",
        p_key: str = "p",
        builtin_size: int = 192,
        builtin_seed: int = 0,
        prompt_suffix: str = ARES_PROMPT_SUFFIX,
        system_prompt: str | None = None,
        batch_size: int = 4,
        group_batches: int = 16,
        seed: int = 0,
        grade_timeout: float = 5.0,
        val_path: str | None = None,
        val_size: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("val_size", val_size, 0),
            ("size", size, 1),
            ("bracket_n", bracket_n, 1),
            ("max_length", max_length, 8),
            ("builtin_size", builtin_size, 1),
            ("batch_size", batch_size, 1),
            ("group_batches", group_batches, 1),
        ):
            if value < low:
                raise ValueError(f"data.{name} must be >= {low}; got {value}")
        if multimodal_fraction is not None and not 0.0 <= multimodal_fraction <= 1.0:
            raise ValueError(f"data.multimodal_fraction must be in [0, 1] or null; got {multimodal_fraction}")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"need 0 < data.min_pixels <= data.max_pixels; got min_pixels={min_pixels}, max_pixels={max_pixels}"
            )
        if path == BUILTIN_VISUAL and image_key is None:
            image_key = "images"  # before save_hyperparameters, so the logged config says so
        self.save_hyperparameters()
        self.tokenizer: Any = None  # may be set before setup() to share the policy's
        self.processor: Any = None  # VisionProcessor, built in setup() when image_key is set (or set beforehand)
        self.records: list[dict] | None = None  # curated rows (what curated.jsonl holds)
        self.report: dict[str, Any] = {}
        self.drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.cache_path: Path | None = None
        self.reused_cache = False
        self._features: list[dict] = []
        self._batches: list[list[int]] = []
        self._sampler: ResumableBatchSampler | None = None
        self._position = {"epoch": 0, "consumed": 0}
        self.val_records: list[dict] = []

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Read and check the pool, curate (or reuse the cached curation), tokenize, log the report."""
        if self.records is not None:
            return
        hp = self.hparams
        rows, unreadable, name, fingerprint = self._read()  # raises on bad keys, before any tokenizer
        val = self._val_source()  # its columns are checked here too, before anything expensive
        tokenizer = self._load_tokenizer()
        if hp.image_key:
            self._load_processor()
        key = self._cache_key(fingerprint, tokenizer)
        root = Path(hp.cache_dir) if hp.cache_dir else _default_cache_root()
        self.cache_path = root / key
        curated, report_file = self.cache_path / "curated.jsonl", self.cache_path / "report.json"
        if curated.is_file() and report_file.is_file():
            self.records = [json.loads(line) for line in curated.read_text(encoding="utf-8").splitlines() if line]
            self.report = json.loads(report_file.read_text(encoding="utf-8"))
            self.reused_cache = True
            print(f"[ares_lit] reusing the curated cold-start set {curated} ({len(self.records)} problems)", flush=True)
        else:
            self.records, self.report = self._curate(rows, unreadable, name, tokenizer)
            self.report["key"] = key
            self._store_images()
            self._save(curated, report_file)
        self.drop_counts = {r: int(self.report["dropped"].get(r, 0)) for r in DROP_REASONS}
        self._features = self._tokenize(tokenizer)
        lengths = [len(f["prompt_ids"]) + len(f["response_ids"]) for f in self._features]
        self._batches = length_grouped_batches(lengths, hp.batch_size, hp.group_batches, hp.seed)
        if len(self._batches) < self._world()[0]:
            raise ValueError(
                f"{len(self.records)} curated problems make {len(self._batches)} batches, fewer than the "
                f"{self._world()[0]} devices; lower data.batch_size or raise data.size"
            )
        self._log_report()
        if val is not None:
            val.tokenizer, val.processor = tokenizer, self.processor
            val.setup("validate")
            limit = hp.val_size or None
            self.val_records = [dict(r, index=i) for i, r in enumerate(val.train_records[:limit])]

    def _val_source(self):
        """A PromptDataModule over val_path (columns checked now, rows read in setup), or None."""
        hp = self.hparams
        if not hp.val_path:
            return None
        from data_modules.prompts import PromptDataModule

        val = PromptDataModule(
            path=hp.val_path, tokenizer_path=hp.tokenizer_path, question_key=hp.question_key,
            answer_key=hp.answer_key, image_key=None if hp.val_path.startswith("builtin:math") else hp.image_key,
            min_pixels=hp.min_pixels, max_pixels=hp.max_pixels, prompt_suffix=hp.prompt_suffix,
            system_prompt=hp.system_prompt, max_prompt_length=hp.max_length, batch_size=1, shuffle=False,
        )
        val._read(val.path)
        return val

    def val_dataloader(self) -> DataLoader | list:
        """Validation problems as prompt records ({"prompts": [...]}), in order; [] without val_path."""
        if not self.val_records:
            return []
        from data_modules.prompts import collate_prompts

        return DataLoader(self.val_records, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_prompts)

    test_dataloader = val_dataloader

    def _read(self) -> tuple[list[Any], int, str, str]:
        """(rows, unreadable lines, display name, content fingerprint) after checking the keys."""
        hp = self.hparams
        if hp.path == BUILTIN:
            from data_modules.coldstart_pool import generate_pool

            rows: list[Any] = generate_pool(hp.builtin_size, hp.builtin_seed)
            columns = ["id", "source", "question", "answer", "level", "k", "n", "traces"]
            fingerprint = f"{BUILTIN}/{hp.builtin_size}/{hp.builtin_seed}"
            unreadable, name = 0, BUILTIN
        elif hp.path == BUILTIN_VISUAL:
            from data_modules.coldstart_pool import generate_visual_pool

            rows = generate_visual_pool(hp.builtin_size, hp.builtin_seed)
            columns = list(rows[0])
            fingerprint = f"{BUILTIN_VISUAL}/{hp.builtin_size}/{hp.builtin_seed}"
            unreadable, name = 0, BUILTIN_VISUAL
        elif hp.path.startswith("builtin:"):
            raise ValueError(
                f"unknown builtin pool {hp.path!r}; use {BUILTIN!r}, {BUILTIN_VISUAL!r} or a .json/.jsonl/.parquet file"
            )
        else:
            rows, columns, unreadable, name = load_rows(hp.path, "train")
            fingerprint = hashlib.sha256(Path(hp.path).expanduser().read_bytes()).hexdigest()
        for option in ("question_key", "answer_key", "traces_key", "source_key", "image_key", "id_key"):
            value = getattr(hp, option)
            if value is not None and value not in columns:
                raise ValueError(
                    f"data.{option}={value!r} is not a column of {name}; columns are {columns}; "
                    f"set --data.init_args.{option}" + (" (or null)" if option in ("source_key", "image_key", "id_key") else "")
                )
        if not ({hp.k_key, hp.n_key} <= set(columns) or hp.p_key in columns):
            raise ValueError(
                f"{name} has no pass-rate columns: need {hp.k_key!r} and {hp.n_key!r}, or {hp.p_key!r}; columns are "
                f"{columns}. Set --data.init_args.k_key/n_key/p_key, or fill k and n with "
                "`python -m ares_lit.tools.pass_rate`"
            )
        return rows, unreadable, name, fingerprint

    def _model_dir(self) -> str | None:
        """The policy's folder: data.tokenizer_path (`builtin:*` names resolved) or the attached model's."""
        path = self.hparams.tokenizer_path
        if path and path.startswith("builtin:"):
            return resolve_model_path(path)
        return path or attached_policy_path(self)

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            path = self._model_dir()
            if not path:
                raise ValueError("data.tokenizer_path is not set and no model is attached; set --data.init_args.tokenizer_path")
            from transformers import AutoTokenizer  # slow import

            self.tokenizer = AutoTokenizer.from_pretrained(path)
        build_prompt_text(self.tokenizer, "?", self.hparams.prompt_suffix, self.hparams.system_prompt)  # template check
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the policy's tokenizer has no eos token; SFT responses must end with one")
        return self.tokenizer

    def _load_processor(self) -> Any:
        """The policy's `VisionProcessor`; raises with what to change when the model is not a VL model."""
        hp = self.hparams
        if self.processor is not None:
            return self.processor
        path = self._model_dir()
        if not path:
            raise ValueError(
                f"data.image_key={hp.image_key!r} is set, and images need the policy's image processor, which loads "
                "from data.tokenizer_path; set --data.init_args.tokenizer_path to the vision-language model"
            )
        from ares_lit.vision import VisionProcessor

        try:
            self.processor = VisionProcessor.from_pretrained(
                path, tokenizer=self.tokenizer, min_pixels=hp.min_pixels, max_pixels=hp.max_pixels
            )
        except (ValueError, OSError) as err:
            raise ValueError(
                f"data.image_key={hp.image_key!r} needs a vision-language policy (Qwen2-VL / Qwen2.5-VL) at {path!r}: "
                f"{str(err).rstrip('.')}. Point data.tokenizer_path at the VL model (e.g. builtin:tiny-qwen2.5-vl), "
                "or set data.image_key to null for text only"
            ) from err
        return self.processor

    def _cache_key(self, fingerprint: str, tokenizer: Any) -> str:
        settings = {
            k: self.hparams[k]
            for k in (
                "size", "bracket_n", "multimodal_fraction", "allow_incorrect", "max_length", "source_key",
                "question_key", "answer_key", "traces_key", "image_key", "id_key", "k_key", "n_key", "p_key",
                "prompt_suffix", "system_prompt", "seed", "min_pixels", "max_pixels",
            )
        }
        backend = getattr(tokenizer, "backend_tokenizer", None)
        tok = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        blob = json.dumps(
            {"version": CURATION_VERSION, "pool": fingerprint, "settings": settings, "tokenizer": tok,
             "template": tokenizer.chat_template, "eos": tokenizer.eos_token},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    # ------------------------------------------------------------------ curation
    def _clean(self, row: Any) -> tuple[str | None, dict | None]:
        """(drop reason, None) or (None, problem dict with raw candidates)."""
        hp = self.hparams
        if not isinstance(row, dict):
            return "malformed", None
        question = as_text(row.get(hp.question_key), numbers_ok=False)
        answer = as_text(row.get(hp.answer_key), numbers_ok=True)
        source = as_text(row.get(hp.source_key), numbers_ok=True) if hp.source_key else "default"
        if MALFORMED in (question, answer, source):
            return "malformed", None
        if not question:
            return "empty_prompt", None
        if not answer:
            return "no_answer", None
        p = _pass_rate(row, hp.k_key, hp.n_key, hp.p_key)
        if p is None:
            return "no_pass_rate", None
        candidates = _candidates(row.get(hp.traces_key))
        if not candidates:
            return ("malformed" if candidates is None and row.get(hp.traces_key) is not None else "no_traces"), None
        images = image_values(row.get(hp.image_key)) if hp.image_key else []
        pid = row.get(hp.id_key) if hp.id_key else None
        problem = {
            "id": str(pid) if pid is not None else prompt_id(question, answer),
            "source": source or "default",
            "question": question,
            "answer": answer,
            "p": p,
            "bracket": int(round(p * hp.bracket_n)),
            "multimodal": bool(images),
            "candidates": candidates,
        }
        if images:
            problem["images"] = images
        return None, problem

    def _curate(self, rows: list[Any], unreadable: int, name: str, tokenizer: Any) -> tuple[list[dict], dict]:
        hp = self.hparams
        drops = dict.fromkeys(DROP_REASONS, 0)
        drops["malformed"] += unreadable
        problems = []
        for row in rows:
            reason, problem = self._clean(row)
            if reason:
                drops[reason] += 1
            else:
                problems.append(problem)
        self._check_images(problems, tokenizer)
        problems = self._open_images(problems, drops)
        cand_stats = {"total": 0, "correct": 0, "incorrect": 0, "unnormalizable": 0, "too_long": 0}
        # 1. grade + normalize every candidate; 2. measure it under the policy tokenizer.
        with Grader(timeout=hp.grade_timeout) as grader:
            for prob in problems:
                prob["eligible"] = []
                for text, flag in prob.pop("candidates"):
                    cand_stats["total"] += 1
                    correct = flag if flag is not None else grader.grade(text, prob["answer"])
                    cand_stats["correct" if correct else "incorrect"] += 1
                    if not (correct or hp.allow_incorrect):
                        continue
                    normal = normalize_trace(text, prob["answer"] if correct else None)
                    if normal is None:
                        cand_stats["unnormalizable"] += 1
                        continue
                    prob["eligible"].append({"text": normal, "correct": bool(correct)})
        prompts = [
            build_prompt_text(tokenizer, p["question"], hp.prompt_suffix, hp.system_prompt, len(p.get("images", [])))
            for p in problems
        ]
        matched, prompt_lens = [], []
        for prob, ids in zip(problems, _ids(tokenizer, prompts)):
            if self.processor is not None:  # each image placeholder counts as the image's vision tokens
                try:
                    ids = self.processor.expand(ids, prob.pop("sizes"))
                except ValueError:  # the question itself holds image placeholders
                    drops["malformed"] += 1
                    continue
            matched.append(prob)
            prompt_lens.append(len(ids))
        problems = matched
        texts = [c["text"] for p in problems for c in p["eligible"]]
        lengths = iter(len(ids) for ids in _ids(tokenizer, texts))
        usable = []
        for prob, plen in zip(problems, prompt_lens):
            had = bool(prob["eligible"])
            for c in prob["eligible"]:
                c["tokens"] = next(lengths)
            fits = [c for c in prob["eligible"] if plen + c["tokens"] + 1 <= hp.max_length]
            cand_stats["too_long"] += len(prob["eligible"]) - len(fits)
            prob["eligible"] = fits
            if fits:
                usable.append(prob)
            else:
                drops["too_long" if had else "no_correct_trace"] += 1
        total_rows = len(rows) + unreadable
        if not usable:
            raise ValueError(
                f"no usable problems in {name}: dropped {drops} of {total_rows} rows. Each row needs a question, an "
                "answer, a pass rate (k and n, or p) and at least one correct trace that fits data.max_length; check "
                "the data.*_key settings"
            )
        if sum(drops.values()):
            log.warning("%s: dropped %d of %d rows %s", name, sum(drops.values()), total_rows, drops)
        anchors = self._anchor_lengths(usable)
        selected = self._sample(usable)
        records = []
        for prob in selected:
            src = anchors[prob["source"]]
            target = target_length(prob["p"], src["L0"], src["L1"])
            best = min(prob["eligible"], key=lambda c: (abs(c["tokens"] - target), c["tokens"]))
            record = {k: prob[k] for k in ("id", "source", "question", "answer", "p", "bracket", "multimodal")}
            if "images" in prob:
                record["images"] = prob["images"]
            record.update(
                response=best["text"],
                response_correct=best["correct"],
                response_tokens=best["tokens"],
                target_tokens=target,
                candidate_tokens=[c["tokens"] for c in prob["eligible"]],
            )
            records.append(record)
        report = self._report(name, total_rows, drops, cand_stats, usable, records, anchors)
        return records, report

    def _pool_dir(self) -> Path | None:
        """The folder that relative image paths of the pool are resolved against (None for builtins)."""
        path = self.hparams.path
        return None if path.startswith("builtin:") else Path(path).expanduser().resolve().parent

    def _open_images(self, problems: list[dict], drops: dict[str, int]) -> list[dict]:
        """Problems whose images all decode (the others are counted in `drops`), each with "sizes"."""
        if self.processor is None:
            return problems
        base_dir = self._pool_dir()
        kept = []
        for prob in problems:
            try:
                sizes = []
                for value in prob.get("images", []):
                    image = load_image(value, base_dir)
                    self.processor.image_tokens(image)  # aspect ratios the processor refuses are bad images
                    sizes.append(_Size(image.width, image.height))  # only sizes are kept: pools can be large
            except ImageError as err:
                drops[image_reason(err)] += 1
                continue
            prob["sizes"] = sizes
            kept.append(prob)
        return kept

    def _store_images(self) -> None:
        """Save the selected problems' images as PNG under the cache folder; records refer to them."""
        if not any(r.get("images") for r in self.records):
            return
        base_dir = self._pool_dir()
        folder = self.cache_path / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for i, record in enumerate(self.records):
            names = []
            for k, value in enumerate(record.get("images", [])):
                name = f"images/{i:06d}-{k}.png"
                tmp = folder / f".{i:06d}-{k}.{os.getpid()}.tmp.png"  # atomic, as in _save: ranks may race
                load_image(value, base_dir).save(tmp)  # decoded RGB as PNG: same size, lossless
                os.replace(tmp, self.cache_path / name)
                names.append(name)
            if names:
                record["images"] = names

    def _check_images(self, problems: list[dict], tokenizer: Any) -> None:
        if any(p["multimodal"] for p in problems):
            try:
                build_prompt_text(tokenizer, "?", self.hparams.prompt_suffix, self.hparams.system_prompt, num_images=1)
            except Exception as err:  # jinja raises many kinds
                raise ValueError(
                    f"the pool has image rows (data.image_key={self.hparams.image_key!r}) but the policy's chat template "
                    f"cannot render image content ({type(err).__name__}: {err}); use a vision-language model's "
                    "tokenizer, or set data.image_key to null for text only"
                ) from err

    def _anchor_lengths(self, usable: list[dict]) -> dict[str, dict]:
        """Per source: L(0), L(1) and where each came from (module docstring, step 3)."""

        def lengths(probs, p):
            return [c["tokens"] for q in probs if q["p"] == p for c in q["eligible"]]

        global_ = {"L0": _median(lengths(usable, 0.0)), "L1": _median(lengths(usable, 1.0))}
        out = {}
        for source in sorted({q["source"] for q in usable}):
            probs = [q for q in usable if q["source"] == source]
            entry = {}
            for key, p, pick in (("L0", 0.0, min), ("L1", 1.0, max)):
                value, origin = _median(lengths(probs, p)), "source"
                if value is None and global_[key] is not None:
                    value, origin = global_[key], "global"
                if value is None:
                    edge = pick(q["p"] for q in probs)
                    value, origin = _median(lengths(probs, edge)), f"nearest_bracket(p={edge:.3f})"
                entry[key], entry[f"{key}_from"] = value, origin
            out[source] = entry
        return out

    def _sample(self, usable: list[dict]) -> list[dict]:
        """`size` problems, uniform across brackets, with the configured multimodal share."""
        hp = self.hparams
        rng = np.random.default_rng([hp.seed, 0, 4])
        size = min(hp.size, len(usable))
        groups = {"text": [q for q in usable if not q["multimodal"]], "multimodal": [q for q in usable if q["multimodal"]]}
        if hp.multimodal_fraction is None:
            wanted = {"all": size}
            groups = {"all": usable}
        else:
            mm = min(int(round(size * hp.multimodal_fraction)), len(groups["multimodal"]))
            text = min(size - mm, len(groups["text"]))
            mm = min(size - text, len(groups["multimodal"]))  # a short modality hands its places over
            wanted = {"text": text, "multimodal": mm}
        chosen = []
        for group, want in wanted.items():
            by_bracket: dict[int, list[dict]] = {}
            for q in groups[group]:
                by_bracket.setdefault(q["bracket"], []).append(q)
            quotas = uniform_quotas({b: len(v) for b, v in by_bracket.items()}, want)
            for b in sorted(by_bracket):
                picks = rng.permutation(len(by_bracket[b]))[: quotas[b]]
                chosen.extend(by_bracket[b][i] for i in sorted(picks.tolist()))
        return chosen

    def _report(self, name, total_rows, drops, cand_stats, usable, records, anchors) -> dict:
        n = self.hparams.bracket_n

        def label(b: int) -> str:
            return f"{b}/{n}"

        def counts(items, key="bracket"):
            out: dict[str, int] = {}
            for q in sorted(items, key=lambda q: q[key]):
                out[label(q[key])] = out.get(label(q[key]), 0) + 1
            return out

        sources = {}
        for source, anchor in anchors.items():
            sel = [r for r in records if r["source"] == source]
            sources[source] = {
                **anchor,
                "usable": sum(q["source"] == source for q in usable),
                "selected": len(sel),
                "brackets_usable": counts([q for q in usable if q["source"] == source]),
                "brackets_selected": counts(sel),
                "mean_selected_tokens": float(np.mean([r["response_tokens"] for r in sel])) if sel else None,
                "mean_target_tokens": float(np.mean([r["target_tokens"] for r in sel])) if sel else None,
            }
        errors = [abs(r["response_tokens"] - r["target_tokens"]) for r in records]
        return {
            "pool": name,
            "rows": total_rows,
            "usable": len(usable),
            "selected": len(records),
            "dropped": drops,
            "candidates": cand_stats,
            "sources": sources,
            "brackets_usable": counts(usable),
            "brackets_selected": counts(records),
            "modality_selected": {
                "text": sum(not r["multimodal"] for r in records),
                "multimodal": sum(r["multimodal"] for r in records),
            },
            "mean_abs_length_error": float(np.mean(errors)),
            "selected_incorrect": sum(not r["response_correct"] for r in records),
        }

    def _save(self, curated: Path, report_file: Path) -> None:
        """Write atomically, so that an interrupted run never leaves a half cache to reuse."""
        curated.parent.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (curated, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)),
            (report_file, json.dumps(self.report, indent=2)),
        ):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

    # ------------------------------------------------------------------ tokens and logging
    def _tokenize(self, tokenizer: Any) -> list[dict]:
        hp = self.hparams
        prompts = [
            build_prompt_text(tokenizer, r["question"], hp.prompt_suffix, hp.system_prompt, len(r.get("images", [])))
            for r in self.records
        ]
        prompt_ids = _ids(tokenizer, prompts)
        response_ids = _ids(tokenizer, [r["response"] for r in self.records])
        eos = tokenizer.eos_token_id
        features = []
        for p, r, rec in zip(prompt_ids, response_ids, self.records):
            feature = {"prompt_ids": list(p), "response_ids": list(r) + [eos], "bracket": rec["bracket"]}
            if rec.get("images"):
                try:
                    images = [load_image(name, self.cache_path) for name in rec["images"]]
                except ImageError as err:
                    raise ValueError(
                        f"the cached cold-start set {self.cache_path} lost an image ({err}); delete that folder to "
                        "curate again"
                    ) from err
                feature["prompt_ids"] = self.processor.expand(feature["prompt_ids"], images)
                feature["multimodal"] = self.processor.pixels(images)
            features.append(feature)
        return features

    def _log_report(self) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        log_dir = trainer.log_dir  # a collective (broadcast) in Lightning: every rank must ask
        if not trainer.is_global_zero:
            return
        rep = self.report
        print(
            f"[ares_lit] cold-start curation: {rep['selected']} selected of {rep['usable']} usable problems "
            f"({rep['rows']} rows; skipped {rep['dropped']}); L(0)/L(1) per source: "
            + ", ".join(f"{s}={v['L0']:.1f}/{v['L1']:.1f}" for s, v in rep["sources"].items()),
            flush=True,
        )
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            Path(log_dir, "curation_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
        writer = _tensorboard(trainer)
        if writer is None:
            return
        writer.add_text("curation/report", "```\n" + json.dumps(rep, indent=2) + "\n```", 0)
        writer.add_scalar("data/usable_rows", rep["usable"], 0)
        writer.add_scalar("data/selected_rows", rep["selected"], 0)
        for reason, count in rep["dropped"].items():
            writer.add_scalar(f"data/dropped_{reason}", count, 0)
        for source, v in rep["sources"].items():
            writer.add_scalar(f"curation/{source}/L0", v["L0"], 0)
            writer.add_scalar(f"curation/{source}/L1", v["L1"], 0)
        writer.add_figure("curation/brackets", self._bracket_figure(), 0)
        writer.add_figure("curation/lengths", self._length_figure(), 0)
        writer.flush()

    def _bracket_figure(self):
        plt = _pyplot()
        n = self.hparams.bracket_n
        labels = [f"{b}/{n}" for b in range(n + 1)]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        x = np.arange(len(labels))
        sources = list(self.report["sources"])
        width = 0.8 / max(1, 2 * len(sources))
        for i, source in enumerate(sources):
            v = self.report["sources"][source]
            for j, (kind, hatch) in enumerate((("usable", ""), ("selected", "//"))):
                ys = [v[f"brackets_{kind}"].get(lab, 0) for lab in labels]
                ax.bar(x + (2 * i + j) * width - 0.4, ys, width, label=f"{source} {kind}", hatch=hatch, align="edge")
        ax.set_xticks(x, labels)
        ax.set_xlabel("pass-rate bracket k/n")
        ax.set_ylabel("problems")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def _length_figure(self):
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 4))
        for source in self.report["sources"]:
            rs = [r for r in self.records if r["source"] == source]
            ax.scatter([r["target_tokens"] for r in rs], [r["response_tokens"] for r in rs], s=12, label=source)
        top = max([r["target_tokens"] for r in self.records] + [r["response_tokens"] for r in self.records])
        ax.plot([0, top], [0, top], color="gray", linewidth=0.8)
        ax.set_xlabel("L_target(p) (tokens)")
        ax.set_ylabel("selected trace (tokens)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ loaders and state
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        """Length-grouped SFT batches (see `collate_sft`), reshuffled per epoch, resumable mid-epoch."""
        if self.records is None:
            raise RuntimeError("ColdstartDataModule.setup() must run before asking for data")
        if self._sampler is None:
            world, rank = self._world()
            self._sampler = ResumableBatchSampler(
                len(self._batches), 1, True, self.hparams.seed, world, rank, **self._position
            )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        n = self.hparams.bracket_n
        return DataLoader(
            _Batches(self._features, self._batches),
            sampler=self._sampler,
            batch_size=None,
            collate_fn=lambda feats: collate_sft(feats, pad, n),
        )

    def state_dict(self) -> dict[str, Any]:
        """Data position and curation key; Lightning stores it in every checkpoint."""
        if self._sampler is not None:
            position = {"epoch": self._sampler.epoch, "consumed": self._sampler.consumed}
        else:
            position = dict(self._position)
        return {**position, "curation_key": self.report.get("key")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position = {"epoch": int(state_dict.get("epoch", 0)), "consumed": int(state_dict.get("consumed", 0))}
        if self._sampler is not None:
            self._sampler.epoch, self._sampler.consumed = self._position["epoch"], self._position["consumed"]
        saved = state_dict.get("curation_key")
        if saved and self.report.get("key") and saved != self.report["key"]:
            log.warning("checkpoint was trained on curated set %s but %s is loaded now", saved, self.report["key"])


class _Size(NamedTuple):
    """An image's size: all that counting its vision tokens needs."""

    width: int
    height: int


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _default_cache_root() -> Path:
    from ares_lit.models.smollm2 import default_cache_dir

    return default_cache_dir() / "coldstart"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tensorboard(trainer):
    from lightning.pytorch.loggers import TensorBoardLogger

    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None
