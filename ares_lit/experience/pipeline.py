"""One AEPO step's experience, start to finish: prompts in, a `RolloutBatch` out.

    collect_groups      sample → grade → buckets (from accuracy) → [branch] → group filter → refill
    [every rank empty?] skip the step (a shared decision: world_max)
    pack_groups         padded tensors, verl's layout
    score_rollouts      old log-probs + exact entropy (policy), reference log-probs
    window_entropy      H̄_{t:w}
    hwe_threshold_step  τ (all ranks' q_i)
    hwe_tokens          HWE mask, N_HE, validated windows
    bucket_controllers  T_d, α_d (the tracker; all ranks)
    length_reward       R_len (overlong, kimi or shorter_better; off by default)
    shaped_reward       R = R_acc + R_entropy (+ R_len) (+ w_fmt·R_format)
    group_advantages    A_i

A rank that kept no group runs every stage after the skip decision on zero rows: its scorer still
runs its dummy forwards, and it still joins the τ gather and the tracker's update, so the
collectives of all ranks match by construction. Plain code, no Lightning: `RolloutCallback` is
the Lightning side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ares_lit.batch import RolloutBatch
from ares_lit.core import BUCKET_NAMES, HWEThreshold, count_hwe, reward_inversions, tree_advantages, window_entropy
from ares_lit.distributed import world_max
from ares_lit.experience.branching import Brancher
from ares_lit.experience.config import ExperienceConfig
from ares_lit.experience.groups import Grade, PromptGroup, _no_report, collect_groups
from ares_lit.experience.scoring import RolloutTensors, Scorer, engine_values, pack_groups, score_rollouts
from ares_lit.experience.seeds import StepSeeds
from ares_lit.experience.shaping import (
    bucket_controllers, group_advantages, hwe_threshold_step, hwe_tokens, length_reward, shaped_reward,
)  # fmt: skip
from ares_lit.rollout.base import RolloutEngine

__all__ = ["Experience", "make_experience", "build_rollout_batch", "text_samples", "logprob_gap"]


@dataclass
class Experience:
    """The result of one step's `make_experience`."""

    rollout: RolloutBatch | None
    """This rank's batch (possibly 0 rows); None when NO rank kept a group: the step is skipped."""
    groups_dropped: int
    """Groups this rank's filter dropped."""
    refill_rounds: int
    """Refill rounds this rank ran."""


