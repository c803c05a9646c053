"""`PolicyDataModule`: the loading that both stages' DataModules share.

The AEPO prompts (`PromptDataModule`, data_modules/prompts.py) and the cold-start pool
(`ColdstartDataModule`, data_modules/coldstart.py) both tokenize with the policy's own tokenizer
and, for images, its `VisionProcessor`. This base holds what they have in common, so that each
keeps only what differs:

- the policy folder: data.tokenizer_path (`builtin:*` names resolved), else the attached
  LightningModule's model_path;
- the tokenizer (its chat template checked at once) and the image processor, each failing with
  what to change;
- the column check (the first check of setup, before anything loads), the cleaning of the columns
  both read (question, answer, id, images), image decoding and vision-token counting;
- world size and rank, and the resumable (epoch, consumed) position of the `ResumableBatchSampler`
  that checkpoints save;
- per-rank data positions under DDP. Lightning stores only rank 0's `state_dict()` in the
  checkpoint, but each rank has its own position (the refill stream is seeded by rank). Every
  subclass's `state_dict` / `load_state_dict` is therefore wrapped (`__init_subclass__`): saving
  adds "per_rank", every rank's values of `_rank_local_keys` gathered in rank order, and loading
  puts this rank's entry back over the top-level values before the subclass reads them. Lightning
  calls `datamodule.state_dict()` on every rank (`Trainer.save_checkpoint` -> `dump_checkpoint`),
  so the gather inside it is a safe collective. A checkpoint without "per_rank", or saved with
  another world size, restores rank 0's values on every rank, with a warning.

Settings are read from `self.hparams`: a subclass calls `save_hyperparameters()` with at least
tokenizer_path, question_key, answer_key, image_key, id_key, min_pixels, max_pixels,
prompt_suffix and system_prompt. Every setting also reads as an attribute (`dm.max_prompt_length`),
as the rollout callback and user code read them.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch import LightningDataModule

from ares_lit.distributed import all_gather_object
from ares_lit.models.resolve import attached_policy_path, resolve_model_path
from ares_lit.prompting import build_prompt_text
from ares_lit.vision import load_image
from data_modules.readers import MALFORMED, as_text, image_values, prompt_id
from data_modules.sampler import ResumableBatchSampler

__all__ = ["PolicyDataModule"]

log = logging.getLogger(__name__)

_NULLABLE = ("source_key", "image_key", "id_key")  # options whose column may be absent when set to null


def _saving_per_rank(fn: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Wrap a subclass's `state_dict`: add "per_rank", every rank's own position (a collective)."""

    def state_dict(self) -> dict[str, Any]:
        if self.__dict__.get("_per_rank_busy"):  # a nested super().state_dict() of a wrapped class
            return fn(self)
        self.__dict__["_per_rank_busy"] = True
        try:
            state = fn(self)
        finally:
            self.__dict__["_per_rank_busy"] = False
        own = {k: copy.deepcopy(state[k]) for k in self._rank_local_keys if state and k in state}
        gathered = all_gather_object(own)  # every rank calls state_dict at checkpoint time
        if state:
            state["per_rank"] = gathered
        return state

    state_dict._per_rank = True  # type: ignore[attr-defined]
    state_dict.__doc__, state_dict.__name__ = fn.__doc__, fn.__name__
    return state_dict


