"""Pad the kept groups into trainer tensors and score them: old log-probs, exact entropy, reference.

docs/algorithm.md "Token entropy": H_t comes from the trainer-side forward pass that already yields the old
log-probs. Scoring is a callable, so this file needs no model:

    score(input_ids, attention_mask, response_len, temperature, with_entropy, multimodal)
        -> (log_probs [N, R], entropy [N, R] or None)

`AEPOModule.score` bound to the policy (or to the reference) is one. It is a collective under
ZeRO-3: every rank calls it the same number of times, also with zero rows (it then runs dummy
forwards to match the other ranks). A rank without groups therefore goes through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from ares_lit.experience.groups import PromptGroup, _no_report, timer

__all__ = [
    "RolloutTensors", "Scorer", "check_policy_scoring", "engine_values", "pack_groups", "multimodal_rows", "reuse_engine_scores", "score_rollouts"]

Scorer = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class RolloutTensors:
    """The kept groups as padded tensors, verl's layout (see `ares_lit.batch.RolloutBatch`)."""

    input_ids: torch.Tensor
    """[N, P + R] long: prompts left-padded to P, responses right-padded to R."""
    attention_mask: torch.Tensor
    """[N, P + R] long."""
    response_mask: torch.Tensor
    """[N, R] bool: real response tokens."""
    group_ids: torch.Tensor
    """[N] long: index of each row's group (its prompt)."""
    prompt_len: int
    """P."""
    multimodal: list | None = None
    """Per row, its prompt's `MultimodalInputs` (or None); None for text-only batches."""

    @property
    def response_len(self) -> int:
        return int(self.response_mask.shape[1])

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


def multimodal_rows(groups: list[PromptGroup], pixels: Callable | None) -> list | None:
    """Per rollout row, its prompt's pixels and grid (shared by the group's rows); None for text."""
    if not any(g.prompt.get("images") for g in groups):
        return None
    rows = []
    for g in groups:
        images = g.prompt.get("images")
        mm = pixels(images) if images else None
        rows += [mm] * len(g.completions)
    return rows


def pack_groups(groups: list[PromptGroup], pad_id: int, pixels: Callable | None = None) -> RolloutTensors:
    """Left-pad prompts to P and right-pad responses to R (at least 1 column), concatenated.

    Zero groups give N = 0 rows of the same layout, so the stages after this one run unchanged.
    `pixels(images)` turns a prompt's images into `MultimodalInputs` (vision-language policies).
    """
    prompt_ids = [g.prompt["prompt_ids"] for g in groups for _ in g.completions]
    responses = [c.token_ids for g in groups for c in g.completions]
    sizes = torch.tensor([len(g.completions) for g in groups], dtype=torch.long)
    group_ids = torch.repeat_interleave(torch.arange(len(groups)), sizes)
    n = len(responses)
    # A zero-length sentinel keeps pad_sequence defined with no rows; an empty one-token response
    # sentinel keeps R >= 1.
    prompts_t = pad_sequence(
        [torch.tensor(p, dtype=torch.long) for p in prompt_ids] + [torch.zeros(0, dtype=torch.long)], True, pad_id, "left"
    )[:n]
    resp_t = pad_sequence(
        [torch.tensor(r, dtype=torch.long) for r in responses] + [torch.zeros(1, dtype=torch.long)], True, pad_id
    )[:n]
    p_len, r_len = prompts_t.shape[1], resp_t.shape[1]
    p_lens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    r_lens = torch.tensor([len(r) for r in responses], dtype=torch.long)
    response_mask = torch.arange(r_len)[None, :] < r_lens[:, None]
    prompt_mask = torch.arange(p_len)[None, :] >= (p_len - p_lens)[:, None]
    input_ids = torch.cat([prompts_t, torch.where(response_mask, resp_t, pad_id)], dim=1)
    attention = torch.cat([prompt_mask, response_mask], dim=1).long()
    return RolloutTensors(input_ids, attention, response_mask, group_ids, p_len, multimodal_rows(groups, pixels))


def engine_values(groups: list[PromptGroup], response_len: int, engine_scores: bool):
    """The engine's per-token values of the groups' rows, padded to `response_len` once.

    Returns (log-probs [N, R] or None when a row has none; (log-probs, entropy) to stand in for the
    policy pass when `engine_scores` and every row has both, else None).
    """
    from ares_lit.batch import pad_engine_log_probs

    comps = [c for g in groups for c in g.completions]
    like = torch.zeros(len(comps), response_len)
    lp = pad_engine_log_probs([c.logprobs for c in comps], like)
    if not engine_scores or lp is None:
        return lp, None
    ent = pad_engine_log_probs([c.entropy for c in comps], like)
    return lp, None if ent is None else (lp, ent)