def make_experience(
    prompts: list[dict],
    cfg: ExperienceConfig,
    *,
    engine: RolloutEngine,
    grade: Grade,
    tracker,
    refill: Callable[[int], list[dict]],
    score_policy: Scorer,
    score_reference: Scorer | None,
    hwe: HWEThreshold,
    tokenizer,
    seed: StepSeeds | int,
    pixels: Callable | None = None,
    trigger_ids: torch.Tensor | None = None,
    on_phase: Callable[..., None] = _no_report,
    timings: dict | None = None,
    after_sampling: Callable[[], None] | None = None,
    branch_trigger_ids: torch.Tensor | None = None,
) -> Experience:
    """Prompts → `RolloutBatch` (module docstring). `tracker` has `assign`, `update_targets` and
    `metrics` (`DifficultyTracker`); `hwe` holds τ across steps; `tokenizer` gives the pad id and decodes
    the text panel; `seed` gives each round's sampling seed (`seeds.StepSeeds`: base seed, rank,
    step; an int is a base seed at rank 0, step 0); `on_phase(phase, done, total)` reports progress; `after_sampling()` runs once after the last
    refill round, before scoring (the callback puts the engine to sleep there). With
    `cfg.branching`, each round is completed by a `Brancher` (`branch_trigger_ids`: its trigger
    words, for `branching.trigger_only`); the phase-1 scoring runs with the engine awake."""
    timings = {} if timings is None else timings
    brancher = None
    if cfg.branching is not None:
        brancher = Brancher(
            cfg, engine=engine, grade=grade, score_policy=score_policy, hwe=hwe, tokenizer=tokenizer,
            seeds=seed if isinstance(seed, StepSeeds) else StepSeeds(int(seed)), pixels=pixels,
            trigger_ids=branch_trigger_ids, on_phase=on_phase, timings=timings,
        )  # fmt: skip
    collected = collect_groups(
        prompts, cfg, engine=engine, grade=grade, tracker=tracker, refill=refill, seed=seed, on_phase=on_phase,
        timings=timings, branch=brancher,
    )  # fmt: skip
    if after_sampling is not None:
        after_sampling()
    # Skipping is a decision all ranks share; a rank without groups while others have some goes on
    # with zero rows through the same stages (and collectives) as they do.
    if world_max(len(collected.groups)) == 0:
        return Experience(None, collected.dropped, collected.refills)
    rollout = build_rollout_batch(
        collected.groups,
        cfg,
        tracker=tracker,
        score_policy=score_policy,
        score_reference=score_reference,
        hwe=hwe,
        tokenizer=tokenizer,
        pixels=pixels,
        trigger_ids=trigger_ids,
        on_phase=on_phase,
        timings=timings,
        step=seed.step if isinstance(seed, StepSeeds) else 0,  # the trainer's global step (kimi's warm-up)
    )
    if brancher is not None:
        rollout.metrics.update(brancher.metrics())
    rollout.metrics["rollout/groups_dropped"] = float(collected.dropped)
    rollout.metrics["rollout/refill_rounds"] = float(collected.refills)
    rollout.metrics["rollout/generated_tokens"] = float(collected.generated_tokens)
    for name, (sampled, informative) in zip(BUCKET_NAMES, collected.informative or []):
        if sampled:  # before the filter, every round: with branching, the bucket is the phase-1 one
            rollout.metrics[f"groups/{name}/informative"] = informative / sampled
            rollout.metrics[f"groups/{name}/sampled"] = float(sampled)
    return Experience(rollout, collected.dropped, collected.refills)


