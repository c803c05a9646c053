"""`PromptDataModule`: the prompts of the AEPO RL stage, with online difficulty state.

Data flow (STYLE.md): this module hands out prompt records; the rollout callback samples responses
into the same batch dict; the LightningModule computes the losses. The module also owns the
`DifficultyTracker` (docs/algorithm.md "Online difficulty buckets"), so that each prompt's history, the
targets T_d and the α_d are saved in checkpoints with the data position.

A prompt record is a plain dict:
    {"id": str, "question": str, "answer": str, "prompt_text": str, "prompt_ids": list[int]}
plus, when `image_key` is set, "images" (the row's images, decoded: a list of RGB `PIL.Image`)
and "num_image_tokens" (int, the vision tokens of all of them). Rows that have them also carry,
for evaluation by group and multiple-choice grading: "level" (str, the row's `level`, else its
`difficulty`), "source" (str) and "options" (the row's `options` or `choices`: a list of texts,
or a dict letter -> text). Rows without them are kept. A training batch is the MUTABLE
dict {"prompts": [records...]}; the records are shallow copies, so callbacks may add keys freely.

Loading. `path` is `builtin:math` (data_modules/builtin_math.py), `builtin:visual`
(data_modules/builtin_visual.py; sets `image_key="images"`), their held-out test splits
`builtin:math:test` / `builtin:visual:test` (TEST_SIZE problems that no train problem equals, by
construction; see those files), a local .json/.jsonl/.parquet file, or a `datasets` hub name.
Sources are read by data_modules/readers.py (JSON and JSON lines line by line, so that one bad
line is one `malformed` drop; parquet and hub data through `load_dataset`).
Column names are checked first, before the tokenizer is even loaded. Then bad rows are dropped
and counted in `drop_counts`, each under the first reason that applies:
    malformed     unparsable JSON line, a row that is not an object, invalid UTF-8, a lone
                  surrogate, a non-string question, an answer that is not a string or a number
    empty_prompt  question missing, None or blank
    no_answer     answer missing, None or blank
    missing_image an image path that does not exist
    bad_image     an image that cannot be decoded (corrupt bytes, unknown form, aspect ratio > 200)
    too_long      more than `max_prompt_length` tokens after the chat template, image tokens included
A row whose image count differs from the image placeholders of its prompt (e.g. a question that
contains `<|image_pad|>` itself) is malformed.

Images (`image_key` set; rows without images are fine): `self.processor`, a `VisionProcessor`
of the policy (data.tokenizer_path must be a Qwen2-VL / Qwen2.5-VL model), is built in setup.
Each image of a row may be a path (relative paths are resolved against the data file's folder),
bytes, a PIL image, or a `datasets` Image value; all are decoded in setup, and records keep the
decoded images (fine for small sets: a 224x224 RGB image is 150 KB). Each `<|image_pad|>` the
chat template emits is expanded to the image's vision-token count (`VisionProcessor.expand`,
resized within `min_pixels` / `max_pixels`), so `prompt_ids` is exactly what the model sees and
`max_prompt_length` counts image tokens. Not doing this is what makes a long-image prompt fail
mid-training with "Image features and image tokens do not match".

Ids are `str(row[id_key])` when `id_key` is set (rows without one fall back), else the first 16
hex digits of sha1(question + "\\x1f" + answer): stable across runs and machines.

Loading shared with the cold-start stage (tokenizer, image processor, column checks, the common
columns, images, resumable position) is in data_modules/base.py; the sampler in data_modules/sampler.py.

Resuming. The training loader is sized and single-process, so Lightning neither prefetches from
it nor runs it in workers: a batch index is drawn from the sampler exactly when the batch is handed
to the training loop, and `consumed` counts those. The order is a permutation seeded by
(seed, epoch); `state_dict()` stores the epoch and `consumed`, and a resumed run continues with the
next unseen batch. `len(train_dataloader())` is always the full epoch (Lightning's restored batch
counter already includes the consumed part). Under DDP each rank takes its own slice of every
global batch of `batch_size × world_size` prompts.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ares_lit.prompting import ARES_PROMPT_SUFFIX, build_prompt_text
from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageError, image_reason
from data_modules.base import PolicyDataModule
from data_modules.difficulty import DifficultyTracker
from data_modules.readers import (  # noqa: F401  (MALFORMED, as_text, ...: their old import path still works)
    MALFORMED,
    Source,
    as_text,
    choice_options,
    image_values,
    load_rows,
    prompt_id,
    read_prompt_source,
)
from data_modules.sampler import ResumableBatchSampler

__all__ = [
    "DROP_REASONS",
    "MALFORMED",
    "PromptDataModule",
    "ResumableBatchSampler",
    "as_text",
    "collate_prompts",
    "image_values",
    "load_rows",
    "prompt_id",
]

log = logging.getLogger(__name__)

DROP_REASONS = ("malformed", "empty_prompt", "no_answer", "missing_image", "bad_image", "too_long")
_VISUAL_BUILTINS = ("builtin:visual", "builtin:visual:test")
_COLUMNS = ("question_key", "answer_key", "image_key", "id_key")


def collate_prompts(records: list[dict]) -> dict[str, Any]:
    """A training batch: {"prompts": [shallow copies of the records]}, mutable in place."""
    return {"prompts": [dict(r) for r in records]}


class _Records(Dataset):
    """Prompt records; indexing with a list of indices returns a list (one batch)."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            return [self.records[i] for i in index]
        return self.records[index]


