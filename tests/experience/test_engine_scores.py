"""The skipped policy pass: an engine whose log-probs and entropy are the trainer's own stands in
for the policy scoring pass (ExperienceConfig.engine_scores, RolloutCallback policy_scoring).

Scripted engine and scorer (tests/experience/fakes.py): the engine reports, per token, exactly
what FakeScorer would compute, so both paths must build the same batch.
"""

from types import SimpleNamespace

import pytest
import torch

from ares_lit.experience import ExperienceConfig
from ares_lit.experience.scoring import reuse_engine_scores
from ares_lit.rollout.base import Completion
from tests.experience import fakes
from tests.experience.fakes import FakeScorer, prompt, run_step


class EngineWithScores(fakes.ScriptedEngine):
    """ScriptedEngine whose completions carry FakeScorer's log-prob and entropy (or none for row `missing`)."""

    missing: int | None = None

    def generate(self, prompts, sampling, images=None):
        out = super().generate(prompts, sampling, images)
        k = 0
        for group in out:
            for j, c in enumerate(group):
                ent = None if k == self.missing else [(t % 5) / 2 for t in c.token_ids]
                group[j] = Completion(c.token_ids, c.text, [-0.25] * len(c.token_ids), c.finish_reason, ent)
                k += 1
        return out


def step(monkeypatch, engine_scores: bool, missing=None):
    EngineWithScores.missing = missing
    monkeypatch.setattr(fakes, "ScriptedEngine", EngineWithScores)
    policy = FakeScorer(name="score_policy")
    prompts = [prompt("e", 3, length=3), prompt("m", 2), prompt("h", 1, length=4)]
    exp, *_ = run_step(prompts, scorer=policy, engine_scores=engine_scores)
    return exp.rollout, policy


def test_engine_values_replace_the_policy_pass_and_build_the_same_batch(monkeypatch):
    scored, policy_a = step(monkeypatch, engine_scores=False)
    reused, policy_b = step(monkeypatch, engine_scores=True)
    assert policy_a.rows == [12] and policy_b.rows == []  # the pass ran once, then not at all
    assert reused.metrics["rollout/policy_pass_skipped"] == 1.0 and scored.metrics["rollout/policy_pass_skipped"] == 0.0
    mask = scored.response_mask
    assert torch.equal(reused.old_log_probs[mask], scored.old_log_probs[mask])
    assert torch.equal(reused.extras["token_entropy"], scored.extras["token_entropy"])
    assert torch.equal(reused.window_mask, scored.window_mask)
    assert torch.equal(reused.advantages, scored.advantages)
    assert torch.equal(reused.ref_log_probs, scored.ref_log_probs)  # the reference pass still runs
    assert "rollout/engine_logprob_gap" not in reused.metrics  # engine vs itself: nothing to report


def test_a_completion_without_entropy_falls_back_to_the_policy_pass(monkeypatch):
    rollout, policy = step(monkeypatch, engine_scores=True, missing=5)
    assert policy.rows == [12] and rollout.metrics["rollout/policy_pass_skipped"] == 0.0


def cfg(**kw):
    return ExperienceConfig(**kw)


@pytest.mark.parametrize(
    ("scoring", "engine", "config", "precision", "correction", "reused", "why"),
    [
        ("auto", True, cfg(), "32-true", None, True, "skipped"),
        ("always", True, cfg(), "32-true", None, False, "policy_scoring=always"),
        ("auto", False, cfg(), "32-true", None, False, "not the trainer's"),
        ("auto", True, cfg(top_p=0.9), "32-true", None, False, "truncation"),
        ("auto", True, cfg(top_k=20), "bf16-true", None, False, "truncation"),
        ("auto", True, cfg(), "bf16-mixed", None, False, "autocast"),
        ("auto", True, cfg(), "bf16-true", None, True, "skipped"),
        ("auto", True, cfg(), "32-true", "token_tis", False, "rollout_correction"),
    ],
)
def test_the_pass_is_skipped_only_where_the_engine_values_are_the_trainers(scoring, engine, config, precision, correction, reused, why):
    got, how = reuse_engine_scores(scoring, SimpleNamespace(reports_trainer_scores=engine), config, precision, correction)
    assert got is reused and why in how


def test_unknown_policy_scoring_is_rejected():
    with pytest.raises(ValueError, match=r"policy_scoring must be one of \('auto', 'always'\); got 'sometimes'"):
        reuse_engine_scores("sometimes", None, cfg(), "32-true", None)