def build_rollout_batch(
    groups: list[PromptGroup],
    cfg: ExperienceConfig,
    *,
    tracker,
    score_policy: Scorer,
    score_reference: Scorer | None,
    hwe: HWEThreshold,
    tokenizer,
    pixels: Callable | None = None,
    trigger_ids: torch.Tensor | None = None,
    on_phase: Callable[..., None] = _no_report,
    timings: dict | None = None,
    step: int = 0,
) -> RolloutBatch:
    """Graded, bucketed groups (zero of them on a rank that kept none) → the training batch. `step`
    is the trainer's global step (the length reward's warm-up)."""
    timings = {} if timings is None else timings
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = pack_groups(groups, pad, pixels)
    # The engine's per-token values, padded once: the gap panel, the loss's rollout correction and,
    # with cfg.engine_scores (RolloutCallback policy_scoring="auto" decides once), the old
    # log-probs and entropy in place of the policy pass, when every row has both.
    engine_lp, reused = engine_values(groups, rows.response_len, cfg.engine_scores)
    old_lp, entropy, ref_lp = score_rollouts(
        rows, None if reused is not None else score_policy, score_reference, cfg.temperature, on_phase, timings, reused,
        None if reused is not None else _known_scores(groups, rows.response_len),
    )  # fmt: skip
    dev = old_lp.device
    response_mask = rows.response_mask.to(dev)
    # Branching: a child's first `inherited` tokens are its parent's; `own` is every row's own tokens.
    inherited = torch.tensor([i for g in groups for i in (g.inherited or [0] * len(g.completions))], dtype=torch.long)
    own = response_mask & (torch.arange(rows.response_len, device=dev)[None, :] >= inherited.to(dev)[:, None])
    dedupe = cfg.branching is not None and cfg.branching.prefix_loss == "dedupe"
    entropy = entropy.to(dev)
    win, valid = window_entropy(entropy, response_mask, cfg.window)
    tau_batch, tau, voters = hwe_threshold_step(hwe, win, valid)
    threshold = math.nan if tau is None else tau
    hwe_m, n_hwe, window_mask = hwe_tokens(win, valid, threshold, cfg.window, response_mask, rows.response_ids, trigger_ids)
    if dedupe:  # a child's N_HE counts its own tokens: the inherited ones are counted in its parent
        n_hwe = count_hwe(hwe_m & own)

    accuracy = _rows(groups, "accuracy", dev)
    fmt = _rows(groups, "format", dev)
    bucket = torch.tensor([g.bucket for g in groups for _ in g.completions], dtype=torch.long, device=dev)
    targets, alpha = bucket_controllers(tracker, n_hwe, bucket)
    lengths = response_mask.sum(-1).float()
    r_len = length_reward(cfg.length_reward, lengths, accuracy, rows.group_ids, cfg.max_new_tokens, step)
    reward, r_ent = shaped_reward(
        accuracy, fmt, n_hwe, bucket, targets, alpha, entropy_reward=cfg.entropy_reward,
        format_weight=cfg.format_weight, shaping=cfg.shaping, length=None if cfg.length_reward is None else r_len,
    )  # fmt: skip
    advantages = group_advantages(reward, rows.group_ids, cfg.advantage)
    if cfg.branching is not None and cfg.branching.advantage == "tree":
        advantages = tree_advantages(advantages, *_branch_sets(groups))

    extras = {
        "accuracy": accuracy,
        "reward": reward,
        "entropy_reward": r_ent,
        "length_reward": r_len,  # R_len (zeros when cfg.length_reward is None)
        "response_length": lengths,
        "n_hwe": n_hwe,
        "target": targets[bucket],
        "alpha": alpha[bucket],
        "token_entropy": entropy[response_mask],
        "group_ids": rows.group_ids.to(dev),
        "inherited": inherited.to(dev),  # branching: tokens a child took over from its parent (0: a root)
    }
    engine_lp = None if engine_lp is None else engine_lp.to(dev)
    # With the policy pass skipped the engine's values ARE the old log-probs: no gap to report.
    gap_lp = None if reused is not None else engine_lp
    metrics = _metrics(rows, old_lp, gap_lp, response_mask, lengths, timings, tau_batch, threshold, targets, alpha)
    metrics["hwe/voters"] = float(voters)
    metrics.update(tracker.metrics())
    inverted, mixed = reward_inversions(reward, accuracy >= 0.5, rows.group_ids.to(dev), bucket)
    for d, name in enumerate(BUCKET_NAMES):
        if mixed[d] > 0:  # this rank's groups that hold both a right and a wrong answer
            metrics[f"bucket/{name}/reward_inversions"] = float(inverted[d]) / float(mixed[d])
    if cfg.length_reward is not None and r_len.numel():  # the length term's panels
        metrics["reward/length"] = float(r_len.mean())
        for d, name in enumerate(BUCKET_NAMES):
            if bool((bucket == d).any()):
                metrics[f"bucket/{name}/length_reward"] = float(r_len[bucket == d].mean())
    metrics["rollout/policy_pass_skipped"] = float(reused is not None)
    child_gap = logprob_gap(gap_lp, old_lp, own & (inherited.to(dev) > 0)[:, None])
    if child_gap is not None:
        metrics["branch/child_logprob_gap"] = child_gap
    samples = text_samples(tokenizer, groups, hwe_m, rows, reward, r_ent, bucket, cfg.num_text_samples)
    return RolloutBatch(
        input_ids=rows.input_ids,
        attention_mask=rows.attention_mask,
        response_mask=response_mask,
        old_log_probs=old_lp,
        ref_log_probs=ref_lp,
        advantages=advantages,
        bucket=bucket,
        window_mask=window_mask,
        temperature=cfg.temperature,
        extras=extras,
        metrics=metrics,
        samples=samples,
        multimodal=rows.multimodal,
        engine_log_probs=engine_lp,
        max_new_tokens=cfg.max_new_tokens,
        loss_mask=own if dedupe else None,
    )


def _known_scores(groups: list[PromptGroup], response_len: int):
    """Branching: the phase-1 rows' trainer scores, padded ([N, R] log-probs, entropy, [N] have),
    so the batch's policy pass scores only the children and fresh roots; None without any."""
    cached = [s for g in groups for s in (g.scores or [None] * len(g.completions))]
    if all(s is None for s in cached):
        return None
    lp, ent = torch.zeros(len(cached), response_len), torch.zeros(len(cached), response_len)
    for i, s in enumerate(cached):
        if s is not None:
            lp[i, : len(s[0])], ent[i, : len(s[1])] = s[0], s[1]
    return lp, ent, torch.tensor([s is not None for s in cached])


