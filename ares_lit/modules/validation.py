"""Validation and test for both stages: the evaluation loop of `python -m ares_lit.evaluate`,
run by Lightning's validation loop on the DataModule's hold-out.

`trainer.val_check_interval` / `check_val_every_n_epoch` decide when; `trainer.num_sanity_val_steps:
-1` evaluates the whole hold-out before the first training step (a partial sanity check is not
logged). Each validation samples `validation.n` responses per hold-out problem with the rollout
engine (the AEPO stage's, which `RolloutCallback` hands over as `rollout_engine` with fresh
weights; otherwise an HF engine over the live policy), grades them with the training grader, and
logs `val/<group>/<metric>` at the current global step: groups `overall`, `<source>`, `<level>`
and `<source>/<level>`; metrics `avg_at_n`, `pass_at_<k>`, `maj_at_<k>`, `length` (mean response
tokens), `truncation_rate`, `no_answer_rate`. `python -m ares_lit validate|test` does the same
with `val/` or `test/`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ares_lit.evaluation.metrics import summarize, valid_ks
from ares_lit.evaluation.runner import EvalSettings, grade_rows, sample_rows

__all__ = ["ValidationSettings", "ValidationMixin"]


@dataclass
class ValidationSettings(EvalSettings):
    """Sampling of the validation hold-out (`--model.init_args.validation.n 8`, ...)."""

    k: list[int] | None = None
    """ks of pass@k and maj@k (each <= n); None = 1 and n."""

    def ks(self) -> list[int]:
        if self.k is not None and any(k > self.n or k < 1 for k in self.k):
            raise ValueError(f"validation.k must be in [1, validation.n={self.n}]; got {self.k}")
        return valid_ks(self.k if self.k is not None else [1, self.n], self.n)


class ValidationMixin:
    """`validation_step` / `test_step` and their epoch ends, for a module with `policy`, `tokenizer`
    and a `validation` hyper-parameter (a ValidationSettings or None for the defaults)."""

    rollout_engine = None  # set by RolloutCallback: the training engine, weights pushed before each validation

    def _validation_settings(self) -> ValidationSettings:
        value = self.hparams.get("validation")
        if value is None:
            return ValidationSettings()
        if isinstance(value, dict):
            return ValidationSettings(**value)
        return value

    # -------------------------------------------------------------------- hooks
    def on_validation_epoch_start(self) -> None:
        self._eval_rows: list[dict] = []

    def on_test_epoch_start(self) -> None:
        self._eval_rows = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_rows.extend(self._sample_and_grade(batch["prompts"], batch_idx))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_rows.extend(self._sample_and_grade(batch["prompts"], batch_idx))

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    # -------------------------------------------------------------------- pieces
    def _sample_and_grade(self, prompts: list[dict], batch_idx: int) -> list[dict]:
        from ares_lit.grading import Grader

        settings = self._validation_settings()
        first = int(prompts[0].get("index", batch_idx * len(prompts))) if prompts else 0
        engine = self.rollout_engine or self._own_engine()
        grader = getattr(self, "_eval_grader", None)
        if grader is None:
            grader = self._eval_grader = Grader(timeout=settings.grade_timeout, answer_fallback=settings.answer_fallback)
        return grade_rows(sample_rows(engine, prompts, first, settings), grader, settings.answer_fallback)

    def _own_engine(self):
        """An HF engine over the live policy (weights shared: nothing to sync)."""
        engine = getattr(self, "_hf_eval_engine", None)
        if engine is None:
            from ares_lit.modules.zero import zero3_enabled
            from ares_lit.rollout import build_engine

            if self._trainer is not None and zero3_enabled(self.trainer.strategy):
                raise ValueError(
                    "validation generates with the live policy, which ZeRO-3 shards (uneven generation lengths "
                    "would hang the ranks); evaluate the exported model with python -m ares_lit.evaluate instead, "
                    "or drop data.val_path / data.val_size"
                )
            processor = getattr(getattr(self._trainer, "datamodule", None), "processor", None)
            engine = self._hf_eval_engine = build_engine("hf", model=self.policy, tokenizer=self.tokenizer, processor=processor)
        return engine

    def _report(self, stage: str) -> None:
        from ares_lit.distributed import all_gather_object
        from ares_lit.evaluation.report import flat_scalars, markdown_table

        grader = getattr(self, "_eval_grader", None)
        if grader is not None:
            grader.close()
            self._eval_grader = None
        rows = [r for part in all_gather_object(self._eval_rows) for r in part]
        trainer = self.trainer
        if not rows:
            return
        if trainer.sanity_checking and any(
            limit != float("inf") and limit < total
            for limit, total in zip(trainer.num_sanity_val_batches, _val_batch_counts(trainer))
        ):
            return  # a partial hold-out is not a measurement; num_sanity_val_steps: -1 logs it
        unique = {(r["problem"], r["sample"]): r for r in rows}  # DDP's sampler repeats rows to even out ranks
        settings = self._validation_settings()
        ks = settings.ks()
        summary = summarize(list(unique.values()), ks)
        scalars = flat_scalars(summary, stage, ks)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(scalars, step=trainer.global_step)
                lg.save()
            print(f"[ares_lit] {stage} at step {trainer.global_step}:\n" + markdown_table({"policy": summary}, ks), flush=True)
        self.eval_summary = summary


def _val_batch_counts(trainer) -> list[float]:
    loaders = trainer.val_dataloaders
    if loaders is None:
        return [0.0]
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    out = []
    for dl in loaders:
        try:
            out.append(float(len(dl)))
        except TypeError:
            out.append(float("inf"))
    return out

