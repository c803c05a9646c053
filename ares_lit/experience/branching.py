"""Entropy-aware branching rollouts, phase 2 of a round (docs/algorithm.md "Entropy-aware branching
rollouts", paper §3.2.1; issue #14; docs/rollout.md "Branching rollouts").

A round with branching runs

    phase 1   sample initial_n responses per prompt → grade → bucket (from this accuracy)
    score     the trainer's policy pass on them: old log-probs and exact H_t (kept for the update),
              or the engine's own values where they are the trainer's (policy_scoring="auto")
    choose    window entropy, τ (the HWE τ of these rows, gathered over ranks, folded into the EMA
              only later, by the step), candidates and B_d points per prompt (`core.branching`)
    phase 2   ONE generate call: children_per_point continuations of prompt + response[:t] per
              point (token ids, never re-encoded; images again; max_tokens = max_new_tokens - t)
              and the fresh roots that fill each group to n; seeds from `StepSeeds.for_round(...,
              branch=True)` → grade the new leaves → append them to their groups

and the group filter then sees all n leaves. A child is one row like any response: prompt, then
parent tokens [0, t) and its own tokens. `PromptGroup.inherited` records t (0 for roots) and
`PromptGroup.parents` the parent, which the pipeline turns into the loss mask (prefix_loss) and
the tree advantage. The choice of points depends on the phase-1 token ids and the trainer's
entropy only, so the hf and vllm engines choose alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ares_lit.core import BUCKET_NAMES, HWEThreshold, branch_candidates, choose_branch_points, window_entropy
from ares_lit.distributed import all_gather_cat
from ares_lit.experience.config import ExperienceConfig
from ares_lit.experience.groups import Grade, PromptGroup, _no_report, timer
from ares_lit.experience.scoring import Scorer, engine_values, pack_groups, score_rollouts
from ares_lit.experience.seeds import StepSeeds
from ares_lit.rollout.base import Completion, RolloutEngine

__all__ = ["Brancher", "branch_leaf"]


def branch_leaf(parent: Completion, t: int, cont: Completion, decode: Callable[[list[int]], str]) -> Completion:
    """The response of a child branched from `parent` at t: parent tokens [0, t), then `cont`'s
    (the engine's per-token values likewise; None where either side has none)."""
    ids = parent.token_ids[:t] + cont.token_ids

    def join(a, b):
        return None if a is None or b is None else list(a[:t]) + list(b)

    return Completion(ids, decode(ids), join(parent.logprobs, cont.logprobs), cont.finish_reason, join(parent.entropy, cont.entropy))


class Brancher:
    """`collect_groups`' `branch(groups, round)`: scores phase 1, picks the points, samples the
    children and fresh roots, grades them, and counts what it did for the `branch/*` panels.

    A collective (the scorer, τ's gather): every rank calls it once per round, also on no groups.
    """

    def __init__(
        self,
        cfg: ExperienceConfig,
        *,
        engine: RolloutEngine,
        grade: Grade,
        score_policy: Scorer,
        hwe: HWEThreshold,
        tokenizer,
        seeds: StepSeeds,
        pixels: Callable | None = None,
        trigger_ids: torch.Tensor | None = None,
        on_phase: Callable[..., None] = _no_report,
        timings: dict | None = None,
    ) -> None:
        if cfg.branching is None:
            raise ValueError("Brancher needs cfg.branching")
        self.cfg, self.bc = cfg, cfg.branching
        self.engine, self.grade, self.score_policy, self.hwe = engine, grade, score_policy, hwe
        self.tokenizer, self.seeds, self.pixels = tokenizer, seeds, pixels
        self.trigger_ids = trigger_ids if self.bc.trigger_only else None
        self.on_phase = on_phase
        self.timings = {} if timings is None else timings
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Sums over the step's rounds: per bucket [prompts, points, children, child tokens, roots].
        self.per_bucket = torch.zeros(len(BUCKET_NAMES), 5, dtype=torch.float64)
        self.child_minus_parent: list[float] = []
        self.informative = [0, 0, 0]  # groups, informative in phase 1, informative with all leaves
        self.thresholds: list[float] = []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---------------------------------------------------------------- one round
    def __call__(self, groups: list[PromptGroup], refill_round: int) -> list[PromptGroup]:
        rows, win, valid = self._score_phase1(groups)
        points = self._choose(groups, rows, win, valid)
        offsets = [0]
        for g in groups:
            offsets.append(offsets[-1] + len(g.completions))
        # Requests: children first (point order, children_per_point each), then fresh roots per group.
        children = [0] * len(groups)
        requests: list[tuple[int, int, int]] = []  # (group, parent or -1, t)
        for r, t in points:
            gi = int(rows.group_ids[r])
            requests += [(gi, r - offsets[gi], t)] * self.bc.children_per_point
            children[gi] += self.bc.children_per_point
        for gi, g in enumerate(groups):
            requests += [(gi, -1, 0)] * (self.cfg.n - len(g.completions) - children[gi])
        outputs = self._generate(groups, requests, refill_round)
        leaves = [
            out if j < 0 else branch_leaf(groups[gi].completions[j], t, out, self.decode)
            for (gi, j, t), out in zip(requests, outputs)
        ]
        self.on_phase("grading", 0, len(leaves))
        with timer(self.timings, "grading"):
            texts = [c.text for c in leaves]
            acc, fmt = self.grade(texts, [groups[gi].prompt["answer"] for gi, _, _ in requests]) if texts else ([], [])
        self._append(groups, requests, leaves, acc, fmt)
        return groups

    def _score_phase1(self, groups: list[PromptGroup]):
        """The phase-1 rows, their trainer scores (kept on the groups) and window entropy."""
        rows = pack_groups(groups, self.pad, self.pixels)
        _, reused = engine_values(groups, rows.response_len, self.cfg.engine_scores)
        old_lp, entropy, _ = score_rollouts(
            rows, None if reused is not None else self.score_policy, None, self.cfg.temperature, self.on_phase, self.timings, reused
        )
        k = 0
        for g in groups:
            g.scores = []
            for c in g.completions:
                n = len(c.token_ids)
                g.scores.append((old_lp[k, :n].detach().cpu().clone(), entropy[k, :n].detach().cpu().clone()))
                k += 1
        mask = rows.response_mask.to(entropy.device)
        win, valid = window_entropy(entropy, mask, self.cfg.window)
        return rows, win.cpu(), valid.cpu()

    def _choose(self, groups, rows, win, valid) -> list[tuple[int, int]]:
        """τ (as for HWE tokens, over every rank's phase-1 rows), then B_d points per group."""
        tau_batch = self.hwe.from_quantiles(all_gather_cat(self.hwe.quantiles(win, valid)))
        tau = self.hwe.peek(tau_batch)
        tau = float("nan") if tau is None else float(tau)
        self.thresholds.append(tau)
        trigger = None
        if self.trigger_ids is not None:
            from ares_lit.triggers import trigger_mask

            trigger = trigger_mask(rows.response_ids, self.trigger_ids)
        bc = self.bc
        cand = branch_candidates(win, valid, tau, rows.response_mask.sum(-1), bc.min_prefix, bc.min_suffix, trigger)
        budget = torch.tensor([bc.budget[g.bucket] for g in groups], dtype=torch.long)
        return choose_branch_points(win, cand, rows.group_ids, budget, bc.min_gap, bc.max_points_per_response)

    def _generate(self, groups, requests, refill_round: int) -> list[Completion]:
        """One `generate` call for all children and fresh roots of the round (n = 1 each)."""
        if not requests:
            return []
        prompts, images, caps = [], [], []
        for gi, j, t in requests:
            g = groups[gi]
            prefix = [] if j < 0 else g.completions[j].token_ids[:t]
            prompts.append(list(g.prompt["prompt_ids"]) + list(prefix))
            images.append(g.prompt.get("images") or None)
            caps.append(self.cfg.max_new_tokens - t)
        seed = self.seeds.for_round(refill_round, len(prompts), 1, branch=True)
        self.on_phase("branching", 0, len(prompts))
        with timer(self.timings, "generation"), timer(self.timings, "branch_generation"):
            out = self.engine.generate(
                prompts, self.cfg.sampling(seed, 1), images=images if any(images) else None, max_tokens=caps
            )
        return [o[0] for o in out]

    def _append(self, groups, requests, leaves, acc, fmt) -> None:
        """Add the new leaves to their groups, and count the round for the panels."""
        by_group: list[list[int]] = [[] for _ in groups]
        for k, (gi, _, _) in enumerate(requests):
            by_group[gi].append(k)
        for g, mine in zip(groups, by_group):
            first = len(g.completions)
            b = g.bucket
            self.per_bucket[b, 0] += 1
            phase1 = g.accuracy.mean().item()
            g.inherited = [0] * first + [requests[k][2] for k in mine]
            g.parents = [-1] * first + [requests[k][1] for k in mine]
            g.scores = g.scores + [None] * len(mine)
            g.completions = g.completions + [leaves[k] for k in mine]
            g.accuracy = torch.cat([g.accuracy, torch.tensor([acc[k] for k in mine], dtype=torch.float32)])
            g.format = torch.cat([g.format, torch.tensor([fmt[k] for k in mine], dtype=torch.float32)])
            kids = [k for k in mine if requests[k][1] >= 0]
            self.per_bucket[b, 1] += len({(requests[k][1], requests[k][2]) for k in kids})
            self.per_bucket[b, 2] += len(kids)
            self.per_bucket[b, 3] += sum(len(leaves[k].token_ids) - requests[k][2] for k in kids)
            self.per_bucket[b, 4] += len(mine) - len(kids)
            for k in kids:
                self.child_minus_parent.append(acc[k] - float(g.accuracy[requests[k][1]]))
            lo, hi = self.cfg.filter_low, self.cfg.filter_high
            self.informative[0] += 1
            self.informative[1] += int(lo < phase1 < hi)
            self.informative[2] += int(lo < g.accuracy.mean().item() < hi)

    # ---------------------------------------------------------------- panels
    def metrics(self) -> dict[str, float]:
        """The step's `branch/*` scalars (this rank's groups, every round, before the filter)."""
        out: dict[str, float] = {}
        for d, name in enumerate(BUCKET_NAMES):
            prompts, points, children, tokens, roots = self.per_bucket[d].tolist()
            if prompts:
                out[f"branch/{name}/points"] = points / prompts
                out[f"branch/{name}/children"] = children / prompts
                out[f"branch/{name}/extra_tokens"] = tokens / prompts
                out[f"branch/{name}/fresh_roots"] = roots / prompts
        if self.child_minus_parent:
            out["branch/child_minus_parent_reward"] = sum(self.child_minus_parent) / len(self.child_minus_parent)
        groups, before, after = self.informative
        if groups:
            out["branch/informative_groups"] = after / groups
            out["branch/informative_groups_phase1"] = before / groups
        finite = [t for t in self.thresholds if t == t]
        if finite:
            out["branch/threshold"] = finite[-1]
        return out