def _branch_sets(groups: list[PromptGroup]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`core.tree_advantages`' sets: one per branch point (its parent and children)."""
    members, sets, child_set = [], [], []
    ids: dict[tuple[int, int, int], int] = {}
    row = 0
    for gi, g in enumerate(groups):
        parents = g.parents or [-1] * len(g.completions)
        for j, p in enumerate(parents):
            s = -1
            if p >= 0:
                key = (gi, p, g.inherited[j])
                if key not in ids:
                    ids[key] = len(ids)
                    members.append(row - j + p)
                    sets.append(ids[key])
                s = ids[key]
                members.append(row)
                sets.append(s)
            child_set.append(s)
        row += len(parents)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return as_long(members), as_long(sets), as_long(child_set)


def _rows(groups: list[PromptGroup], key: str, device) -> torch.Tensor:
    """A per-response tensor field of the groups, concatenated ([0] fp32 without groups)."""
    parts = [getattr(g, key) for g in groups]
    return (torch.cat(parts) if parts else torch.zeros(0)).to(device)


def _metrics(rows: RolloutTensors, old_lp, engine_lp, response_mask, lengths, timings, tau_batch, threshold, targets, alpha) -> dict:
    """The step's scalars: timings, throughput, τ, T_d and α_d, and the engine/trainer log-prob gap."""
    gen_tokens = float(lengths.sum())
    metrics = {f"time/{k}": v for k, v in timings.items()}
    metrics["rollout/tokens_per_s"] = gen_tokens / max(timings.get("generation", 0.0), 1e-9)
    metrics["rollout/num_samples"] = float(rows.input_ids.shape[0])
    metrics["hwe/threshold"] = threshold
    metrics["hwe/threshold_batch"] = tau_batch
    gap = logprob_gap(engine_lp, old_lp, response_mask)
    if gap is not None:
        metrics["rollout/engine_logprob_gap"] = gap
    for d, name in enumerate(BUCKET_NAMES):
        metrics[f"bucket/{name}/target"] = float(targets[d])
        metrics[f"bucket/{name}/alpha"] = float(alpha[d])
    return metrics


def text_samples(tokenizer, groups, hwe, rows: RolloutTensors, reward, r_ent, bucket, limit: int) -> list[dict]:
    """One response of each of the first `limit` groups, HWE tokens marked as ⟦token⟧ (text panel):
    the first one, or with branching the group's first child, its branch point marked ⟪branch⟫."""
    out = []
    start = 0
    for g in groups[:limit]:
        j = next((i for i, p in enumerate(g.parents or []) if p >= 0), 0)
        at = g.inherited[j] if g.inherited else 0
        k = start + j
        c = g.completions[j]
        marks = hwe[k, : len(c.token_ids)].tolist()
        pieces = [f"⟦{tokenizer.decode([t])}⟧" if m else tokenizer.decode([t]) for t, m in zip(c.token_ids, marks)]
        if at:
            pieces.insert(at, "⟪branch⟫")
        out.append(
            {
                "question": g.prompt.get("question", ""),
                "answer": g.prompt["answer"],
                "bucket": BUCKET_NAMES[int(bucket[k])],
                "reward": float(reward[k]),
                "entropy_reward": float(r_ent[k]),
                "correct": bool(g.accuracy[j] >= 0.5),
                "response": "".join(pieces),
            }
        )
        start += len(g.completions)
    return out


def logprob_gap(engine_lp: torch.Tensor | None, trainer_lp: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean |engine log-prob - trainer log-prob| over sampled tokens (a weight-sync health check);
    None without engine log-probs or tokens. `engine_lp` is `batch.pad_engine_log_probs`'s tensor."""
    if engine_lp is None or not bool(mask.any()):
        return None
    return float((engine_lp - trainer_lp).abs()[mask].mean())
