"""The experience pipeline after grading: T_d and α_d in the reward, KL_d for the controller, and one
code path for a rank without groups (docs/algorithm.md "Bucket targets", "Hierarchical entropy reward",
"Dynamic KL").

Plain code on hand-built tensors and objects, without Lightning. The engine is a scripted one
(fixed completions per prompt, tests/experience/fakes.py) and the scorers are fakes.
"""

import math
import subprocess
import sys

import pytest
import torch

import ares_lit.experience.pipeline as pipeline
import ares_lit.experience.shaping as shaping
from ares_lit.core import (
    EASY, HARD, MEDIUM, HWEThreshold, entropy_shaping_reward, hwe_window_mask, kimi_length_reward, reward_inversions,
    shorter_better_reward,
)  # fmt: skip
from ares_lit.experience import ExperienceConfig, LengthRewardConfig, StepSeeds, make_experience, nonwindow_kl, shaped_reward
from data_modules.difficulty import DifficultyTracker
from tests.experience.fakes import (
    FakeScorer, FixedControllers, Refill, ScriptedEngine, SpyTracker, StubTokenizer, exact_match_grade, prompt, run_step,
)  # fmt: skip


def mixed_prompts():
    return [prompt("e", 3, length=3), prompt("m", 2), prompt("h", 1, length=4)]


def test_the_reward_uses_the_targets_and_alphas_the_tracker_returns():
    targets, alpha = [28.0, 3.0, 0.5], [0.5, 1.5, 0.25]
    exp, *_ = run_step(mixed_prompts(), tracker=FixedControllers(targets, alpha))
    r = exp.rollout
    b = r.bucket
    assert b.tolist() == [EASY] * 4 + [MEDIUM] * 4 + [HARD] * 4
    t, a = torch.tensor(targets)[b], torch.tensor(alpha)[b]
    torch.testing.assert_close(r.extras["target"], t)
    torch.testing.assert_close(r.extras["alpha"], a)
    acc = r.extras["accuracy"]
    expected = entropy_shaping_reward(r.extras["n_hwe"], t, b, acc >= 0.5, a)
    assert expected.abs().sum() > 0.1  # the shaping is not trivially zero here
    torch.testing.assert_close(r.extras["entropy_reward"], expected)
    torch.testing.assert_close(r.extras["reward"], acc + expected)
    for d, name in enumerate(("easy", "medium", "hard")):
        assert r.metrics[f"bucket/{name}/target"] == targets[d]
        assert r.metrics[f"bucket/{name}/alpha"] == alpha[d]


def test_the_reward_uses_this_steps_targets_and_the_alphas_from_before_the_step():
    """With the real tracker: T_d is this batch's mean N_HE per bucket; α_d is its pre-step value."""
    inner = DifficultyTracker()
    inner.targets = torch.tensor([1.0, 2.0, 3.0])  # from an earlier step
    inner.alpha = torch.tensor([0.3, 1.1, 1.7])
    alpha_before = inner.alpha.clone()
    tracker = SpyTracker(inner)
    exp, *_ = run_step(mixed_prompts(), tracker=tracker)
    r = exp.rollout
    b, n_hwe = r.bucket, r.extras["n_hwe"]
    batch_mean = torch.stack([n_hwe[b == d].mean() for d in range(3)])
    torch.testing.assert_close(r.extras["target"], batch_mean[b])
    torch.testing.assert_close(inner.targets, batch_mean)
    torch.testing.assert_close(r.extras["alpha"], alpha_before[b])
    assert not torch.allclose(inner.alpha, alpha_before)  # α moved after the step: the test can tell
    expected = entropy_shaping_reward(n_hwe, batch_mean[b], b, r.extras["accuracy"] >= 0.5, alpha_before[b])
    torch.testing.assert_close(r.extras["entropy_reward"], expected)
    (name, call), = [c for c in tracker.calls if c[0] == "update_targets"]
    torch.testing.assert_close(call["n_hwe"], n_hwe)
    assert call["bucket"].tolist() == b.tolist()


