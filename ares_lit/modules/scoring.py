"""The scoring side of the AEPO module: no-grad log-prob passes, sized by a token budget.

`ScoringMixin.score` is the `Scorer` of `ares_lit.experience.scoring` bound to a model (the
policy or the frozen reference). It also counts, for the `*/pad_fraction` panels, how many of
the positions each forward computes are padding.
"""

from __future__ import annotations

import torch

from ares_lit.batch import plan_micro_batches, row_lengths, trim_columns
from ares_lit.distributed import world_max
from ares_lit.modules.logprobs import response_logprobs
from ares_lit.modules.lora import reference_scope

__all__ = ["ScoringMixin", "in_precision"]


class ScoringMixin:
    """Needs `self.hparams` (micro_batch_size, max_tokens_per_score_batch, logit_budget_mb),
    `self.device`, `self.tokenizer` and `self._trainer`; keeps `self.pad_stats`."""

    PASS_KINDS = ("score_policy", "score_reference", "update")

    def reset_pad_stats(self) -> None:
        """Per pass kind: [real positions, computed positions, LM-head positions] of this step."""
        self.pad_stats = {k: [0, 0, 0] for k in self.PASS_KINDS}

    @torch.no_grad()
    def score(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_len: int,
        temperature: float,
        with_entropy: bool = False,
        multimodal: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and exact entropy) [N, R] of the response tokens, without gradients.

        Micro-batched by `max_tokens_per_score_batch` (else micro_batch_size rows) over rows
        sorted by length, each micro-batch cut to its own longest prompt and response; values
        past a row's response are 0. `multimodal` is one `MultimodalInputs` (or None) per row,
        for vision-language policies.
        """
        from ares_lit.vision import merge_multimodal

        was_training = model.training
        model.eval()
        hp = self.hparams
        budget = hp.logit_budget_mb * 2**20
        n = 0 if input_ids is None else input_ids.shape[0]
        plans = []
        if n:
            p_lens, r_lens = row_lengths(attention_mask, response_len)
            plans = plan_micro_batches(p_lens, r_lens, torch.arange(n), hp.micro_batch_size, hp.max_tokens_per_score_batch)
            log_probs = torch.zeros(n, response_len, device=self.device)
            entropy = torch.zeros(n, response_len, device=self.device) if with_entropy else None
        # Every rank runs the same number of forwards (ZeRO-3 gathers are collectives): a rank
        # with fewer micro-batches runs a dummy one and throws the result away.
        for c in range(world_max(len(plans))):
            if c < len(plans):
                rows = plans[c]
                cols, r_len = trim_columns(attention_mask[rows], response_len)
                ids, mask = input_ids[rows, cols], attention_mask[rows, cols]
                mm = merge_multimodal([multimodal[i] for i in rows.tolist()]) if multimodal else None
                self._count_pad("score_policy" if model is self.policy else "score_reference", mask, r_len)
            else:
                ids, mask, mm, r_len = self._dummy_inputs()
            with reference_scope(model):  # a LoRA policy's reference: the adapter off for this forward
                lp, ent = response_logprobs(
                    model, ids.to(self.device), mask.to(self.device), r_len, temperature, with_entropy, budget, mm,
                    vision_always=self._vision_always(),
                )
            if c < len(plans):  # padding positions stay 0, whichever micro-batch a row was in
                rows, real = rows.to(self.device), mask[:, -r_len:].to(self.device).bool()
                log_probs[rows, :r_len] = torch.where(real, lp, 0.0)
                if with_entropy:
                    entropy[rows, :r_len] = torch.where(real, ent, 0.0)
        model.train(was_training)
        if not n:
            return torch.zeros(0, 0, device=self.device), None
        return log_probs, entropy

    def _count_pad(self, kind: str, attention_mask: torch.Tensor, response_len: int) -> None:
        """Add one forward's real, computed and LM-head positions to `pad_stats[kind]`."""
        stats = self.pad_stats[kind]
        stats[0] += int(attention_mask.sum())
        stats[1] += attention_mask.numel()
        stats[2] += attention_mask.shape[0] * response_len

    def _pad_fractions(self) -> dict[str, float]:
        """This step's padding share of the computed positions: scoring passes (rollout/pad_fraction)
        and update passes (train/pad_fraction). Keeps the counts as `last_pad_stats`, then resets."""
        out = {}
        score = [a + b for a, b in zip(self.pad_stats["score_policy"], self.pad_stats["score_reference"])]
        for (real, computed, _), key in ((score, "rollout/pad_fraction"), (self.pad_stats["update"], "train/pad_fraction")):
            if computed:
                out[key] = 1.0 - real / computed
        self.last_pad_stats = self.pad_stats
        self.reset_pad_stats()
        return out

    def _dummy_inputs(self):
        """One 2-token row (pad, eos) that only keeps collective counts equal across ranks."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.tensor([[pad, self.tokenizer.eos_token_id]], dtype=torch.long)
        return ids, torch.ones_like(ids), None, 1

    def _vision_always(self) -> bool:
        """With several ranks, a VL model runs its vision tower in every forward (ZeRO-3 gathers it)."""
        return self._trainer is not None and self._trainer.world_size > 1


def in_precision(trainer, score):
    """`score` run in the precision context that Lightning wraps `training_step` in
    (`precision_plugin.train_step_context()`: autocast for "bf16-mixed"/"16-mixed", the default
    dtype for "bf16-true"/"64-true", nothing for fp32).

    `on_train_batch_start` runs outside that context. Old and reference log-probs scored there in
    fp32 while the update recomputes log π_θ under autocast would make the PPO ratio differ from 1
    and k3 from 0 at the first update, although policy == old == reference: clipping and the κ
    controller would react to numeric noise. Generation stays outside (the engine's own dtype).
    """

    def scored(*args, **kwargs):
        with trainer.strategy.precision_plugin.train_step_context():
            return score(*args, **kwargs)

    return scored
