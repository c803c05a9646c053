"""`ColdstartDataModule`: the AdaCS cold-start data (docs/algorithm.md "AdaCS"): a pool of problems with
candidate traces and pass rates, curated once into a cached set and served as SFT batches.

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

Where things are: the AdaCS rules (p, brackets, L(0)/L(1), L_target(p), bracket quotas, trace
normalization) in data_modules/adacs.py; grading, measuring and selecting in
data_modules/curation.py; the report and its figures in data_modules/curation_report.py; SFT
features and batches in data_modules/sft.py; the loading shared with the prompt DataModule
(tokenizer, image processor, column checks, images, resumable position) in data_modules/base.py.
This module reads and cleans the pool, runs the curation once, caches it, and serves it.

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
same inputs loads them instead of curating again. The report is also written to the run's log
dir (curation_report.json) and to TensorBoard (data_modules/curation_report.py).

Curation runs once: Lightning calls `prepare_data` on one process per node while the other ranks
wait, and it curates into the cache; `setup`, on every rank, reads the cached set. (`setup`
without `prepare_data`, e.g. called directly, curates itself when the cache lacks the set.)

Batches (data_modules/sft.py): right-padded `input_ids`, `attention_mask`, `labels` (-100 on the
prompt and on padding), `bracket` [B] and `bracket_n`, plus `pixel_values` / `image_grid_thw`
when the batch has images. Batches are length-grouped; their order is reshuffled each epoch and
resumes mid-epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import DataLoader

from ares_lit.models.cache import build_once
from ares_lit.prompting import ARES_PROMPT_SUFFIX
from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageError, image_reason, load_image
from data_modules.adacs import bracket_of, normalize_trace, pass_rate, target_length, uniform_quotas
from data_modules.base import PolicyDataModule
from data_modules.curation import curate
from data_modules.curation_report import log_report
from data_modules.readers import MALFORMED, POOL_BUILTINS, Source, as_text, read_pool, trace_candidates
from data_modules.sft import SFTBatches, collate_sft, length_grouped_batches, sft_features

# collate_sft and the AdaCS rules below keep their old import path (data_modules.coldstart).
__all__ = ["DROP_REASONS", "ColdstartDataModule", "collate_sft", "normalize_trace", "target_length", "uniform_quotas"]

log = logging.getLogger(__name__)

DROP_REASONS = (
    "malformed", "empty_prompt", "no_answer", "no_pass_rate", "no_traces", "missing_image", "bad_image",
    "no_correct_trace", "too_long",
)
CURATION_VERSION = 3  # bump when curation changes, so that cached sets are not reused
CURATED, REPORT = "curated.jsonl", "report.json"
_COLUMNS = ("question_key", "answer_key", "traces_key", "source_key", "image_key", "id_key")


class ColdstartDataModule(PolicyDataModule):
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
        path: str = POOL_BUILTINS[0],
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
        if path == "builtin:visual" and image_key is None:
            image_key = "images"  # before save_hyperparameters, so the logged config says so
        self.save_hyperparameters()
        self.records: list[dict] | None = None  # curated rows (what curated.jsonl holds)
        self.report: dict[str, Any] = {}
        self.drop_counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.cache_path: Path | None = None
        self.reused_cache = False  # True when setup found the set curated by an earlier run or another process
        self.val_records: list[dict] = []
        self._features: list[dict] = []
        self._batches: list[list[int]] = []
        self._pool: tuple[Source, str] | None = None  # read by prepare_data, handed to setup in the same process
        self._curated: Path | None = None  # the cached set this process curated, if any

    # ------------------------------------------------------------------ prepare_data and setup
    def prepare_data(self) -> None:
        """Curate into the cache, once: Lightning calls this on one process per node while the other
        ranks wait; `setup` then reads the cached set on every rank."""
        self._curate_into_cache()

    def setup(self, stage: str | None = None) -> None:
        """Read the cached curated set (curating first if the cache lacks it), tokenize, log the report."""
        if self.records is not None:
            return
        hp = self.hparams
        folder, val, curated_now = self._curate_into_cache()
        self._pool = None
        world, rank = self._world()
        if curated_now and world > 1:
            log.warning("rank %d curated the cold-start set itself: prepare_data's cache is not at %s", rank, folder)
        self.cache_path = folder
        self.records = [json.loads(line) for line in (folder / CURATED).read_text(encoding="utf-8").splitlines() if line]
        self.report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        self.reused_cache = folder != self._curated
        if self.reused_cache and rank == 0:
            n = len(self.records)
            print(f"[ares_lit] reusing the curated cold-start set {folder / CURATED} ({n} problems)", flush=True)
        self.drop_counts = {r: int(self.report["dropped"].get(r, 0)) for r in DROP_REASONS}
        self._features = sft_features(
            self.records, self.tokenizer, self.processor, folder, hp.prompt_suffix, hp.system_prompt
        )
        lengths = [len(f["prompt_ids"]) + len(f["response_ids"]) for f in self._features]
        self._batches = length_grouped_batches(lengths, hp.batch_size, hp.group_batches, hp.seed)
        if len(self._batches) < world:
            raise ValueError(
                f"{len(self.records)} curated problems make {len(self._batches)} batches, fewer than the "
                f"{world} devices; lower data.batch_size or raise data.size"
            )
        if self.trainer is not None:
            log_report(self.trainer, self.report, self.records, hp.bracket_n)
        if val is not None:
            val.tokenizer, val.processor = self.tokenizer, self.processor
            val.setup("validate")
            limit = hp.val_size or None
            self.val_records = [dict(r, index=i) for i, r in enumerate(val.train_records[:limit])]

    def _curate_into_cache(self) -> tuple[Path, Any, bool]:
        """Check the pool's and val_path's columns, load the tokenizer (and processor), and curate
        into `cache_dir/<key>/` unless that set is there. Returns (its folder, the validation
        PromptDataModule or None, whether this call curated)."""
        hp = self.hparams
        if self._pool is None:
            self._pool = self._read()  # raises on bad keys, before any tokenizer
        pool, fingerprint = self._pool
        val = self._val_source()  # its columns are checked here too, before anything expensive
        tokenizer = self._load_tokenizer()
        if hp.image_key:
            self._load_processor()
        root = Path(hp.cache_dir) if hp.cache_dir else _default_cache_root()
        folder = root / self._cache_key(fingerprint, tokenizer)
        complete = lambda path: (path / CURATED).is_file() and (path / REPORT).is_file()  # noqa: E731
        if complete(folder):
            return folder, val, False
        built = []

        def curate_into(tmp: Path) -> None:  # under the cache lock: another rank waits, then reuses the set
            records, report = self._curate(pool)
            report["key"] = folder.name
            self._save(tmp, records, report, pool.base_dir)
            built.append(folder)

        build_once(folder, complete, curate_into)  # a temp folder renamed into place (models/cache.py)
        if built:
            self._curated = folder
        return folder, val, bool(built)

    def _val_source(self):
        """A PromptDataModule over val_path (columns checked now, rows read in setup), or None."""
        hp = self.hparams
        if not hp.val_path:
            return None
        from data_modules.prompts import PromptDataModule

        val = PromptDataModule(
            path=hp.val_path, tokenizer_path=hp.tokenizer_path, question_key=hp.question_key,
            answer_key=hp.answer_key, image_key=None if hp.val_path.startswith(("builtin:math", "builtin:chain")) else hp.image_key,
            min_pixels=hp.min_pixels, max_pixels=hp.max_pixels, prompt_suffix=hp.prompt_suffix,
            system_prompt=hp.system_prompt, max_prompt_length=hp.max_length, batch_size=1, shuffle=False,
        )
        val.check_columns()
        return val

    def val_dataloader(self) -> DataLoader | list:
        """Validation problems as prompt records ({"prompts": [...]}), in order; [] without val_path."""
        if not self.val_records:
            return []
        from data_modules.prompts import collate_prompts

        return DataLoader(self.val_records, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_prompts)

    test_dataloader = val_dataloader

    # ------------------------------------------------------------------ the pool
    def _read(self) -> tuple[Source, str]:
        """The pool and its fingerprint (data_modules/readers.py), after checking the keys."""
        hp = self.hparams
        pool, fingerprint = read_pool(hp.path, hp.builtin_size, hp.builtin_seed)
        self._check_columns(pool.columns, pool.name, _COLUMNS)
        if not ({hp.k_key, hp.n_key} <= set(pool.columns) or hp.p_key in pool.columns):
            raise ValueError(
                f"{pool.name} has no pass-rate columns: need {hp.k_key!r} and {hp.n_key!r}, or {hp.p_key!r}; columns "
                f"are {pool.columns}. Set --data.init_args.k_key/n_key/p_key, or fill k and n with "
                "`python -m ares_lit.tools.pass_rate`"
            )
        return pool, fingerprint

    def _load_tokenizer(self) -> Any:
        tokenizer = super()._load_tokenizer()
        if tokenizer.eos_token_id is None:
            raise ValueError("the policy's tokenizer has no eos token; SFT responses must end with one")
        return tokenizer

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

    def _clean(self, row: Any) -> tuple[str | None, dict | None]:
        """(drop reason, None) or (None, problem): the shared columns (base class), then the source,
        the pass rate and its bracket, and the candidate traces."""
        hp = self.hparams
        source = "default"
        if hp.source_key and isinstance(row, dict):
            source = as_text(row.get(hp.source_key), numbers_ok=True)
        if source is MALFORMED:
            return "malformed", None
        reason, record = super()._clean(row)
        if reason:
            return reason, None
        p = pass_rate(row, hp.k_key, hp.n_key, hp.p_key)
        if p is None:
            return "no_pass_rate", None
        candidates = trace_candidates(row.get(hp.traces_key))
        if not candidates:
            return ("malformed" if candidates is None and row.get(hp.traces_key) is not None else "no_traces"), None
        images = record.pop("images", [])
        problem = {
            "id": record["id"],
            "source": source or "default",
            "question": record["question"],
            "answer": record["answer"],
            "p": p,
            "bracket": bracket_of(p, hp.bracket_n),
            "multimodal": bool(images),
            "candidates": candidates,
        }
        if images:
            problem["images"] = images
        return None, problem

    # ------------------------------------------------------------------ curation and cache
    def _curate(self, pool: Source) -> tuple[list[dict], dict]:
        """Clean the rows, decode the images (sizes only: pools can be large), then `curation.curate`."""
        hp = self.hparams
        drops = dict.fromkeys(DROP_REASONS, 0)
        drops["malformed"] += pool.unreadable
        problems = []
        for row in pool.rows:
            reason, problem = self._clean(row)
            if reason:
                drops[reason] += 1
            else:
                problems.append(problem)
        if any(p["multimodal"] for p in problems):
            self._require_image_template()
        if self.processor is not None:
            kept = []
            for prob in problems:
                try:
                    images, _ = self._open_images(prob.get("images", []), pool.base_dir)  # refused sizes: bad_image
                except ImageError as err:
                    drops[image_reason(err)] += 1
                    continue
                prob["sizes"] = [_Size(image.width, image.height) for image in images]
                kept.append(prob)
            problems = kept
        return curate(
            problems, drops, pool=pool.name, rows=len(pool.rows) + pool.unreadable, tokenizer=self.tokenizer,
            processor=self.processor, prompt_suffix=hp.prompt_suffix, system_prompt=hp.system_prompt,
            max_length=hp.max_length, allow_incorrect=hp.allow_incorrect, grade_timeout=hp.grade_timeout,
            size=hp.size, bracket_n=hp.bracket_n, multimodal_fraction=hp.multimodal_fraction, seed=hp.seed,
        )

    def _save(self, folder: Path, records: list[dict], report: dict, base_dir: Path | None) -> None:
        """Write the set into `folder` (build_once's temp folder, renamed into place when complete):
        the selected images as PNG (records then name them), curated.jsonl, then report.json, so
        neither another rank nor an interrupted run ever reads half a cache."""
        for i, record in enumerate(records):
            names = []
            for k, value in enumerate(record.get("images", [])):
                (folder / "images").mkdir(exist_ok=True)
                names.append(f"images/{i:06d}-{k}.png")
                load_image(value, base_dir).save(folder / names[-1])  # decoded RGB as PNG: same size, lossless
            if names:
                record["images"] = names
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (folder / CURATED).write_text(text, encoding="utf-8")
        (folder / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")

    # ------------------------------------------------------------------ loaders and state
    def train_dataloader(self) -> DataLoader:
        """Length-grouped SFT batches (see `collate_sft`), reshuffled per epoch, resumable mid-epoch."""
        if self.records is None:
            raise RuntimeError("ColdstartDataModule.setup() must run before asking for data")
        sampler = self._resumable_sampler(len(self._batches), 1, True, self.hparams.seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        n = self.hparams.bracket_n
        return DataLoader(
            SFTBatches(self._features, self._batches),
            sampler=sampler,
            batch_size=None,
            collate_fn=lambda feats: collate_sft(feats, pad, n),
        )

    def state_dict(self) -> dict[str, Any]:
        """Data position and curation key; Lightning stores it in every checkpoint."""
        return {**self._position_state(), "curation_key": self.report.get("key")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_position(state_dict)
        saved = state_dict.get("curation_key")
        if saved and self.report.get("key") and saved != self.report["key"]:
            log.warning("checkpoint was trained on curated set %s but %s is loaded now", saved, self.report["key"])


class _Size(NamedTuple):
    """An image's size: all that counting its vision tokens needs."""

    width: int
    height: int


def _default_cache_root() -> Path:
    from ares_lit.models.smollm2 import default_cache_dir

    return default_cache_dir() / "coldstart"