def test_shaped_reward_reproduces_the_case_study():
    """docs/algorithm.md: at α = 0.5, T = 28, a correct easy answer with N_HE = 51 gets -0.5."""
    reward, r_ent = shaped_reward(
        torch.tensor([1.0]), torch.zeros(1), torch.tensor([51.0]), torch.tensor([EASY]),
        torch.tensor([28.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 0.0]),
    )  # fmt: skip
    torch.testing.assert_close(r_ent, torch.tensor([-0.5]))
    torch.testing.assert_close(reward, torch.tensor([0.5]))
    reward, r_ent = shaped_reward(
        torch.tensor([1.0]), torch.ones(1), torch.tensor([51.0]), torch.tensor([EASY]),
        torch.tensor([28.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 0.0]), entropy_reward=False, format_weight=0.25,
    )  # fmt: skip
    torch.testing.assert_close((reward, r_ent), (torch.tensor([1.25]), torch.tensor([0.0])))


def test_kl_for_the_controller_counts_only_tokens_outside_hwe_windows():
    kl = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    window = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    bucket = torch.tensor([EASY, HARD, EASY])
    expected_sum = torch.tensor([1.0 + 3.0 + 10.0, 0.0, 10.0 + 20.0], dtype=torch.float64)
    expected_cnt = torch.tensor([4.0, 0.0, 2.0], dtype=torch.float64)
    kl_sum, kl_cnt = nonwindow_kl(kl, response, window, bucket)
    torch.testing.assert_close((kl_sum, kl_cnt), (expected_sum, expected_cnt))
    # Flipping the window mask (inside <-> outside) must change the answer: window tokens never count.
    flipped = nonwindow_kl(kl, response, ~window & response, bucket)
    assert not torch.equal(flipped[0], expected_sum) and not torch.equal(flipped[1], expected_cnt)
    torch.testing.assert_close(flipped[0], torch.tensor([2.0, 0.0, 70.0], dtype=torch.float64))


def test_kl_stats_ignore_the_loss_graph():
    kl = torch.ones(1, 3, requires_grad=True)
    kl_sum, _ = nonwindow_kl(kl * 2, torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool), torch.tensor([MEDIUM]))
    assert not kl_sum.requires_grad and kl_sum.tolist() == [0.0, 6.0, 0.0]