def score_rollouts(
    rows: RolloutTensors,
    score_policy: Scorer | None,
    score_reference: Scorer | None,
    temperature: float,
    on_phase: Callable[..., None] = _no_report,
    timings: dict | None = None,
    engine_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Old log-probs and exact token entropy H_t (policy, one pass), and reference log-probs.

    docs/algorithm.md "Token entropy" (exact, fp32, at the sampling temperature) and "Dynamic KL" (the
    frozen reference). Always calls the scorers, also with N = 0 rows: they are collectives.
    With `score_policy=None` the policy pass is skipped and `engine_values` (the engine's own
    log-probs and entropy, padded like the rows; only when they are the trainer's values) stand in.
    `known = (log_probs, entropy, have)` (branching: phase-1 rows were scored already, `have` [N]
    bool) limits the policy pass to the other rows (one call, possibly on zero rows).

    Returns:
        (old_log_probs [N, R], entropy [N, R], ref_log_probs [N, R] or None).
    """
    timings = {} if timings is None else timings
    if score_policy is None and engine_values is None:
        raise ValueError("score_rollouts: without a policy scorer the engine's log-probs and entropy are needed")
    passes = (score_policy is not None) + (score_reference is not None)
    r_len = rows.response_len
    with timer(timings, "logprobs"):
        done = 0
        if score_policy is not None:
            on_phase("scoring", 0, passes)
            with timer(timings, "score_policy"):
                if known is None:
                    old_lp, entropy = score_policy(rows.input_ids, rows.attention_mask, r_len, temperature, True, rows.multimodal)
                else:
                    old_lp, entropy = _score_missing(rows, score_policy, temperature, known)
            done = 1
        else:
            old_lp, entropy = engine_values
        ref_lp = None
        if score_reference is not None:
            on_phase("scoring", done, passes)
            with timer(timings, "score_reference"):
                ref_lp, _ = score_reference(rows.input_ids, rows.attention_mask, r_len, temperature, False, rows.multimodal)
    n = rows.input_ids.shape[0]
    if n == 0:  # a scorer may answer zero rows with any 0-row shape (and no entropy): fix the layout
        empty = torch.zeros(0, r_len, device=old_lp.device)
        old_lp, entropy = empty, empty.clone()
        ref_lp = None if ref_lp is None else empty.clone()
    return old_lp, entropy, ref_lp


def _score_missing(rows: RolloutTensors, score_policy: Scorer, temperature: float, known) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy pass over the rows without known scores, merged with the known ones."""
    lp, ent, have = known
    need = (~have.bool()).nonzero().squeeze(-1)
    mm = None if rows.multimodal is None else [rows.multimodal[i] for i in need.tolist()]
    sub_lp, sub_ent = score_policy(rows.input_ids[need], rows.attention_mask[need], rows.response_len, temperature, True, mm)
    lp, ent = lp.to(sub_lp.device).clone(), ent.to(sub_lp.device).clone()
    if need.numel():
        lp[need.to(lp.device)], ent[need.to(lp.device)] = sub_lp.to(lp.dtype), sub_ent.to(ent.dtype)
    return lp, ent


POLICY_SCORING = ("auto", "always")


def check_policy_scoring(policy_scoring: str) -> None:
    if policy_scoring not in POLICY_SCORING:
        raise ValueError(f"policy_scoring must be one of {POLICY_SCORING}; got {policy_scoring!r}")


def reuse_engine_scores(policy_scoring: str, engine, cfg, precision: str, rollout_correction: str | None) -> tuple[bool, str]:
    """Whether the trainer's policy scoring pass can be skipped (and why, for the log).

    "auto" skips it when the engine's log-probs and entropy are the trainer's own values: an
    engine that says so (`reports_trainer_scores`: the hf engine on the live policy), sampling
    without top-k / top-p truncation (else the engine reports the truncated policy), no autocast
    (a "*-mixed" precision scores in lower precision than the engine generates), and no rollout
    correction (it measures exactly the trainer/engine gap). The engine samples with the weights
    from before the step's update, so its values are π_old also over several mini-batches and
    PPO epochs. "always" runs the pass.
    """
    check_policy_scoring(policy_scoring)
    why = None
    if policy_scoring == "always":
        why = "policy_scoring=always"
    elif not getattr(engine, "reports_trainer_scores", False):
        why = "the engine's log-probs are not the trainer's (vLLM, or an owned copy)"
    elif cfg.top_k > 0 or cfg.top_p < 1.0:
        why = "top-k / top-p truncation"
    elif "mixed" in str(precision):
        why = f"precision {precision} autocasts the trainer's passes"
    elif rollout_correction:
        why = "model.rollout_correction compares the two"
    if why is None:
        return True, "skipped: the hf engine on the live policy records the trainer's own log-probs and entropy"
    return False, f"runs ({why})"
