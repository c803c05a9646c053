"""AdaptiveColdstartModule: the ARES cold-start SFT stage (docs/algorithm.md "AdaCS").

Loss, per batch (token-mean over the response tokens of the batch; the prompt carries no loss):

    L = (1/N) Σ_t −log π_θ(y_t | y_<t, x)                              (SFT NLL)
      + (1/N) Σ_t β_{b(i)} · k3(log π_θ(y_t), log π_ref(y_t))       (optional, off by default)

The second term is OUR interpretation of the paper's "adaptive KL-guided fine-tuning", which the
paper names but never defines: a per-token KL penalty to the frozen initial model, with a
coefficient β_b per pass-rate bracket b (e.g. smaller β on hard problems so that their longer
traces may move further from the reference). k3 is `core.kl_estimate(..., "k3")` evaluated on
the SFT target tokens (so it penalises the log-ratio on the data, not an on-policy KL estimate);
it is exactly 0 when the policy equals the reference.

Memory: the decoder runs once; the LM head and the fp32 log-softmax run only on the positions
that predict a response token, in chunks under activation checkpointing (the building blocks of
`modules/logprobs.response_logprobs`), so full-batch fp32 logits never exist.

At the end of fit the policy and its tokenizer are saved as an HF folder (`export_dir`), which is
what the AEPO stage loads: `--model.init_args.model_path=<export_dir>`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.checkpoint import checkpoint

from ares_lit.core import KL_KINDS, kl_estimate
from ares_lit.modules.validation import ValidationMixin, ValidationSettings
from ares_lit.models.resolve import check_model_path
from ares_lit.modules.lora import LoraMixin, LoraSettings, reference_scope
from ares_lit.modules.policy import DTYPES, load_policy
from ares_lit.modules.zero import adamw, param_shape, same_count_on_all_ranks
from ares_lit.modules.export import export_at_fit_end, export_hf
from ares_lit.modules.logprobs import DEFAULT_LOGIT_BUDGET_BYTES, _vocab_rows, chunk_logprobs, decoder_hidden, tokens_per_chunk

__all__ = ["AdaptiveColdstartModule", "label_logprobs"]

_SCHEDULES = ("constant", "cosine")


def label_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    budget_bytes: int = DEFAULT_LOGIT_BUDGET_BYTES,
    multimodal: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the labelled tokens (labels != -100), HF-style shifted: position t predicts labels[t + 1].

    Returns (log_probs [N] fp32, row index [N]) for the N labelled tokens, in row-major order.
    Only those N positions go through the LM head, chunked (checkpointed when grad is on).
    """
    hidden = decoder_hidden(model, input_ids, attention_mask, multimodal)
    targets = labels[:, 1:]
    selected = targets != -100
    rows = selected.nonzero()[:, 0]
    flat_h, flat_t = hidden[:, :-1][selected], targets[selected]
    head = model.get_output_embeddings()
    chunk = tokens_per_chunk(_vocab_rows(head), budget_bytes)
    grad = torch.is_grad_enabled() and flat_h.requires_grad
    parts = []
    # Under multi-rank ZeRO-3 every LM-head call is a collective: all ranks run the same number of
    # chunks (the last ones empty on ranks with fewer labelled tokens).
    chunks = same_count_on_all_ranks(-(-flat_h.shape[0] // chunk), head, flat_h.device)
    for c in range(chunks):
        hc, tc = flat_h[c * chunk : (c + 1) * chunk], flat_t[c * chunk : (c + 1) * chunk]
        if grad:
            parts.append(checkpoint(chunk_logprobs, head, hc, tc, 1.0, use_reentrant=False))
        else:
            parts.append(chunk_logprobs(head, hc, tc, 1.0))
    log_probs = torch.cat(parts) if parts else flat_h.new_zeros(0, dtype=torch.float32)
    return log_probs, rows


class AdaptiveColdstartModule(LoraMixin, ValidationMixin, pl.LightningModule):
    """Adaptive Cold-Start SFT: token-mean NLL on response tokens, optional per-bracket KL.

    Args:
        model_path: model to fine-tune: a local HF folder, `builtin:smollm2-135m-instruct`,
            `builtin:tiny-qwen2`, or a hub name (needs a network).
        dtype: parameter dtype of the policy (and reference): float32, bfloat16 or float16.
        lr: AdamW peak learning rate (paper SFT: 2e-5).
        weight_decay: AdamW weight decay on matrices (norms and biases get none).
        warmup_steps: linear warmup in optimizer steps from lr/warmup_steps to lr.
        lr_schedule: after warmup, "constant" or "cosine" (decays to 0 at the last step).
        adam_betas: AdamW (beta1, beta2).
        kl_betas: our adaptive KL: None = off (the default, the paper defines no KL); else β per
            pass-rate bracket k/n, k = 0..bracket_n (bracket_n + 1 values, hardest first), or one
            value for all brackets. Loads a frozen copy of the initial model as the reference.
        kl_estimator: KL estimator of the penalty: k1, k2, k3 (default) or abs.
        gradient_checkpointing: recompute decoder activations in backward (saves memory).
        freeze_vision: vision-language models: keep the vision tower (encoder and merger) frozen.
        logit_budget_mb: fp32 logits memory per chunk in the loss.
        export_dir: where the final model is saved as an HF folder (with tokenizer) at the end of
            fit; default `<log_dir>/hf_model`; empty string disables the export.
        validation: sampling of the validation hold-out (`validation.n`, `.k`, `.temperature`,
            `.max_tokens`, ...; ares_lit/modules/validation.py); None = the defaults.
        lora: train a LoRA adapter (peft) instead of every weight (ares_lit/modules/lora.py); the
            export at fit end is the merged model (the AEPO stage's default start: a new adapter
            on it, so π_ref is the cold-start model), and the adapter is saved beside it. None = off.
    """

    def __init__(
        self,
        model_path: str = "builtin:smollm2-135m-instruct",
        dtype: str = "float32",
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        adam_betas: tuple[float, float] = (0.9, 0.999),
        kl_betas: list[float] | None = None,
        kl_estimator: str = "k3",
        gradient_checkpointing: bool = False,
        freeze_vision: bool = False,
        logit_budget_mb: int = DEFAULT_LOGIT_BUDGET_BYTES // 2**20,
        export_dir: str | None = None,
        validation: ValidationSettings | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        check_model_path(model_path)  # a wrong folder fails here, before the Trainer or any tokenizer
        if lr_schedule not in _SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {_SCHEDULES}; got {lr_schedule!r}")
        if kl_estimator not in KL_KINDS:
            raise ValueError(f"model.kl_estimator must be one of {KL_KINDS}; got {kl_estimator!r}")
        if kl_betas is not None and (not kl_betas or any(b < 0 for b in kl_betas)):
            raise ValueError(f"model.kl_betas must be null or a non-empty list of values >= 0; got {kl_betas}")
        if warmup_steps < 0 or lr <= 0:
            raise ValueError(f"need model.lr > 0 and model.warmup_steps >= 0; got {lr} and {warmup_steps}")
        self.save_hyperparameters()
        self._validation_settings().ks()  # a bad validation.k fails before any model loads
        self._init_lora(lora, model_path)  # so does a bad lora (ranges, target names from config.json)
        self.policy: torch.nn.Module | None = None
        self.tokenizer = None
        self.resolved_model_path: str | None = None
        self._reference: list[torch.nn.Module] = []  # a list keeps it out of state_dict/optimizer
        self._step_started: float | None = None

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        strategy = self._trainer.strategy if self._trainer is not None else None
        # Under ZeRO-3 the policy loads into shards; the frozen reference is kept whole (modules/zero.py).
        path, self.tokenizer, self.policy, ref = load_policy(
            hp.model_path, hp.dtype, hp.gradient_checkpointing, hp.kl_betas is not None, hp.freeze_vision, strategy, self.lora
        )
        self.resolved_model_path = path
        self._reference = [ref] if ref is not None else []

    @property
    def reference(self) -> torch.nn.Module | None:
        return self._reference[0] if self._reference else None

    def setup(self, stage: str) -> None:
        self._lora_strategy(self.trainer.strategy)

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.to(self.device)
        dm = getattr(self.trainer, "datamodule", None)
        bracket_n = getattr(getattr(dm, "hparams", None), "bracket_n", None)
        if bracket_n is not None:
            self._check_betas(bracket_n)

    def _check_betas(self, bracket_n: int) -> None:
        betas = self.hparams.kl_betas
        if betas is not None and len(betas) not in (1, bracket_n + 1):
            raise ValueError(
                f"model.kl_betas needs 1 value or bracket_n + 1 = {bracket_n + 1} values (one per bracket k/{bracket_n}, "
                f"k = 0..{bracket_n}); got {len(betas)}"
            )

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.policy.named_parameters():
            if p.requires_grad:  # param_shape: a ZeRO-3 shard is 1-D; its real shape is ds_shape
                (no_decay if len(param_shape(p)) < 2 or "norm" in name.lower() else decay).append(p)
        opt = adamw(
            self._trainer.strategy if self._trainer is not None else None,
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.adam_betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup, cosine = hp.warmup_steps, hp.lr_schedule == "cosine"

        def factor(step: int) -> float:
            if warmup > 0 and step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ loss
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, detached stats): token-mean NLL over response tokens (+ β_b·KL if enabled)."""
        hp = self.hparams
        budget = hp.logit_budget_mb * 2**20
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        mm = None
        if batch.get("pixel_values") is not None:
            mm = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
        log_probs, rows = label_logprobs(self.policy, ids, mask, labels, budget, mm)
        num_tokens = max(1, log_probs.numel())
        nll_tok = -log_probs
        nll = nll_tok.sum() / num_tokens
        loss = nll
        stats = {"nll": nll.detach(), "tokens": torch.tensor(float(log_probs.numel()))}
        if self.reference is not None:
            with torch.no_grad(), reference_scope(self.reference):  # LoRA: the adapter off
                ref_lp, _ = label_logprobs(self.reference, ids, mask, labels, budget, mm)
            kl_tok = kl_estimate(log_probs, ref_lp, hp.kl_estimator)
            betas = torch.tensor(hp.kl_betas, dtype=kl_tok.dtype, device=kl_tok.device)
            if betas.numel() == 1:
                beta_tok = betas.expand_as(kl_tok)
            else:
                bracket = batch["bracket"].to(kl_tok.device)
                if int(bracket.max()) >= betas.numel():
                    self._check_betas(int(batch.get("bracket_n", bracket.max())))
                beta_tok = betas[bracket[rows]]
            kl_loss = (beta_tok * kl_tok).sum() / num_tokens
            loss = loss + kl_loss
            stats["kl"] = kl_tok.detach().sum() / num_tokens
            stats["kl_loss"] = kl_loss.detach()
        stats["loss"] = loss.detach()
        stats["_nll_tok"] = nll_tok.detach()
        stats["_rows"] = rows
        return loss, stats

    def training_step(self, batch: dict, batch_idx: int):
        started = time.perf_counter()
        loss, stats = self.compute_loss(batch)
        nll_tok, rows = stats.pop("_nll_tok"), stats.pop("_rows")
        logs = {f"train/{k}": float(v) for k, v in stats.items() if k not in ("loss", "nll")}
        mask = batch["attention_mask"]
        logs["train/pad_fraction"] = 1.0 - float(mask.sum()) / mask.numel()
        logs["train/seq_len"] = float(mask.shape[1])
        logs.update(self._bracket_logs(batch, nll_tok, rows))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=mask.shape[0])
        self.log("train/loss", stats["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=mask.shape[0])
        self.log("train/nll", stats["nll"], on_step=True, on_epoch=False, batch_size=mask.shape[0])
        self._step_started = started
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._step_started is not None:
            tokens = float(batch["attention_mask"].sum())
            self.log("time/tokens_per_s", tokens / max(1e-9, time.perf_counter() - self._step_started), on_step=True)

    def _bracket_logs(self, batch: dict, nll_tok: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        """Per-bracket mean NLL and token counts of this batch: `bracket/<k>of<n>/{nll,tokens}`."""
        n = int(batch.get("bracket_n", 8))
        tok_bracket = batch["bracket"].to(rows.device)[rows]
        sums = torch.zeros(n + 1, dtype=torch.float64, device=rows.device).index_add_(0, tok_bracket, nll_tok.double())
        counts = torch.bincount(tok_bracket, minlength=n + 1).double()
        logs = {}
        for b in counts.nonzero()[:, 0].tolist():
            logs[f"bracket/{b}of{n}/nll"] = float(sums[b] / counts[b])
            logs[f"bracket/{b}of{n}/tokens"] = float(counts[b])
        return logs

    # ------------------------------------------------------------------ export
    def on_fit_end(self) -> None:
        export_at_fit_end(self, self.hparams.export_dir, "cold-start model")

    def export_hf(self, target: str | Path) -> Path:
        """Save the cold-start model and its tokenizer as a Hugging Face folder that transformers and vLLM load."""
        return export_hf(self.policy, self.tokenizer, target, "cold-start model")