def test_the_batch_windows_cover_the_hwe_tokens_of_each_response():
    exp, *_ = run_step(mixed_prompts())
    r = exp.rollout
    assert r.window_mask.any() and not (r.window_mask & ~r.response_mask).any()
    assert r.metrics["hwe/threshold"] == pytest.approx(r.metrics["hwe/threshold_batch"])
    tau = r.metrics["hwe/threshold"]
    ent = (r.input_ids[:, -r.response_len :] % 5).float() / 2  # FakeScorer's entropy
    win = (ent[:, :-1] + ent[:, 1:]) / 2  # window 2
    valid = r.response_mask[:, :-1] & r.response_mask[:, 1:]
    hwe = torch.cat([valid & (win >= tau), torch.zeros(r.size, 1, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(r.extras["n_hwe"], hwe.sum(-1).float())
    assert torch.equal(r.window_mask, hwe_window_mask(hwe, 2, r.response_mask))


def test_tau_voters_and_a_batch_without_voters_keeps_tau():
    exp, *_ = run_step(mixed_prompts())  # run_step's HWEThreshold(min_windows=0): every response votes
    assert exp.rollout.metrics["hwe/voters"] == exp.rollout.size == 12
    hwe = HWEThreshold()  # the default, 8 windows: these 2-4-token responses cannot vote
    hwe.value = 0.75  # τ from an earlier step
    r = run_step(mixed_prompts(), hwe=hwe)[0].rollout
    assert r.metrics["hwe/voters"] == 0 and math.isnan(r.metrics["hwe/threshold_batch"])
    assert r.metrics["hwe/threshold"] == 0.75 and hwe.num_updates == 0
    # their tokens are still compared with the kept τ
    ent = (r.input_ids[:, -r.response_len :] % 5).float() / 2
    win = (ent[:, :-1] + ent[:, 1:]) / 2
    valid = r.response_mask[:, :-1] & r.response_mask[:, 1:]
    torch.testing.assert_close(r.extras["n_hwe"], (valid & (win >= 0.75)).sum(-1).float())
    assert r.extras["n_hwe"].sum() > 0


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_reward_inversions_and_controller_panels(alpha):
    """bucket/<d>/reward_inversions is the share of the bucket's mixed groups in which a wrong answer's
    total reward is >= a right one's; none at α = 0.5 for easy and medium, and the panel tells α = 2."""
    # medium's T = 5 lies far above its N_HE (0-1): a right medium answer pays up to the cap α
    r = run_step(mixed_prompts(), tracker=FixedControllers([0.0, 5.0, 0.0], [alpha, alpha, alpha]))[0].rollout
    inverted, mixed = reward_inversions(r.extras["reward"], r.extras["accuracy"] >= 0.5, r.extras["group_ids"], r.bucket)
    assert mixed.tolist() == [1, 1, 1]
    for d, name in enumerate(("easy", "medium", "hard")):
        assert r.metrics[f"bucket/{name}/reward_inversions"] == float(inverted[d])
    easy_medium = r.metrics["bucket/easy/reward_inversions"] + r.metrics["bucket/medium/reward_inversions"]
    assert easy_medium == (0.0 if alpha == 0.5 else 1.0)
    # the real tracker's panels: one calibration batch seen, T*_d = this batch's mean N_HE
    r = run_step(mixed_prompts())[0].rollout
    for d, name in enumerate(("easy", "medium", "hard")):
        assert r.metrics[f"bucket/{name}/calibration"] == 1.0
        assert r.metrics[f"bucket/{name}/setpoint"] == pytest.approx(float(r.extras["n_hwe"][r.bucket == d].mean()))


class Recorder:
    """Stands in for a collective and logs that it was called."""

    def __init__(self, log, fn):
        self.log, self.fn = log, fn

    def __call__(self, x):
        self.log.append("all_gather")
        return self.fn(x)


def step_with_collectives(monkeypatch, prompts):
    """One step where another rank kept groups (world_max >= 1); returns (rollout, call log, τ state)."""
    log = []
    monkeypatch.setattr(pipeline, "world_max", lambda v: max(int(v), 1))
    monkeypatch.setattr(shaping, "all_gather_cat", Recorder(log, lambda x: x))
    hwe = HWEThreshold()
    policy = FakeScorer(log=log, name="score_policy")
    exp, _, tracker, _ = run_step(prompts, log=log, scorer=policy, hwe=hwe)
    return exp.rollout, log, hwe, tracker, policy


def test_a_rank_without_groups_runs_the_same_stages_and_collectives(monkeypatch):
    with_rows, log_a, _, _, _ = step_with_collectives(monkeypatch, mixed_prompts())
    empty, log_b, hwe, tracker, policy = step_with_collectives(monkeypatch, [prompt("x", 4), prompt("y", 0)])
    after_grading = ["score_policy", "score_reference", "all_gather", "update_targets"]
    assert log_a[-4:] == log_b[-4:] == after_grading
    assert with_rows.size == 12 and empty.size == 0
    # Zero rows, the same layout: the scorer was still called (it runs its dummy forwards).
    assert policy.rows == [0]
    assert empty.input_ids.shape[0] == empty.response_mask.shape[0] == 0 and empty.response_len >= 1
    assert empty.old_log_probs.shape == empty.ref_log_probs.shape == empty.window_mask.shape == (0, empty.response_len)
    for v in (empty.advantages, empty.bucket, *empty.extras.values()):
        assert v.shape[0] == 0
    (_, call), = [c for c in tracker.calls if c[0] == "update_targets"]
    assert call["n_hwe"].shape == call["bucket"].shape == (0,)
    assert hwe.num_updates == 0 and math.isnan(empty.metrics["hwe/threshold_batch"])
    assert empty.samples == [] and empty.metrics["rollout/groups_dropped"] == 2.0


def test_the_experience_pipeline_imports_no_lightning():
    code = (
        "import sys, ares_lit.experience\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ length rewards (issue #23)
def _length_step(length_reward, seed=5, **cfg):
    """One make_experience call with the fakes and a length reward; `seed` may be a StepSeeds."""
    prompts = mixed_prompts()
    config = ExperienceConfig(n=4, max_new_tokens=16, window=2, length_reward=length_reward, **cfg)
    return make_experience(
        prompts, config, engine=ScriptedEngine(prompts), grade=exact_match_grade(), tracker=SpyTracker(DifficultyTracker()),
        refill=Refill([]), score_policy=FakeScorer(), score_reference=FakeScorer(-0.5), hwe=HWEThreshold(min_windows=0),
        tokenizer=StubTokenizer(), seed=seed,
    ).rollout  # fmt: skip


def test_the_length_reward_enters_the_reward_and_its_panels():
    """R = R_acc + R_entropy + R_len; the scripted response j of a group has j + 2 tokens (2..5)."""
    r = _length_step(LengthRewardConfig("overlong", max_length=4, buffer_len=2))
    lengths = r.response_mask.sum(-1).float()
    assert lengths.tolist() == [2.0, 3.0, 4.0, 5.0] * 3
    expected = torch.tensor([0.0, -0.5, -1.0, -1.0] * 3)  # free up to 2, -1 at L_max = 4, -1 beyond
    torch.testing.assert_close(r.extras["length_reward"], expected)
    acc, ent = r.extras["accuracy"], r.extras["entropy_reward"]
    assert ent.abs().sum() > 0  # combined with the entropy reward
    torch.testing.assert_close(r.extras["reward"], acc + ent + expected)
    assert r.metrics["reward/length"] == pytest.approx(-0.625)
    for name in ("easy", "medium", "hard"):
        assert r.metrics[f"bucket/{name}/length_reward"] == pytest.approx(-0.625)
    # the buckets still come from the accuracy alone
    assert r.bucket.tolist() == [EASY] * 4 + [MEDIUM] * 4 + [HARD] * 4


def test_shorter_better_makes_the_papers_reward_and_kimi_waits_for_its_warm_up():
    r = _length_step(LengthRewardConfig("shorter_better"), entropy_reward=False)
    lengths, acc = r.response_mask.sum(-1).float(), r.extras["accuracy"]
    paper = shorter_better_reward(lengths, acc >= 0.5, r.extras["group_ids"], alpha=2.0, beta=0.001)
    torch.testing.assert_close(r.extras["reward"], paper)  # R_acc + R_len = α·1[correct] - β·|L - SOL|
    kimi = LengthRewardConfig("kimi", weight=0.5, warmup_steps=3)
    before = _length_step(kimi, seed=StepSeeds(5, 0, 2), entropy_reward=False)
    assert before.extras["length_reward"].abs().sum() == 0 and before.metrics["reward/length"] == 0.0
    after = _length_step(kimi, seed=StepSeeds(5, 0, 3), entropy_reward=False)
    expected = kimi_length_reward(lengths, acc >= 0.5, r.extras["group_ids"], weight=0.5)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(after.extras["length_reward"], expected)
    torch.testing.assert_close(after.extras["reward"], after.extras["accuracy"] + expected)


def test_the_length_reward_is_off_by_default_and_checked_at_construction():
    r = run_step(mixed_prompts())[0].rollout
    assert not any(k.startswith("reward/length") or k.endswith("/length_reward") for k in r.metrics)
    assert r.extras["length_reward"].abs().sum() == 0
    torch.testing.assert_close(r.extras["reward"], r.extras["accuracy"] + r.extras["entropy_reward"], rtol=0, atol=0)
    assert LengthRewardConfig("overlong").limits(256) == (256, 51) and LengthRewardConfig("overlong", 100, 10).limits(256) == (100, 10)
    for bad, match in [
        (LengthRewardConfig("dapo"), "kind must be one of"),
        (LengthRewardConfig("overlong", max_length=8, buffer_len=9), "buffer_len must be in"),
        (LengthRewardConfig("overlong", buffer_len=0), "buffer_len must be in"),
        (LengthRewardConfig("kimi", weight=-1.0), ">= 0"),
        (LengthRewardConfig("kimi", warmup_steps=-1), ">= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            ExperienceConfig(length_reward=bad).check()
