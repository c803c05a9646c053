"""AEPOModule: the ARES RL stage's losses and update (docs/algorithm.md "AEPO").

The rollout callback fills `batch["rollout"]` (a `RolloutBatch`) before `training_step`; the
module then runs PPO-style updates over mini-batches and micro-batches:

    L = L_PG + L_KL,  L_PG = the policy loss named by `policy_loss` (core.POLICY_LOSSES; default
    vanilla: clipped surrogate with clip-higher and dual clip; also gspo, cispo, clip_cov, kl_cov),
    L_KL = aggregate(β ⊙ k3(logπ_θ, logπ_ref)),  β_{i,t} = κ_{d(i)} · ρ^{w_{i,t}}

β comes from `self.kl_controller` (a `core.DynamicKL` that DynamicKLCallback hands over, started
from kl_coef); without one, β = kl_coef everywhere. After each step `self.kl_stats` holds the
per-bucket k3 sums and token counts on non-window tokens, which the callback all-reduces to
update κ_d. Fitting without RolloutCallback fails at fit start: there would be nothing to learn.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from ares_lit.distributed import world_max
from ares_lit.batch import RolloutBatch
from ares_lit.core.correction import ROLLOUT_CORRECTIONS, rollout_correction
from ares_lit.core import AGG_MODES, KL_KINDS, NUM_BUCKETS, POLICY_LOSSES, PolicyLossOptions, aggregate, get_policy_loss, kl_estimate, nonwindow_kl
from ares_lit.progress import report_phase
from ares_lit.modules.scoring import ScoringMixin
from ares_lit.modules.validation import ValidationMixin, ValidationSettings
from ares_lit.modules.entropy_terms import EntropyControl, EntropyTermsMixin
from ares_lit.modules.update_helpers import UpdateHelpersMixin
from ares_lit.models.resolve import check_model_path
from ares_lit.modules.lora import LoraMixin, LoraSettings, is_lora, merged_state_dict
from ares_lit.modules.policy import DTYPES, load_policy
from ares_lit.modules.zero import adamw, param_shape, shard_for_inference, zero3_enabled
from ares_lit.modules.export import export_at_fit_end, export_hf
from ares_lit.modules.logprobs import DEFAULT_LOGIT_BUDGET_BYTES, response_logprobs

__all__ = ["AEPOModule"]

_LOSS_KEYS = ("pg_loss", "kl_loss", "entropy_bonus", "loss")


class AEPOModule(LoraMixin, EntropyTermsMixin, UpdateHelpersMixin, ScoringMixin, ValidationMixin, pl.LightningModule):
    """Adaptive Entropy Policy Optimization.

    Args:
        model_path: policy to train: a local HF folder, `builtin:smollm2-135m-instruct`,
            `builtin:tiny-qwen2`, or a hub name (needs a network).
        dtype: parameter dtype of policy and reference (float32, bfloat16, float16).
        lr: AdamW learning rate (paper: 1e-6).
        weight_decay: AdamW weight decay (paper: 1e-2).
        warmup_steps: linear learning-rate warmup in optimizer steps (paper: 0).
        mini_batch_size: rollouts per optimizer step; a rollout batch of N samples gives
            ceil(N / mini_batch_size) optimizer steps per PPO epoch.
        micro_batch_size: rollouts per forward/backward (gradient accumulation inside a mini-batch),
            when no token budget is set.
        max_tokens_per_micro_batch: token budget of an update micro-batch: rows sorted by length are
            taken while rows x (longest prompt + longest response) stays within it (verl's
            use_dynamic_bsz); None = micro_batch_size rows. Either way each micro-batch is cut to
            its own longest prompt and response, so no all-padding column is computed.
        max_tokens_per_score_batch: the same budget for the no-grad scoring passes (old and
            reference log-probs; no activations are kept, so it can be larger); None =
            micro_batch_size rows.
        ppo_epochs: passes over each rollout batch.
        grad_clip: max global gradient norm (0 = off).
        clip_low: ε_low of the clipped surrogate.
        clip_high: ε_high (clip-higher).
        clip_dual: dual-clip constant c for negative advantages (vanilla only).
        policy_loss: the registered policy loss (core/losses.py): vanilla (PPO clip-higher + dual clip),
            gspo (sequence-level ratio), cispo (clipped IS weight, stop-gradient), clip_cov or kl_cov.
        policy_loss_kwargs: extra keyword arguments of the policy loss, checked at construction, e.g. for
            clip_cov {clip_cov_ratio: 2e-4, clip_cov_lb: 1.0, clip_cov_ub: 5.0}, kl_cov {kl_cov_ratio: 2e-4, ppo_kl_coef: 1.0}.
        loss_agg: token-mean, seq-mean-token-mean, seq-mean-token-sum or seq-mean-token-sum-norm,
            over the mini-batch's global token (sequence) count, all ranks together, as verl.
        loss_horizon: seq-mean-token-sum-norm's constant divisor; None = the rollout's max_new_tokens.
        rollout_correction: train-inference mismatch correction (core/correction.py): None (off),
            token_tis or seq_mask; needs an engine that returns log-probs.
        rollout_correction_cap: C, the cap of the ratio π_old/π_engine (>= 1).
        use_kl_loss: add the token-wise KL loss against the frozen reference (loads a second copy).
        kl_estimator: k1, k2, k3 or abs (aliases kl, mse, low_var_kl) for the KL loss.
        kl_coef: β; with DynamicKLCallback, the initial κ_d of every bucket.
        gradient_checkpointing: recompute decoder activations in backward (saves memory).
        freeze_vision: vision-language models: keep the vision tower (encoder and merger) frozen
            (the paper's RL stage trains the language model only when set; default trains all).
        logit_budget_mb: fp32 logits memory per chunk in the log-prob pass.
        export_dir: where the final policy is saved as an HF folder (with tokenizer); default
            `<log_dir>/hf_model`; empty string disables the export.
        validation: sampling of the validation hold-out (`validation.n`, `.k`, `.temperature`,
            `.max_tokens`, ...; ares_lit/modules/validation.py); None = the defaults.
        entropy_control: forking-token mask (`.top_entropy_quantile`) and entropy bonus (`.entropy_coef`,
            `.adaptive`, ...; ares_lit/modules/entropy_terms.py); None = off.
        lora: train a LoRA adapter (peft) instead of every weight (`.r`, `.alpha`, `.dropout`,
            `.target_modules`, `.modules_to_save`, `.adapter_path`; ares_lit/modules/lora.py); the
            reference is then the model with the adapter disabled (no second copy). None = off.
    """

    uses_rollouts = True  # ares_lit/cli.py: the `rollout:` group (RolloutCallback) applies to this stage

    def __init__(
        self,
        model_path: str = "builtin:smollm2-135m-instruct",
        dtype: str = "float32",
        lr: float = 1e-6,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        mini_batch_size: int = 16,
        micro_batch_size: int = 4,
        max_tokens_per_micro_batch: int | None = None,
        max_tokens_per_score_batch: int | None = None,
        ppo_epochs: int = 1,
        grad_clip: float = 1.0,
        clip_low: float = 0.2,
        clip_high: float = 0.3,
        clip_dual: float = 3.0,
        policy_loss: str = "vanilla",
        policy_loss_kwargs: dict | None = None,
        loss_agg: str = "token-mean",
        loss_horizon: int | None = None,
        rollout_correction: str | None = None,
        rollout_correction_cap: float = 2.0,
        use_kl_loss: bool = True,
        kl_estimator: str = "k3",
        kl_coef: float = 0.01,
        gradient_checkpointing: bool = False,
        freeze_vision: bool = False,
        logit_budget_mb: int = DEFAULT_LOGIT_BUDGET_BYTES // 2**20,
        export_dir: str | None = None,
        validation: ValidationSettings | None = None,
        entropy_control: EntropyControl | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        check_model_path(model_path)  # a wrong folder fails here, before the Trainer or any tokenizer
        if policy_loss not in POLICY_LOSSES:
            raise ValueError(f"model.policy_loss must be one of {sorted(POLICY_LOSSES)}; got {policy_loss!r}")
        self.policy_loss_options = PolicyLossOptions(policy_loss, policy_loss_kwargs, "model.policy_loss_kwargs")
        if loss_agg not in AGG_MODES:
            raise ValueError(f"model.loss_agg must be one of {AGG_MODES}; got {loss_agg!r}")
        if rollout_correction not in (None, *ROLLOUT_CORRECTIONS) or rollout_correction_cap < 1.0:
            raise ValueError(
                f"model.rollout_correction must be null or one of {ROLLOUT_CORRECTIONS} and model.rollout_correction_cap "
                f">= 1; got {rollout_correction!r} and {rollout_correction_cap}"
            )
        if loss_horizon is not None and loss_horizon < 1:
            raise ValueError(f"model.loss_horizon must be >= 1 or null (the rollout's max_new_tokens); got {loss_horizon}")
        if kl_estimator not in KL_KINDS:
            raise ValueError(f"model.kl_estimator must be one of {KL_KINDS}; got {kl_estimator!r}")
        if micro_batch_size < 1 or mini_batch_size < micro_batch_size:
            raise ValueError(
                f"need 1 <= model.micro_batch_size <= model.mini_batch_size; got {micro_batch_size} and {mini_batch_size}"
            )
        for name, budget in (("max_tokens_per_micro_batch", max_tokens_per_micro_batch), ("max_tokens_per_score_batch", max_tokens_per_score_batch)):
            if budget is not None and budget < 1:
                raise ValueError(f"model.{name} must be >= 1 or null (micro_batch_size rows); got {budget}")
        if lr <= 0 or not 0 <= clip_low < 1 or clip_high < 0 or kl_coef < 0 or weight_decay < 0:
            raise ValueError(
                "need model.lr > 0, model.clip_low in [0, 1), model.clip_high >= 0, model.kl_coef >= 0 and "
                f"model.weight_decay >= 0; got {lr}, {clip_low}, {clip_high}, {kl_coef} and {weight_decay}"
            )
        if ppo_epochs < 1:
            raise ValueError(f"model.ppo_epochs must be >= 1; got {ppo_epochs}")
        self.save_hyperparameters()
        self._validation_settings().ks()  # a bad validation.k fails before any model loads
        self.configure_entropy_control(entropy_control)  # so does a bad entropy_control
        self._init_lora(lora, model_path)  # and a bad lora (ranges, target names from config.json)
        self.automatic_optimization = False
        self.policy: torch.nn.Module | None = None
        self.tokenizer = None
        self.resolved_model_path: str | None = None
        self._reference: list[torch.nn.Module] = []  # a list keeps it out of state_dict/optimizer
        self.kl_controller = None  # set by DynamicKLCallback
        self.kl_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_pad_stats()  # real / computed positions of this step's forwards (*/pad_fraction)
        self.last_pad_stats = dict(self.pad_stats)

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        strategy = self._trainer.strategy if self._trainer is not None else None
        # The frozen reference is inference-only and outside DeepSpeed's engine: under ZeRO-3 it is
        # loaded whole, then sharded for inference in on_fit_start.
        path, self.tokenizer, self.policy, ref = load_policy(
            hp.model_path, hp.dtype, hp.gradient_checkpointing, hp.use_kl_loss, hp.freeze_vision, strategy, self.lora
        )
        self.resolved_model_path = path
        self._reference = [ref] if ref is not None else []

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = self.trainer.strategy
        self._lora_strategy(strategy)
        if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict):
            from ares_lit.launch import fill_deepspeed_batch_size

            fill_deepspeed_batch_size(self.trainer, self.trainer.datamodule)  # also when fit is called from Python
            # Lightning's clip_gradients is a no-op under DeepSpeed: its engine clips, from its config.
            if self.hparams.grad_clip > 0:
                strategy.config["gradient_clipping"] = self.hparams.grad_clip

    @property
    def reference(self) -> torch.nn.Module | None:
        return self._reference[0] if self._reference else None

    def on_fit_start(self) -> None:
        # Callbacks' on_fit_start runs first: RolloutCallback has handed over its engine by now.
        # Without it every step would be empty and the run would end "successfully", untrained.
        if self.rollout_engine is None:
            raise ValueError(
                "AEPOModule trains on the rollouts that callbacks.rollout.RolloutCallback makes, and none is attached: "
                "add a top-level `rollout:` block to the config (as configs/aepo.yaml does)"
            )
        if self.reference is None or is_lora(self.reference):  # LoRA: the reference is the policy itself
            return
        if zero3_enabled(self.trainer.strategy):
            # ZeRO-3: shard the reference too, as an inference-only DeepSpeed engine (no optimizer),
            # so no rank holds a whole second copy; its forwards gather layer by layer.
            self._reference = [shard_for_inference(self.reference, self.trainer.strategy)]
        else:
            self.reference.to(self.device)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.policy.named_parameters():
            if p.requires_grad:  # param_shape: a ZeRO-3 shard is 1-D; its real shape is ds_shape
                (no_decay if len(param_shape(p)) < 2 or "norm" in name.lower() else decay).append(p)
        opt = adamw(
            self._trainer.strategy if self._trainer is not None else None,
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        warmup = self.hparams.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        return {"optimizer": opt, "lr_scheduler": sched}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int):
        rollout: RolloutBatch | None = batch.get("rollout") if isinstance(batch, dict) else None
        n = 0 if rollout is None else rollout.size
        # Every rank must run the same number of forwards, backwards and optimizer steps (DDP
        # all-reduces in backward, ZeRO-3 gathers in forward), whatever its own rollout size:
        # the plan of mini/micro-batches is set by the largest rollout over all ranks, and a rank
        # with fewer rows fills the gaps with zero-weight dummy micro-batches.
        n_max = world_max(n)
        if n_max == 0:
            # Every group of this step had no signal, even after refills: nothing to learn from.
            # The optimizer still takes its (gradient-free, so weight-preserving) step, so that
            # trainer.max_steps keeps counting rollout steps and a signal-free run still ends.
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            opt.step()
            self.kl_stats = self._zero_kl_stats() if self.reference is not None else None
            self.log("train/skipped_steps", 1.0, on_step=True, reduce_fx="sum")
            self.reset_pad_stats()
            return None
        started = time.perf_counter()
        rollout = rollout.to(self.device) if rollout is not None else None
        if self.hparams.rollout_correction and rollout is not None and rollout.engine_log_probs is None:
            raise ValueError(
                f"model.rollout_correction={self.hparams.rollout_correction} needs the engine's log-probs and this "
                "rollout has none (the engine returned no Completion.logprobs); set model.rollout_correction: null"
            )
        horizon = self._horizon(rollout)
        opt = self.optimizers()
        sched = self.lr_schedulers()
        hp = self.hparams
        kl_sum, kl_cnt = self._zero_kl_stats()
        sums: dict[str, float] = {}
        num_updates = 0
        planned_updates = hp.ppo_epochs * -(-n_max // hp.mini_batch_size)
        report_phase(self._trainer, "update", 0, planned_updates)
        for epoch in range(hp.ppo_epochs):
            order = torch.randperm(n, device=self.device) if epoch > 0 else torch.arange(n, device=self.device)
            starts = range(0, n_max, hp.mini_batch_size)
            minis = [order[s : s + hp.mini_batch_size] for s in starts]
            normalizers = self._normalizers(rollout, minis)
            for mini, normalizer in zip(minis, normalizers):
                for loss, metrics, kl_tok, micro in self.mini_batch_losses(rollout, mini, normalizer, horizon):
                    self.manual_backward(loss)
                    if micro is None:  # a zero-weight dummy: it only keeps the collective count
                        continue
                    # Other metrics are token means of the micro-batch: weighted by its token share they
                    # add up to the mini-batch's token mean, however it was cut into micro-batches.
                    share = float(micro["response_mask"].sum()) / max(float(rollout.trained_mask[mini].sum()), 1.0)
                    for k, v in metrics.items():
                        # Loss terms are already normalised by the mini-batch total: they add up.
                        sums[k] = sums.get(k, 0.0) + float(v) * (1.0 if k in _LOSS_KEYS else share)
                    if epoch == 0 and kl_tok is not None:
                        s, c = nonwindow_kl(kl_tok, micro["response_mask"], micro["window_mask"], micro["bucket"])
                        kl_sum += s
                        kl_cnt += c
                self.entropy_step_end()  # the adaptive entropy coefficient moves once per optimizer step
                engine = self._deepspeed_engine()
                grad_norm = self._grad_norm() if engine is None else 0.0
                if hp.grad_clip > 0 and engine is None:
                    self.clip_gradients(opt, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
                opt.step()
                if engine is not None:  # ZeRO shards the gradients; the engine knows their global norm
                    grad_norm = float(engine.get_global_grad_norm() or 0.0)
                opt.zero_grad(set_to_none=True)
                sched.step()
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                num_updates += 1
                report_phase(self._trainer, "update", num_updates, planned_updates)
        self.kl_stats = (kl_sum, kl_cnt) if self.reference is not None else None
        logs = {f"train/{k}": v / num_updates for k, v in sums.items()}
        logs["train/lr"] = sched.get_last_lr()[0]
        logs["train/optimizer_steps"] = float(num_updates)
        logs["train/rollout_size"] = float(n)
        logs["time/update"] = time.perf_counter() - started
        logs.update(self._pad_fractions())
        pg = logs.pop("train/pg_loss", 0.0)
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False)
        self.log("train/pg_loss", pg, prog_bar=True, on_step=True, on_epoch=False)
        return None

    def _zero_kl_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros(NUM_BUCKETS, device=self.device, dtype=torch.float64)
        return z, z.clone()

    def mini_batch_losses(self, rollout: RolloutBatch | None, mini: torch.Tensor, normalizer: float, horizon: float | None):
        """Yield (loss, metrics, k3, micro) per micro-batch of a mini-batch, for the caller to backward.

        Micro-batches: `max_tokens_per_micro_batch` (else micro_batch_size rows) over the mini-batch's
        rows sorted by length, each cut to its own longest prompt and response. Every rank runs
        as many as the rank with the most (a collective): a rank out of rows yields zero-weight
        dummies (micro None)."""
        hp = self.hparams
        micros = [] if rollout is None or mini.numel() == 0 else rollout.micro_batches(mini, hp.micro_batch_size, hp.max_tokens_per_micro_batch)
        count = world_max(len(micros))
        for j in range(count):
            self._accumulation_boundary(j == count - 1)
            if j >= len(micros):
                micro, temp = self._dummy_micro(rollout)
                loss, _, _ = self._micro_loss(micro, temp, 1.0)
                yield loss * 0.0, None, None, None
                continue
            micro = rollout.select(micros[j])
            self._count_pad("update", micro["attention_mask"], micro["response_len"])
            loss, metrics, k3 = self._micro_loss(micro, rollout.temperature, normalizer, horizon)
            yield loss, metrics, k3, micro

    def _micro_loss(self, micro: dict, temperature: float, normalizer: float, horizon: float | None = None):
        """The loss of one micro-batch (`RolloutBatch.select`'s dict, cut to its own width)."""
        hp = self.hparams
        response_len = micro["response_len"]
        log_probs, entropy = response_logprobs(
            self.policy,
            micro["input_ids"],
            micro["attention_mask"],
            response_len,
            temperature,
            budget_bytes=hp.logit_budget_mb * 2**20,
            multimodal=micro.get("multimodal"),
            vision_always=self._vision_always(),
            **self.entropy_request(),  # the entropy of this same forward: forking mask, entropy bonus
        )
        mask = micro["response_mask"]
        agg_kwargs = {"normalizer": normalizer, "horizon": horizon or hp.loss_horizon or response_len}
        corr, tis = {}, {}  # the correction weighs the policy loss only, as verl
        if hp.rollout_correction and micro.get("engine_log_probs") is not None:
            corr["weights"], tis = rollout_correction(
                micro["old_log_probs"], micro["engine_log_probs"], mask, hp.rollout_correction, hp.rollout_correction_cap
            )
        corr, bonus, ent_metrics = self.entropy_terms(micro, entropy, corr, agg_kwargs)  # forking mask in corr["weights"]
        pg_loss, pg_metrics = get_policy_loss(hp.policy_loss)(
            log_probs,
            micro["old_log_probs"],
            micro["advantages"],
            mask,
            clip_low=hp.clip_low,
            clip_high=hp.clip_high,
            clip_dual=hp.clip_dual,
            agg=hp.loss_agg,
            **agg_kwargs,
            **corr,
            **self.policy_loss_options(int(os.environ.get("PL_GLOBAL_SEED", 0)), self.global_step, self.global_rank),
        )
        metrics = {"pg_loss": pg_loss.detach(), **pg_metrics, **tis, **ent_metrics}
        loss = pg_loss if bonus is None else pg_loss - bonus  # L − c·H̄
        k3 = None
        if self.reference is not None and micro["ref_log_probs"] is not None:
            kl = kl_estimate(log_probs, micro["ref_log_probs"], hp.kl_estimator)
            if self.kl_controller is not None:
                beta = self.kl_controller.coefficients(micro["bucket"], micro["window_mask"]).to(kl.dtype)
            else:
                beta = torch.full_like(kl, hp.kl_coef)
            kl_loss = aggregate(beta * kl, mask, hp.loss_agg, **agg_kwargs)
            loss = loss + kl_loss
            k3 = kl_estimate(log_probs.detach(), micro["ref_log_probs"], "k3")
            metrics["kl_loss"] = kl_loss.detach()
            metrics["kl"] = torch.where(mask, k3, torch.zeros_like(k3)).sum() / mask.sum().clamp_min(1)
            metrics["kl_beta_mean"] = torch.where(mask, beta, torch.zeros_like(beta)).sum() / mask.sum().clamp_min(1)
        metrics["loss"] = loss.detach()
        return loss, metrics, k3

    # ------------------------------------------------------------------ export
    def on_fit_end(self) -> None:
        export_at_fit_end(self, self.hparams.export_dir, "policy")

    def export_hf(self, target: str | Path) -> Path:
        """Save the policy and its tokenizer as a Hugging Face folder that transformers and vLLM load."""
        return export_hf(self.policy, self.tokenizer, target, "policy")

