"""`PromptDataModule`: the prompts of the AEPO RL stage, with online difficulty state.

Data flow (STYLE.md): this module hands out prompt records; the rollout callback samples responses
into the same batch dict; the LightningModule computes the losses. The module also owns the
`DifficultyTracker` (ARES_SPEC "Online difficulty buckets"), so that each prompt's history, the
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
JSON and JSON lines are read by this module, line by line, because `datasets` aborts a whole file
on one bad line; parquet and hub data go through `load_dataset`.
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

Resuming. The training loader is sized and single-process, so Lightning neither prefetches from
it nor runs it in workers: a batch index is drawn from the sampler exactly when the batch is handed
to the training loop, and `consumed` counts those. The order is a permutation seeded by
(seed, epoch); `state_dict()` stores the epoch and `consumed`, and a resumed run continues with the
next unseen batch. `len(train_dataloader())` is always the full epoch (Lightning's restored batch
counter already includes the consumed part). Under DDP each rank takes its own slice of every
global batch of `batch_size × world_size` prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ares_lit.models.resolve import attached_policy_path, resolve_model_path
from ares_lit.prompting import ARES_PROMPT_SUFFIX, build_prompt_text
from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageError, image_reason, load_image
from data_modules.difficulty import DifficultyTracker

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
BUILTINS = ("builtin:math", "builtin:math:test", "builtin:visual", "builtin:visual:test")
_VISUAL_BUILTINS = ("builtin:visual", "builtin:visual:test")
MALFORMED = object()  # sentinel: a value that cannot be used as text
_ID_SEP = "\x1f"  # unit separator: ("a", "bc") and ("ab", "c") must not hash alike


def prompt_id(question: str, answer: str) -> str:
    """Stable id of a prompt without an id column: sha1 of question + separator + answer, 16 hex."""
    return hashlib.sha1(f"{question}{_ID_SEP}{answer}".encode("utf-8")).hexdigest()[:16]


def collate_prompts(records: list[dict]) -> dict[str, Any]:
    """A training batch: {"prompts": [shallow copies of the records]}, mutable in place."""
    return {"prompts": [dict(r) for r in records]}


# ---------------------------------------------------------------------------------------- reading
def image_values(value: Any) -> list[Any]:
    """A row's image cell as a list: None -> [], a list/tuple -> itself, one image -> [it]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def as_text(value: Any, numbers_ok: bool) -> Any:
    """The value as clean text, None when absent, or MALFORMED."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return MALFORMED
    if isinstance(value, bool):
        return MALFORMED
    if numbers_ok and isinstance(value, (int, float)):
        return str(value) if math.isfinite(value) else MALFORMED
    if not isinstance(value, str):
        return MALFORMED
    try:
        value.encode("utf-8")  # lone surrogates (e.g. JSON "\ud800") cannot be tokenized or saved
    except UnicodeEncodeError:
        return MALFORMED
    return value.strip()


def _read_json_lines(data: bytes) -> tuple[list[Any], int]:
    """Rows of a JSON-lines file; unreadable lines (bad UTF-8, bad JSON) are counted, not raised."""
    rows, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad += 1
    return rows, bad


def _read_json(path: Path, split: str) -> tuple[list[Any], int]:
    """A .json file: an array of objects, {split: [...]}, columns {key: [values]}, or JSON lines."""
    data = path.read_bytes()
    try:
        whole = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return _read_json_lines(data)  # JSON lines saved as .json, or a broken file: go line by line
    if isinstance(whole, list):
        return whole, 0
    if isinstance(whole, dict):
        if isinstance(whole.get(split), list):
            return whole[split], 0
        if whole and all(isinstance(v, list) for v in whole.values()):
            lengths = {len(v) for v in whole.values()}
            if len(lengths) == 1:
                keys = list(whole)
                return [dict(zip(keys, vals)) for vals in zip(*whole.values())], 0
        return [whole], 0
    return [whole], 0


def load_rows(path: str, split: str) -> tuple[list[Any], list[str], int, str]:
    """(rows, column names, unreadable line count, display name) of a data source."""
    if path.startswith("builtin:"):
        raise ValueError(f"unknown builtin data set {path!r}; available: {list(BUILTINS)}")
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(
                f"data file {str(p)!r} does not exist (or is not a file); set --data.init_args.path"
            )
        if suffix == ".jsonl":
            rows, bad = _read_json_lines(p.read_bytes())
        elif suffix == ".json":
            rows, bad = _read_json(p, split)
        elif suffix == ".parquet":
            from datasets import load_dataset  # slow import

            ds = load_dataset("parquet", data_files=str(p), split="train")
            return list(ds), list(ds.column_names), 0, p.name
        else:
            raise ValueError(f"unsupported data file {p.name!r}; use .json, .jsonl or .parquet (or a hub name)")
        columns: dict[str, None] = {}
        for row in rows:
            if isinstance(row, dict):
                columns.update(dict.fromkeys(row))
        return rows, list(columns), bad, p.name
    from datasets import load_dataset

    try:
        ds = load_dataset(path, split=split)
    except Exception as err:  # re-raised with what to change
        raise ValueError(
            f"could not load {path!r} (split {split!r}) with datasets.load_dataset: {err}. Without a hub "
            "connection, point --data.init_args.path at a local .json/.jsonl/.parquet file or use 'builtin:math'."
        ) from err
    return list(ds), list(ds.column_names), 0, path


def _options(value: Any) -> list[str] | dict[str, str] | None:
    """A multiple-choice cell as a list of texts or a {letter: text} dict; None when absent or unusable.

    Also reads the hub form {"label": [letters], "text": [texts]} (e.g. ARC). An unusable cell (not
    a list or dict, or an entry that is not text or a number) is ignored rather than dropping the
    row: the prompt still trains, it is just not graded as a choice.
    """
    if isinstance(value, dict) and set(value) == {"label", "text"}:
        labels, texts = value["label"], value["text"]
        if isinstance(labels, (list, tuple)) and isinstance(texts, (list, tuple)) and len(labels) == len(texts):
            value = dict(zip(labels, texts))
    if isinstance(value, dict):
        items = {as_text(k, numbers_ok=False): as_text(v, numbers_ok=True) for k, v in value.items()}
        if items and all(isinstance(k, str) and k and isinstance(v, str) for k, v in items.items()):
            return items
        return None
    if isinstance(value, (list, tuple)):
        texts = [as_text(v, numbers_ok=True) for v in value]
        return texts if texts and all(isinstance(t, str) for t in texts) else None
    return None


# ---------------------------------------------------------------------------------------- sampler
class ResumableBatchSampler(DistributedSampler):
    """Yields one list of row indices per training step, from a seeded per-epoch permutation.

    Epoch e's order is a permutation seeded by (seed, e) (identity when shuffle is off). Global
    batch b is rows [b·B·R, (b+1)·B·R) of it, B = batch_size, R = num_replicas; rank r takes its
    B-slice. The last incomplete batch is dropped. `consumed` counts batches handed out this
    epoch and iteration restarts from it, so setting (epoch, consumed) resumes mid-epoch.

    It subclasses DistributedSampler only so that Lightning sees a distribution-aware sampler and
    does not try to wrap it; it shards by rank itself and needs no process group.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
        consumed: int = 0,
    ) -> None:  # DistributedSampler.__init__ is skipped on purpose: it wants a dataset and a process group
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas); got rank={rank}, num_replicas={num_replicas}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = epoch
        self.consumed = consumed
        self.drop_last = True

    def __len__(self) -> int:
        return self.num_rows // (self.batch_size * self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_rows).tolist()

    def __iter__(self):
        n = len(self)
        if self.consumed >= n:  # a finished epoch iterated again without set_epoch: move on
            self.epoch, self.consumed = self.epoch + 1, 0
        order = self.permutation(self.epoch)
        step = self.batch_size * self.num_replicas
        for b in range(self.consumed, n):
            start = b * step + self.rank * self.batch_size
            self.consumed = b + 1  # counted when handed out, not when collated or trained on
            yield order[start : start + self.batch_size]


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