def _loading_per_rank(fn: Callable[[Any, dict], None]) -> Callable[[Any, dict], None]:
    """Wrap a subclass's `load_state_dict`: this rank's saved position replaces rank 0's."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.__dict__.get("_per_rank_busy"):
            return fn(self, state_dict)
        world, rank = self._world()
        per_rank = state_dict.get("per_rank")
        state = {k: v for k, v in state_dict.items() if k != "per_rank"}
        if per_rank is not None and len(per_rank) == world:
            state.update(copy.deepcopy(per_rank[rank]))
        elif per_rank is not None:
            log.warning(
                "checkpoint was saved by %d ranks but %d run now; every rank resumes rank 0's data position "
                "(the refill streams restart from it)",
                len(per_rank),
                world,
            )
        elif world > 1:
            log.warning(
                "checkpoint holds one data position (saved before per-rank positions); every rank resumes "
                "rank 0's position"
            )
        self.__dict__["_per_rank_busy"] = True
        try:
            fn(self, state)
        finally:
            self.__dict__["_per_rank_busy"] = False

    load_state_dict._per_rank = True  # type: ignore[attr-defined]
    load_state_dict.__doc__, load_state_dict.__name__ = fn.__doc__, fn.__name__
    return load_state_dict


class PolicyDataModule(LightningDataModule):
    """Base of the prompt and cold-start DataModules: the policy's tokenizer and image processor,
    column checks, shared row cleaning, images, world, and the resumable sampler position."""

    # state_dict keys that differ per rank; the rest (e.g. the tracker) is identical on every rank
    _rank_local_keys: tuple[str, ...] = ("epoch", "consumed", "refill")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("state_dict", _saving_per_rank), ("load_state_dict", _loading_per_rank)):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_per_rank", False):
                setattr(cls, name, wrap(fn))

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None  # loaded in setup(); may be set beforehand to share the policy's
        self.processor: Any = None  # VisionProcessor, built in setup() when image_key is set (or set beforehand)
        self._sampler: ResumableBatchSampler | None = None
        self._position = {"epoch": 0, "consumed": 0}  # applied when the sampler is built

    def __getattr__(self, name: str) -> Any:
        """A setting as an attribute: `dm.batch_size` is `dm.hparams.batch_size` (read-only)."""
        hparams = self.__dict__.get("_hparams")
        if hparams is not None and name in hparams:
            return hparams[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------ the policy's tokenizer and processor
    def _policy_name(self) -> str | None:
        """data.tokenizer_path as configured, else the attached module's model folder (for messages)."""
        return self.hparams.tokenizer_path or attached_policy_path(self)

    def _model_dir(self) -> str | None:
        """The policy's folder: data.tokenizer_path (`builtin:*` names resolved) or the attached model's."""
        path = self.hparams.tokenizer_path
        if path and path.startswith("builtin:"):
            return resolve_model_path(path)
        return path or attached_policy_path(self)

    def _load_tokenizer(self) -> Any:
        """The policy's tokenizer (loaded once; a preset one is kept); a missing chat template fails now."""
        hp = self.hparams
        if self.tokenizer is None:
            path = self._model_dir()
            if not path:
                raise ValueError(
                    "data.tokenizer_path is not set and no model is attached; set --data.init_args.tokenizer_path "
                    "to the policy's tokenizer"
                )
            from transformers import AutoTokenizer  # slow import

            self.tokenizer = AutoTokenizer.from_pretrained(path)
        build_prompt_text(self.tokenizer, "?", hp.prompt_suffix, hp.system_prompt)  # no chat template: fail now
        return self.tokenizer

    def _require_image_template(self) -> None:
        """Fail when the chat template cannot place an image (a text model's template)."""
        hp = self.hparams
        try:
            build_prompt_text(self.tokenizer, "?", hp.prompt_suffix, hp.system_prompt, num_images=1)
        except Exception as err:  # jinja raises many kinds
            raise ValueError(
                f"data.image_key={hp.image_key!r} is set but the chat template of {self._policy_name()!r} cannot "
                f"render image content ({type(err).__name__}: {err}); point data.tokenizer_path at the "
                "vision-language model, or set data.image_key to null for text only"
            ) from err

    def _load_processor(self) -> Any:
        """The policy's `VisionProcessor`; raises with what to change when the model is not a VL model."""
        if self.processor is not None:
            return self.processor
        hp = self.hparams
        path = self._model_dir()
        if not path:
            raise ValueError(
                f"data.image_key={hp.image_key!r} is set, and images need the policy's image processor, which "
                "loads from data.tokenizer_path; set --data.init_args.tokenizer_path to the vision-language model"
            )
        from ares_lit.vision import VisionProcessor

        try:
            self.processor = VisionProcessor.from_pretrained(
                path, tokenizer=self.tokenizer, min_pixels=hp.min_pixels, max_pixels=hp.max_pixels
            )
        except (ValueError, OSError) as err:
            raise ValueError(
                f"data.image_key={hp.image_key!r} needs a vision-language policy (Qwen2-VL / Qwen2.5-VL) at "
                f"data.tokenizer_path={self._policy_name()!r}: {str(err).rstrip('.')}. Point data.tokenizer_path "
                "at the VL model (e.g. builtin:tiny-qwen2.5-vl), or set data.image_key to null for text only"
            ) from err
        return self.processor

    # ------------------------------------------------------------------------------- rows and images
    def _check_columns(self, columns: list[str], name: str, options: tuple[str, ...]) -> None:
        """Every configured column option (e.g. "question_key") names a column of the source."""
        for option in options:
            key = self.hparams[option]
            if key is not None and key not in columns:
                raise ValueError(
                    f"data.{option}={key!r} is not a column of {name}; columns are {columns}; "
                    f"set --data.init_args.{option}" + (" (or null)" if option in _NULLABLE else "")
                )

    def _check_image_folders(self, source: Any) -> None:
        """Image paths whose folders are all missing: a wrong folder, not a few bad images (rows that
        are dropped); raised before any tokenizer or model loads."""
        key, folders = self.hparams.get("image_key"), set()
        for row in source.rows if key else []:
            for value in image_values(row.get(key)) if isinstance(row, dict) else []:
                value = value.get("path") if isinstance(value, dict) and not value.get("bytes") else value
                if isinstance(value, str) and value.strip():
                    path = Path(value).expanduser()
                    folders.add((path if path.is_absolute() else Path(source.base_dir or ".") / path).parent)
        missing = sorted(str(f) for f in folders if not f.is_dir())
        if folders and len(missing) == len(folders):
            raise FileNotFoundError(
                f"data.image_key={key!r}: the image folder {missing[0]} of {source.name} does not exist (relative "
                "image paths are read from the data file's folder): put the images there or fix the paths in the file"
            )

    def _clean(self, row: Any) -> tuple[str | None, dict | None]:
        """(drop reason, None) or (None, {"id", "question", "answer"[, "images"]}) from the shared columns.

        Reasons, the first that applies: malformed (not an object, a question that is not text, an
        answer that is neither text nor a number), empty_prompt, no_answer. Ids are str(row[id_key])
        when set (rows without one fall back), else `prompt_id(question, answer)`. "images" (the raw
        cell as a list) is there whenever image_key is set.
        """
        hp = self.hparams
        if not isinstance(row, dict):
            return "malformed", None
        question = as_text(row.get(hp.question_key), numbers_ok=False)
        answer = as_text(row.get(hp.answer_key), numbers_ok=True)
        if question is MALFORMED or answer is MALFORMED:
            return "malformed", None
        if not question:
            return "empty_prompt", None
        if not answer:
            return "no_answer", None
        pid = row.get(hp.id_key) if hp.id_key else None
        pid = str(pid) if pid is not None else prompt_id(question, answer)
        record = {"id": pid, "question": question, "answer": answer}
        if hp.image_key:
            record["images"] = image_values(row.get(hp.image_key))
        return None, record

    def _open_images(self, values: list[Any], base_dir: Path | None) -> tuple[list[Any], int]:
        """A row's images decoded (RGB PIL) and their vision tokens in all; raises `ImageError`,
        whose `image_reason` is the drop reason (missing_image, bad_image)."""
        images = [load_image(value, base_dir) for value in values]
        return images, sum(self.processor.image_tokens(image) for image in images)

    # ------------------------------------------------------------------------ world and resumption
    def _world(self) -> tuple[int, int]:
        """(world size, global rank); (1, 0) without a trainer."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _resumable_sampler(self, num_rows: int, batch_size: int, shuffle: bool, seed: int) -> ResumableBatchSampler:
        """The training sampler, built once, starting at the saved position."""
        if self._sampler is None:
            world, rank = self._world()
            self._sampler = ResumableBatchSampler(num_rows, batch_size, shuffle, seed, world, rank, **self._position)
        return self._sampler

    def _position_state(self) -> dict[str, int]:
        """{"epoch", "consumed"}: where the next training batch comes from."""
        if self._sampler is not None:
            return {"epoch": self._sampler.epoch, "consumed": self._sampler.consumed}
        return dict(self._position)

    def _load_position(self, state: dict[str, Any]) -> None:
        """Restore (epoch, consumed), before or after the sampler is built."""
        self._position = {"epoch": int(state.get("epoch", 0)), "consumed": int(state.get("consumed", 0))}
        if self._sampler is not None:
            self._sampler.epoch, self._sampler.consumed = self._position["epoch"], self._position["consumed"]