class PromptDataModule(PolicyDataModule):
    """Prompts for AEPO with online difficulty buckets, bad-row accounting and resumable order.

    Args:
        path: 'builtin:math' (generated arithmetic), 'builtin:visual' (generated pictures), their held-out
            test splits 'builtin:math:test' / 'builtin:visual:test', a local .json/.jsonl/.parquet file, or a
            datasets hub name.
        tokenizer_path: the policy's tokenizer (a local folder or hub id); required before setup.
        question_key: column holding the question text.
        answer_key: column holding the gold final answer (strings; numbers are converted).
        image_key: column holding each row's images (paths, bytes, PIL or datasets Image); None for text only.
        min_pixels: lower bound of an image's area after resizing (pixels), as the VL processor's.
        max_pixels: upper bound of an image's area after resizing (pixels); bounds its vision tokens.
        id_key: column holding a stable prompt id; None hashes question and answer (sha1, 16 hex).
        split: split to load from a hub dataset, or the key of a {split: [...]} .json file.
        builtin_size: number of generated problems for 'builtin:math' / 'builtin:visual' (test splits: TEST_SIZE).
        builtin_seed: seed of the 'builtin:math' / 'builtin:visual' generators, test splits included.
        prompt_suffix: text appended to every question after a newline; '' for none.
        system_prompt: optional system message of the chat template.
        max_prompt_length: prompts longer than this many tokens (after the chat template) are dropped.
        batch_size: prompts per training step on each device (global = batch_size × world size).
        val_path: a separate validation file, hub name or builtin (e.g. 'builtin:math:test'), read with the same keys.
        val_size: without val_path, number of usable rows held out of `path` for validation (0 for none); with
            val_path, keep only its first val_size usable rows (0 for all).
        shuffle: shuffle the training order (a new seeded permutation each epoch).
        seed: seed of the training order, the refill stream and the validation hold-out.
        target_momentum: EMA momentum of the bucket targets T_d; None uses each batch's mean.
        alpha_init: α_0, the initial α_d of the entropy reward for every bucket.
        alpha_eta: η of the α controller; null takes the form's own (0.5 for log_ratio, 0.05 for the others).
        alpha_bounds: α_d is clipped to [low, high].
        alpha_update: the α controller (docs/stages.md "The α controller and τ"): 'log_ratio' (default, ours;
            α_d = clip(α_0 + s_d·η·ln((1 + T_d)/(1 + T*_d))) after K calibration batches set T*_d),
            'absolute' (paper), 'relative' (our withdrawn 2026-11-30 rule) or 'released' (authors' code).
        calibration_batches: K, the batches of a bucket whose mean N_HE becomes its set-point T*_d (log_ratio).
        alpha_min_responses: a batch with fewer responses of a bucket updates neither its T_d nor its α_d;
            null takes the form's own (4 for log_ratio, 1 for the others).
        easy_min: group accuracy at or above which a prompt is easy.
        medium_min: group accuracy at or above which a prompt is medium (below: hard).
        history: group accuracies kept per prompt in the tracker.
    """

    def __init__(
        self,
        path: str = "builtin:math",
        tokenizer_path: str | None = None,
        question_key: str = "question",
        answer_key: str = "answer",
        image_key: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        id_key: str | None = None,
        split: str = "train",
        builtin_size: int = 512,
        builtin_seed: int = 0,
        prompt_suffix: str = ARES_PROMPT_SUFFIX,
        system_prompt: str | None = None,
        max_prompt_length: int = 512,
        batch_size: int = 8,
        val_path: str | None = None,
        val_size: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        target_momentum: float | None = None,
        alpha_init: float = 0.5,
        alpha_eta: float | None = None,
        alpha_bounds: tuple[float, float] = (0.0, 2.0),
        easy_min: float = 2 / 3,
        medium_min: float = 1 / 3,
        history: int = 8,
        alpha_update: str = "log_ratio",
        calibration_batches: int = 5,
        alpha_min_responses: int | None = None,
    ) -> None:
        super().__init__()
        minimums = {
            "batch_size": (batch_size, 1),
            "max_prompt_length": (max_prompt_length, 1),
            "builtin_size": (builtin_size, 1),
            "val_size": (val_size, 0),
        }
        for name, (value, low) in minimums.items():
            if value < low:
                raise ValueError(f"data.{name} must be >= {low}; got {value}")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"need 0 < data.min_pixels <= data.max_pixels; got min_pixels={min_pixels}, max_pixels={max_pixels}"
            )
        if image_key is None and (path in _VISUAL_BUILTINS or val_path in _VISUAL_BUILTINS):
            image_key = "images"  # before save_hyperparameters, so the logged config says so
        self.save_hyperparameters()
        self.tracker = DifficultyTracker(
            easy_min=easy_min,
            medium_min=medium_min,
            target_momentum=target_momentum,
            alpha_init=alpha_init,
            alpha_eta=alpha_eta,
            alpha_bounds=alpha_bounds,
            history=history,
            alpha_update=alpha_update,
            calibration_batches=calibration_batches,
            alpha_min_responses=alpha_min_responses,
        )
        self.train_records: list[dict] | None = None
        self.val_records: list[dict] = []
        self.num_rows = 0
        self.drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.val_drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._refill = {"cycle": 0, "pos": 0}
        self._refill_cache: tuple[int, list[int]] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load, validate and tokenize the prompts (once; later calls are no-ops)."""
        if self.train_records is not None:
            return
        hp = self.hparams
        source, val_source = self.check_columns()  # before any tokenizing
        tokenizer = self._load_tokenizer()
        if hp.image_key:
            self._require_image_template()
            self._load_processor()
        records, self.drop_counts = self._records(tokenizer, source)
        self.num_rows = len(records)
        if val_source is not None:
            self.val_records, self.val_drop_counts = self._records(tokenizer, val_source)
            if hp.val_size:
                self.val_records = self.val_records[: hp.val_size]  # the first usable rows, in file order
        elif hp.val_size:
            if hp.val_size >= len(records):
                raise ValueError(
                    f"data.val_size={hp.val_size} leaves no training rows out of {len(records)} usable rows"
                )
            held = set(np.random.default_rng([hp.seed, 0, 2]).permutation(len(records))[: hp.val_size].tolist())
            self.val_records = [r for i, r in enumerate(records) if i in held]
            records = [r for i, r in enumerate(records) if i not in held]
        needed = hp.batch_size * self._world()[0]
        if len(records) < needed:
            raise ValueError(
                f"{len(records)} training prompts are fewer than one step needs ({needed} = batch_size × world size); "
                "lower data.batch_size or add data"
            )
        self.train_records = records

    def check_columns(self) -> tuple[Source, Source | None]:
        """Read `path` (and `val_path`) and check that the configured columns exist: the first check
        of setup, before any tokenizer or model loads. Returns the sources read (val: None if unset)."""
        hp = self.hparams
        sources = []
        for path in (hp.path, hp.val_path):
            source = read_prompt_source(path, hp.split, hp.builtin_size, hp.builtin_seed) if path else None
            if source is not None:
                self._check_columns(source.columns, source.name, _COLUMNS)
                self._check_image_folders(source)
            sources.append(source)
        return sources[0], sources[1]

    def _records(self, tokenizer: Any, source: Source) -> tuple[list[dict], dict[str, int]]:
        """Clean a source's rows into prompt records; returns (records, drop counts by reason)."""
        hp = self.hparams
        drops = dict.fromkeys(DROP_REASONS, 0)
        drops["malformed"] += source.unreadable
        kept: list[dict] = []
        for row in source.rows:
            reason, record = self._clean(row)
            if reason is None and hp.image_key:
                try:
                    record["images"], record["num_image_tokens"] = self._open_images(record["images"], source.base_dir)
                except ImageError as err:
                    reason = image_reason(err)
            if reason:
                drops[reason] += 1
            else:
                kept.append(record)
        for record in kept:
            n_images = len(record["images"]) if "images" in record else 0
            record["prompt_text"] = build_prompt_text(
                tokenizer, record["question"], hp.prompt_suffix, hp.system_prompt, n_images
            )
        ids = tokenizer([r["prompt_text"] for r in kept], add_special_tokens=False)["input_ids"] if kept else []
        records = []
        for record, prompt_ids in zip(kept, ids):
            if hp.image_key:
                try:
                    prompt_ids = self.processor.expand(prompt_ids, record["images"])
                except ValueError:  # placeholders and images disagree
                    drops["malformed"] += 1
                    continue
            if len(prompt_ids) > hp.max_prompt_length:
                drops["too_long"] += 1
                continue
            record["prompt_ids"] = list(prompt_ids)
            records.append(record)
        dropped = sum(drops.values())
        total = len(source.rows) + source.unreadable
        if not records:
            raise ValueError(
                f"no usable prompts in {source.name}: dropped {drops} of {total} rows. Check "
                "data.question_key / data.answer_key, the file's encoding, and data.max_prompt_length"
            )
        if dropped:
            log.warning("%s: dropped %d of %d rows %s; %d prompts remain", source.name, dropped, total, drops, len(records))
        return records, drops

    def _clean(self, row: Any) -> tuple[str | None, dict | None]:
        """The shared columns (base class), plus "level", "source" and "options" when the row has them."""
        reason, record = super()._clean(row)
        if reason:
            return reason, None
        level = row.get("level")
        level = row.get("difficulty") if level is None else level
        if level is not None:
            record["level"] = str(level)
        if row.get("source") is not None:
            record["source"] = str(row["source"])
        options = choice_options(row.get("options") if row.get("options") is not None else row.get("choices"))
        if options is not None:
            record["options"] = options
        return None, record

    def _require_setup(self) -> list[dict]:
        if self.train_records is None:
            raise RuntimeError("PromptDataModule.setup() must run before asking for data")
        return self.train_records

    # ------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        """Batches of `batch_size` prompt records as {"prompts": [...]}, resumable mid-epoch.

        Single-process on purpose (records are pre-tokenized, collation is trivial): workers
        would prefetch indices and `consumed` would run ahead of the training loop.
        """
        records = self._require_setup()
        hp = self.hparams
        sampler = self._resumable_sampler(len(records), hp.batch_size, hp.shuffle, hp.seed)
        return DataLoader(_Records(records), sampler=sampler, batch_size=None, collate_fn=collate_prompts)

    def val_dataloader(self) -> DataLoader | list:
        """Validation prompts in file order, in batches of `batch_size` (last one kept); [] for none."""
        self._require_setup()
        if not self.val_records:
            return []
        # `index` (the position in the hold-out) fixes each problem's validation seeds.
        records = [dict(r, index=i) for i, r in enumerate(self.val_records)]
        return DataLoader(_Records(records), batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_prompts)

    def test_dataloader(self) -> DataLoader | list:
        """The validation prompts (val_path, or the val_size hold-out), so `ares_lit test` scores the hold-out."""
        return self.val_dataloader()

    def refill_prompts(self, k: int) -> list[dict]:
        """k more prompt records from a separate seeded stream, wrapping around the data forever.

        Used by the group filter (DAPO dynamic sampling) to replace prompt groups that carry no
        signal. Each pass over the data is a fresh permutation seeded by (seed, pass, rank), so the
        stream is independent of the training order and differs between ranks.
        """
        records = self._require_setup()
        out: list[dict] = []
        while len(out) < k:
            if self._refill["pos"] >= len(records):
                self._refill = {"cycle": self._refill["cycle"] + 1, "pos": 0}
            order = self._refill_order(self._refill["cycle"], len(records))
            pos = self._refill["pos"]
            take = min(k - len(out), len(records) - pos)
            out.extend(dict(records[i]) for i in order[pos : pos + take])
            self._refill["pos"] = pos + take
        return out

    def _refill_order(self, cycle: int, n: int) -> list[int]:
        if self._refill_cache is None or self._refill_cache[0] != cycle:
            rng = np.random.default_rng([self.hparams.seed, cycle, 1, self._world()[1]])
            self._refill_cache = (cycle, rng.permutation(n).tolist())
        return self._refill_cache[1]

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Tracker state and data position; Lightning stores it in every checkpoint."""
        return {
            "tracker": self.tracker.state_dict(),
            **self._position_state(),
            "refill": dict(self._refill),
            "num_rows": self.num_rows,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the tracker and the data position: the next batch is the first unseen one."""
        self.tracker.load_state_dict(state_dict["tracker"])
        self._load_position(state_dict)
        self._refill = dict(state_dict.get("refill", {"cycle": 0, "pos": 0}))
        self._refill_cache = None  # the pass's order is re-derived from (seed, cycle, rank)
        saved_rows = state_dict.get("num_rows")
        if saved_rows and self.num_rows and saved_rows != self.num_rows:
            log.warning(
                "checkpoint was saved with %d prompts but %d are loaded now; the resumed order differs",
                saved_rows,
                self.num_rows,
            )