# ------------------------------------------------------------------------------------- datamodule
class PromptDataModule(LightningDataModule):
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
        alpha_init: initial α_d of the entropy reward for every bucket.
        alpha_eta: α_d step size η.
        alpha_bounds: α_d is clipped to [low, high].
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
        alpha_eta: float = 0.05,
        alpha_bounds: tuple[float, float] = (0.0, 2.0),
        easy_min: float = 2 / 3,
        medium_min: float = 1 / 3,
        history: int = 8,
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
        self.path = path
        self.tokenizer_path = tokenizer_path
        self.question_key = question_key
        self.answer_key = answer_key
        self.image_key = image_key
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.id_key = id_key
        self.split = split
        self.builtin_size = builtin_size
        self.builtin_seed = builtin_seed
        self.prompt_suffix = prompt_suffix
        self.system_prompt = system_prompt
        self.max_prompt_length = max_prompt_length
        self.batch_size = batch_size
        self.val_path = val_path
        self.val_size = val_size
        self.shuffle = shuffle
        self.seed = seed
        self.tracker = DifficultyTracker(
            easy_min=easy_min,
            medium_min=medium_min,
            target_momentum=target_momentum,
            alpha_init=alpha_init,
            alpha_eta=alpha_eta,
            alpha_bounds=alpha_bounds,
            history=history,
        )
        self.tokenizer: Any = None  # loaded in setup(); may be set beforehand to share the policy's
        self.processor: Any = None  # VisionProcessor, built in setup() when image_key is set (or set beforehand)
        self.train_records: list[dict] | None = None
        self.val_records: list[dict] = []
        self.num_rows = 0
        self.drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.val_drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._sampler: ResumableBatchSampler | None = None
        self._position = {"epoch": 0, "consumed": 0}  # applied when the sampler is built
        self._refill = {"cycle": 0, "pos": 0}
        self._refill_cache: tuple[int, list[int]] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load, validate and tokenize the prompts (once; later calls are no-ops)."""
        if self.train_records is not None:
            return
        source = self._read(self.path)
        val_source = self._read(self.val_path) if self.val_path else None  # columns checked before any tokenizing
        if self.tokenizer is None and not self.tokenizer_path:
            self.tokenizer_path = attached_policy_path(self)
        if self.tokenizer is None and not self.tokenizer_path:
            raise ValueError(
                "data.tokenizer_path is not set; set --data.init_args.tokenizer_path to the policy's tokenizer"
            )
        tokenizer = self._load_tokenizer()
        if self.image_key:
            self._load_processor()
        records, self.drop_counts = self._records(tokenizer, *source)
        self.num_rows = len(records)
        if val_source is not None:
            self.val_records, self.val_drop_counts = self._records(tokenizer, *val_source)
            if self.val_size:
                self.val_records = self.val_records[: self.val_size]  # the first usable rows, in file order
        elif self.val_size:
            if self.val_size >= len(records):
                raise ValueError(
                    f"data.val_size={self.val_size} leaves no training rows out of {len(records)} usable rows"
                )
            held = set(np.random.default_rng([self.seed, 0, 2]).permutation(len(records))[: self.val_size].tolist())
            self.val_records = [r for i, r in enumerate(records) if i in held]
            records = [r for i, r in enumerate(records) if i not in held]
        needed = self.batch_size * self._world()[0]
        if len(records) < needed:
            raise ValueError(
                f"{len(records)} training prompts are fewer than one step needs ({needed} = batch_size × world size); "
                "lower data.batch_size or add data"
            )
        self.train_records = records

    def _read(self, path: str) -> tuple[list[Any], int, str, Path | None]:
        """(rows, unreadable lines, display name, folder of relative image paths) of a source,
        after checking that the configured columns exist (the first check)."""
        base_dir = None
        if path in ("builtin:math", "builtin:math:test"):
            from data_modules import builtin_math

            split = "test" if path.endswith(":test") else "train"
            n = builtin_math.TEST_SIZE if split == "test" else self.builtin_size
            rows: list[Any] = builtin_math.generate_problems(n, self.builtin_seed, split=split)
            columns, bad, name = list(rows[0]), 0, path
        elif path in _VISUAL_BUILTINS:
            from data_modules import builtin_visual

            split = "test" if path.endswith(":test") else "train"
            n = builtin_visual.TEST_SIZE if split == "test" else self.builtin_size
            rows = builtin_visual.generate_problems(n, self.builtin_seed, split=split)
            columns, bad, name = list(rows[0]), 0, path
        else:
            rows, columns, bad, name = load_rows(path, self.split)
            if Path(path).expanduser().is_file():
                base_dir = Path(path).expanduser().resolve().parent
        for option in ("question_key", "answer_key", "image_key", "id_key"):
            key = getattr(self, option)
            if key is not None and key not in columns:
                raise ValueError(
                    f"data.{option}={key!r} is not a column of {name}; columns are {columns}; "
                    f"set --data.init_args.{option}"
                )
        return rows, bad, name, base_dir

    def _model_dir(self) -> str | None:
        """tokenizer_path with `builtin:*` model names resolved to their local folder."""
        path = self.tokenizer_path
        return resolve_model_path(path) if path and path.startswith("builtin:") else path

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            from transformers import AutoTokenizer  # slow import

            self.tokenizer = AutoTokenizer.from_pretrained(self._model_dir())
        build_prompt_text(self.tokenizer, "?", self.prompt_suffix, self.system_prompt)  # no chat template: fail now
        if self.image_key:
            try:
                build_prompt_text(self.tokenizer, "?", self.prompt_suffix, self.system_prompt, num_images=1)
            except Exception as err:  # jinja raises many kinds
                raise ValueError(
                    f"data.image_key={self.image_key!r} is set but the chat template of {self.tokenizer_path!r} cannot "
                    f"render image content ({type(err).__name__}: {err}); point data.tokenizer_path at the "
                    "vision-language model, or unset data.image_key for text-only prompts"
                ) from err
        return self.tokenizer

    def _load_processor(self) -> Any:
        """The policy's `VisionProcessor`; raises with what to change when the model is not a VL model."""
        if self.processor is not None:
            return self.processor
        if not self.tokenizer_path:
            self.tokenizer_path = attached_policy_path(self)
        if not self.tokenizer_path:
            raise ValueError(
                f"data.image_key={self.image_key!r} is set, and images need the policy's image processor, which "
                "loads from data.tokenizer_path; set --data.init_args.tokenizer_path to the vision-language model"
            )
        from ares_lit.vision import VisionProcessor

        try:
            self.processor = VisionProcessor.from_pretrained(
                self._model_dir(), tokenizer=self.tokenizer, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        except (ValueError, OSError) as err:
            raise ValueError(
                f"data.image_key={self.image_key!r} needs a vision-language policy (Qwen2-VL / Qwen2.5-VL) at "
                f"data.tokenizer_path={self.tokenizer_path!r}: {str(err).rstrip('.')}. Point data.tokenizer_path at "
                "the VL model (e.g. builtin:tiny-qwen2.5-vl), or unset data.image_key for text-only prompts"
            ) from err
        return self.processor

    def _open_images(self, record: dict, base_dir: Path | None) -> str | None:
        """Decode the record's images in place and count their vision tokens; the drop reason on failure."""
        try:
            images = [load_image(value, base_dir) for value in record["images"]]
            record["num_image_tokens"] = sum(self.processor.image_tokens(image) for image in images)
        except ImageError as err:
            return image_reason(err)
        record["images"] = images
        return None

    def _records(
        self, tokenizer: Any, rows: list[Any], unreadable: int, name: str, base_dir: Path | None = None
    ) -> tuple[list[dict], dict[str, int]]:
        """Clean rows into prompt records; returns (records, drop counts by reason)."""
        drops = dict.fromkeys(DROP_REASONS, 0)
        drops["malformed"] += unreadable
        kept: list[dict] = []
        for row in rows:
            reason, record = self._clean(row)
            if reason is None and self.image_key:
                reason = self._open_images(record, base_dir)
            if reason:
                drops[reason] += 1
            else:
                kept.append(record)
        for record in kept:
            n_images = len(record["images"]) if "images" in record else 0
            record["prompt_text"] = build_prompt_text(
                tokenizer, record["question"], self.prompt_suffix, self.system_prompt, n_images
            )
        ids = tokenizer([r["prompt_text"] for r in kept], add_special_tokens=False)["input_ids"] if kept else []
        records = []
        for record, prompt_ids in zip(kept, ids):
            if self.image_key:
                try:
                    prompt_ids = self.processor.expand(prompt_ids, record["images"])
                except ValueError:  # placeholders and images disagree
                    drops["malformed"] += 1
                    continue
            if len(prompt_ids) > self.max_prompt_length:
                drops["too_long"] += 1
                continue
            record["prompt_ids"] = list(prompt_ids)
            records.append(record)
        dropped = sum(drops.values())
        if not records:
            raise ValueError(
                f"no usable prompts in {name}: dropped {drops} of {len(rows) + unreadable} rows. Check "
                "data.question_key / data.answer_key, the file's encoding, and data.max_prompt_length"
            )
        if dropped:
            total = len(rows) + unreadable
            log.warning("%s: dropped %d of %d rows %s; %d prompts remain", name, dropped, total, drops, len(records))
        return records, drops

    def _clean(self, row: Any) -> tuple[str | None, dict | None]:
        """(drop reason, None) or (None, record without prompt_text / prompt_ids)."""
        if not isinstance(row, dict):
            return "malformed", None
        question = as_text(row.get(self.question_key), numbers_ok=False)
        answer = as_text(row.get(self.answer_key), numbers_ok=True)
        if question is MALFORMED or answer is MALFORMED:
            return "malformed", None
        if not question:
            return "empty_prompt", None
        if not answer:
            return "no_answer", None
        pid = row.get(self.id_key) if self.id_key else None
        pid = str(pid) if pid is not None else prompt_id(question, answer)
        record = {"id": pid, "question": question, "answer": answer}
        if self.image_key:
            record["images"] = image_values(row.get(self.image_key))
        level = row.get("level")
        level = row.get("difficulty") if level is None else level
        if level is not None:
            record["level"] = str(level)
        if row.get("source") is not None:
            record["source"] = str(row["source"])
        options = _options(row.get("options") if row.get("options") is not None else row.get("choices"))
        if options is not None:
            record["options"] = options
        return None, record

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

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
        if self._sampler is None:
            world, rank = self._world()
            self._sampler = ResumableBatchSampler(
                len(records), self.batch_size, self.shuffle, self.seed, world, rank, **self._position
            )
        return DataLoader(_Records(records), sampler=self._sampler, batch_size=None, collate_fn=collate_prompts)

    def val_dataloader(self) -> DataLoader | list:
        """Validation prompts in file order, in batches of `batch_size` (last one kept); [] for none."""
        self._require_setup()
        if not self.val_records:
            return []
        # `index` (the position in the hold-out) fixes each problem's validation seeds.
        records = [dict(r, index=i) for i, r in enumerate(self.val_records)]
        return DataLoader(_Records(records), batch_size=self.batch_size, shuffle=False, collate_fn=collate_prompts)

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
            rng = np.random.default_rng([self.seed, cycle, 1, self._world()[1]])
            self._refill_cache = (cycle, rng.permutation(n).tolist())
        return self._refill_cache[1]

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Tracker state and data position; Lightning stores it in every checkpoint."""
        if self._sampler is not None:
            position = {"epoch": self._sampler.epoch, "consumed": self._sampler.consumed}
        else:
            position = dict(self._position)
        return {
            "tracker": self.tracker.state_dict(),
            **position,
            "refill": dict(self._refill),
            "num_rows": self.num_rows,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the tracker and the data position: the next batch is the first unseen one."""
        self.tracker.load_state_dict(state_dict["tracker"])
        self._position = {"epoch": int(state_dict.get("epoch", 0)), "consumed": int(state_dict.get("consumed", 0))}
        if self._sampler is not None:
            self._sampler.epoch, self._sampler.consumed = self._position["epoch"], self._position["consumed"]
        self._refill = dict(state_dict.get("refill", {"cycle": 0, "pos": 0}))
        self._refill_cache = None  # the pass's order is re-derived from (seed, cycle, rank)
        saved_rows = state_dict.get("num_rows")
        if saved_rows and self.num_rows and saved_rows != self.num_rows:
            log.warning(
                "checkpoint was saved with %d prompts but %d are loaded now; the resumed order differs",
                saved_rows,
                self.num_rows,
            )
