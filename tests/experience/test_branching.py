"""Branching rollouts in the experience pipeline, with a scripted engine (issue #14).

What is scripted: `ForkEngine` stands in for a policy on a task with one known fork. A response
has L tokens; its token 1 is A (rare) or B, and its token F is X or Y, each drawn from a
`random.Random` seeded with the request's seed (vLLM's contract: request i, sample j gets
seed + i·n + j), so a request's sample is a function of its seed and prefix. The answer is right
only with A at 1 and X at F. A prompt + prefix request continues the prefix (it keeps token 1 when
the prefix holds it), and obeys each request's max_tokens cap. `fork_scorer` is the trainer pass:
the policy is uncertain (entropy 3) at F after an A and sure (0.2) everywhere else, so the HWE
window sits on the fork of A-responses. `ForkTokenizer` decodes a response to "42" (right) or "7".
Grading, buckets, τ, branch points, seeds, masks and advantages are the real code.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from ares_lit.core import HWEThreshold, branch_candidates, window_entropy
from ares_lit.experience import ExperienceConfig, make_experience
from ares_lit.experience.config import BranchingConfig
from ares_lit.experience.scoring import pack_groups
from ares_lit.experience.seeds import StepSeeds
from ares_lit.rollout.base import Completion
from data_modules.difficulty import DifficultyTracker
from tests.experience.fakes import FakeScorer, GenerateOnlyEngine, Refill, exact_match_grade

L, F, A, B, X, Y, EOS = 12, 6, 60, 61, 80, 81, 1
P_A, P_X = 0.3, 0.35


class ForkTokenizer:
    pad_token_id = 0
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        ids = list(ids)
        right = len(ids) > F and ids[1] == A and ids[F] == X
        return "42" if right else "7"


class ForkEngine(GenerateOnlyEngine):
    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len
        self.calls: list[dict] = []
        self.tokens = 0

    def generate(self, prompts, sampling, images=None, max_tokens=None):
        self.calls.append({"prompts": [list(p) for p in prompts], "seed": sampling.seed, "n": sampling.n, "caps": max_tokens})
        out = []
        for i, ids in enumerate(prompts):
            prefix = list(ids[self.prompt_len :])
            cap = sampling.max_tokens if max_tokens is None else max_tokens[i]
            group = []
            for j in range(sampling.n):
                rng = random.Random(sampling.seed + i * sampling.n + j)
                full = list(prefix)
                while len(full) < L - 1:
                    pos = len(full)
                    if pos == 1:
                        full.append(A if rng.random() < P_A else B)
                    elif pos == F:
                        full.append(X if rng.random() < P_X else Y)
                    else:
                        full.append(100 + rng.randrange(1000))
                full.append(EOS)
                new = full[len(prefix) :][:cap]
                self.tokens += len(new)
                finish = "stop" if new and new[-1] == EOS else "length"
                group.append(Completion(new, ForkTokenizer().decode(full), [-0.5] * len(new), finish))
            out.append(group)
        return out


def fork_scorer(prompt_len: int, second: bool = False):
    """The trainer pass (module docstring); `second` adds an uncertain token 2 after an A."""

    def score(input_ids, attention_mask, response_len, temperature, with_entropy=False, multimodal=None):
        if input_ids.shape[0] == 0:
            return torch.zeros(0, 0), None
        resp = input_ids[:, -response_len:]
        ent = torch.full(resp.shape, 0.2)
        ent[:, F] = torch.where(resp[:, 1] == A, 3.0, 0.2)
        if second:
            ent[:, 2] = torch.where(resp[:, 1] == A, 2.5, 0.2)
        return torch.full(resp.shape, -0.5), ent

    return score


PROMPT_LEN = 3


def fork_prompts(k: int, start: int = 0) -> list[dict]:
    return [{"id": f"p{i}", "prompt_ids": [10_000 + i, 5, 6], "answer": "42", "question": f"q{i}"} for i in range(start, start + k)]


def run(prompts, branching: BranchingConfig | None, n=6, seed=3, filter_groups=False, stream=(), **kw):
    cfg = ExperienceConfig(n=n, max_new_tokens=L, window=2, filter_groups=filter_groups, branching=branching, **kw)
    engine = ForkEngine(PROMPT_LEN)
    exp = make_experience(
        list(prompts), cfg, engine=engine, grade=exact_match_grade(), tracker=DifficultyTracker(), refill=Refill(list(stream)),
        score_policy=fork_scorer(PROMPT_LEN), score_reference=FakeScorer(-0.5), hwe=HWEThreshold(), tokenizer=ForkTokenizer(),
        seed=StepSeeds(seed, 0, 7),
    )  # fmt: skip
    return exp, engine


BRANCH = BranchingConfig(initial_n=2, budget=(0, 1, 2), children_per_point=2, min_prefix=2, min_suffix=2, min_gap=4)


def rows_of(rollout):
    """Per row: (group, prompt ids, response ids) from the padded batch."""
    out = []
    p_w = rollout.input_ids.shape[1] - rollout.response_len
    for i in range(rollout.size):
        m = rollout.attention_mask[i].bool()
        out.append((int(rollout.extras["group_ids"][i]), rollout.input_ids[i, :p_w][m[:p_w]].tolist(), rollout.input_ids[i, p_w:][m[p_w:]].tolist()))
    return out


def test_children_continue_their_parents_token_for_token_and_groups_have_n_leaves():
    exp, engine = run(fork_prompts(16), BRANCH)
    r = exp.rollout
    rows = rows_of(r)
    groups = {}
    for g, p, resp in rows:
        groups.setdefault(g, []).append((p, resp))
    assert len(groups) == 16 and all(len(v) == 6 for v in groups.values())
    # No duplicated rows: within a group every leaf differs (fresh seeds, fresh filler tokens).
    assert all(len({tuple(resp) for _, resp in v}) == 6 for v in groups.values())
    first, second = engine.calls
    assert first["n"] == 2 and second["n"] == 1 and second["seed"] != first["seed"]
    inherited = r.extras["inherited"].tolist()
    assert sum(t > 0 for t in inherited) > 0
    kids = 0
    for (g, p, resp), t in zip(rows, inherited):
        if t == 0:
            continue
        kids += 1
        parents = [q for q in groups[g] if q[1][:t] == resp[:t] and q[1] != resp]
        assert parents, "a child's first t tokens are some leaf's tokens of its own group"
    # The phase-2 prompts are prompt + parent response[:t], as token ids, with max_tokens = L - t.
    for ids, cap in zip(second["prompts"], second["caps"]):
        t = len(ids) - PROMPT_LEN
        assert cap == L - t
        if t:
            gid = ids[0] - 10_000
            assert any(resp[:t] == ids[PROMPT_LEN:] for _, resp in groups[gid])
    assert kids == sum(len(ids) > PROMPT_LEN for ids in second["prompts"])


def test_the_same_seed_gives_the_same_tree_and_another_seed_another():
    a, _ = run(fork_prompts(12), BRANCH, seed=3)
    b, _ = run(fork_prompts(12), BRANCH, seed=3)
    c, _ = run(fork_prompts(12), BRANCH, seed=4)
    assert torch.equal(a.rollout.input_ids, b.rollout.input_ids)
    assert torch.equal(a.rollout.extras["inherited"], b.rollout.extras["inherited"])
    assert a.rollout.input_ids.shape != c.rollout.input_ids.shape or not torch.equal(a.rollout.input_ids, c.rollout.input_ids)


def test_points_obey_threshold_edges_gap_and_the_bucket_budget():
    prompts = fork_prompts(24)
    engine = ForkEngine(PROMPT_LEN)
    from ares_lit.experience.branching import Brancher
    from ares_lit.experience.groups import assign_group_buckets, grade_groups, sample_groups

    bc = BranchingConfig(initial_n=3, budget=(0, 1, 2), children_per_point=1, min_prefix=2, min_suffix=3, min_gap=3, max_points_per_response=2)
    cfg = ExperienceConfig(n=6, max_new_tokens=L, window=2, branching=bc)
    groups = sample_groups(engine, prompts, cfg, seed=11)
    grade_groups(groups, exact_match_grade())
    assign_group_buckets(DifficultyTracker(), groups)
    phase1 = copy.deepcopy(groups)
    hwe = HWEThreshold()
    brancher = Brancher(cfg, engine=engine, grade=exact_match_grade(), score_policy=fork_scorer(PROMPT_LEN, True), hwe=hwe,
                        tokenizer=ForkTokenizer(), seeds=StepSeeds(1))  # fmt: skip
    brancher(groups, 0)
    rows = pack_groups(phase1, 0)
    _, ent = fork_scorer(PROMPT_LEN, True)(rows.input_ids, rows.attention_mask, rows.response_len, 1.0, True)
    win, valid = window_entropy(ent, rows.response_mask, 2)
    tau = brancher.thresholds[0]
    assert tau == pytest.approx(float(hwe.from_quantiles(hwe.quantiles(win, valid))))
    assert hwe.num_updates == 0  # branching peeks at τ; the step folds it in once
    cand = branch_candidates(win, valid, tau, rows.response_mask.sum(-1), 2, 3)
    offsets = torch.cumsum(torch.tensor([0] + [len(g.completions) for g in phase1]), 0)
    counts = {0: [], 1: [], 2: []}
    for gi, g in enumerate(groups):
        points = sorted({(p, t) for p, t in zip(g.parents, g.inherited) if p >= 0})
        for p, t in points:
            row = int(offsets[gi]) + p
            assert cand[row, t], "every point is a candidate: H̄ >= τ, min_prefix <= t <= len - min_suffix"
        for p in {p for p, _ in points}:
            ts = [t for q, t in points if q == p]
            assert len(ts) <= 2 and all(abs(u - v) >= 3 for u in ts for v in ts if u != v)
        possible = 0  # per row, what a greedy scan by entropy can place under the gap and per-row caps
        for row in range(int(offsets[gi]), int(offsets[gi + 1])):
            placed = []
            for t in sorted(cand[row].nonzero().flatten().tolist(), key=lambda t: (-float(win[row, t]), t)):
                if len(placed) < 2 and all(abs(t - u) >= 3 for u in placed):
                    placed.append(t)
            possible += len(placed)
        counts[g.bucket].append((len(points), possible))
        assert len(g.completions) == 6
    for d, budget in enumerate(bc.budget):
        for got, possible in counts[d]:
            assert got == min(budget, possible), (d, got, possible)  # B_d when enough candidates exist
    assert any(got == 2 for got, _ in counts[2]) and any(got == 1 for got, _ in counts[1])


def test_dedupe_masks_inherited_prefixes_out_of_the_losses_and_full_keeps_them():
    exp, _ = run(fork_prompts(16), BRANCH)
    r = exp.rollout
    inherited = r.extras["inherited"]
    pos = torch.arange(r.response_len)[None, :]
    own = r.response_mask & (pos >= inherited[:, None])
    assert torch.equal(r.loss_mask, own)
    child = inherited > 0
    assert child.any() and not r.loss_mask[child][:, 0].any()  # t >= min_prefix >= 1: position 0 is inherited
    sel = r.select(torch.arange(r.size))
    assert torch.equal(sel["response_mask"], r.loss_mask[:, : sel["response_len"]])  # what the losses and KL see
    full = BranchingConfig(**{**BRANCH.__dict__, "prefix_loss": "full"})
    exp_full, _ = run(fork_prompts(16), full)
    rf = exp_full.rollout
    assert rf.loss_mask is None
    sel = rf.select(torch.arange(rf.size))
    assert torch.equal(sel["response_mask"], rf.response_mask[:, : sel["response_len"]])


def test_a_fork_makes_more_groups_informative_than_flat_sampling_for_fewer_tokens():
    prompts = fork_prompts(192)
    flat, flat_engine = run(prompts, None, n=6)
    branched, branch_engine = run(prompts, BRANCH, n=6)
    assert branch_engine.tokens <= flat_engine.tokens

    def informative(r):
        acc = r.extras["accuracy"].view(-1, 6).mean(-1)
        return float(((acc > 0) & (acc < 1)).float().mean())

    m = branched.rollout.metrics
    print("informative: flat", informative(flat.rollout), "branching", informative(branched.rollout), m)
    assert informative(branched.rollout) >= informative(flat.rollout) + 0.08
    assert m["branch/informative_groups"] == pytest.approx(informative(branched.rollout))
    assert m["branch/informative_groups"] > m["branch/informative_groups_phase1"]
    assert m.get("branch/easy/points", 0.0) == 0.0 and 0 < m["branch/medium/points"] <= 1 and 0 < m["branch/hard/points"] <= 2
    assert m["branch/hard/children"] > 0 and m["branch/hard/extra_tokens"] > 0


def test_tree_advantage_subtracts_the_branch_points_mean():
    tree = BranchingConfig(**{**BRANCH.__dict__, "advantage": "tree"})
    flat, _ = run(fork_prompts(16), BRANCH)
    treed, _ = run(fork_prompts(16), tree)
    assert torch.equal(flat.rollout.input_ids, treed.rollout.input_ids)
    a, b = flat.rollout.advantages, treed.rollout.advantages
    roots = flat.rollout.extras["inherited"] == 0
    assert torch.equal(a[roots], b[roots])
    assert not torch.equal(a[~roots], b[~roots])


def test_refill_rounds_are_shared_when_branching(monkeypatch):
    """With branching each round scores and gathers: a rank that already has its groups still runs
    the round another rank needs (on zero prompts). `world_max` stands in for the other rank."""
    from ares_lit.experience import groups as groups_mod

    calls = []
    monkeypatch.setattr(groups_mod, "world_max", lambda v: calls.append(v) or max(int(v), 1))
    cfg_prompts = fork_prompts(4)
    exp, engine = run(cfg_prompts, BRANCH, filter_groups=True, stream=fork_prompts(8, start=50))
    assert len(calls) == 2  # max_refill_tries = 2 decisions, both shared
    assert exp.refill_rounds == 2


def test_bad_branching_settings_fail_before_any_work():
    with pytest.raises(ValueError, match="exceed n"):
        BranchingConfig(initial_n=4, budget=(0, 1, 2), children_per_point=2).check(6)
    with pytest.raises(ValueError, match="initial_n"):
        BranchingConfig(initial_n=0).check(4)
    with pytest.raises(ValueError, match="prefix_loss"):
        BranchingConfig(initial_n=2, children_per_point=1, prefix_loss="half").check(4)
    with pytest.raises(ValueError, match="advantage"):
        BranchingConfig(initial_n=2, children_per_point=1, advantage="deep").check(4)
    with pytest.raises(ValueError, match="budget"):
        BranchingConfig(initial_n=2, children_per_point=1, budget=(0, 1)).check(4)
