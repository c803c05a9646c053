"""Hand-built collaborators for the experience pipeline: no model, no Lightning, no vLLM.

`ScriptedEngine` is a scripted rollout engine: it returns fixed completions per prompt instead of
sampling, so a test decides exactly which groups are all right, all wrong or mixed.
"""

from __future__ import annotations

import torch

from ares_lit.core import HWEThreshold
from ares_lit.experience import ExperienceConfig, make_experience
from ares_lit.rollout.base import Completion, RolloutEngine
from data_modules.difficulty import DifficultyTracker

GOLD = "42"


_next_token = iter(range(100, 10**6))


def prompt(pid: str, n_right: int, length: int = 2) -> dict:
    """A prompt record whose scripted group has `n_right` right answers (see ScriptedEngine).

    Its prompt ids start with a token unique to it, so the engine can tell prompts apart.
    """
    ids = [next(_next_token)] + [11] * (length - 1)
    return {"id": pid, "prompt_ids": ids, "answer": GOLD, "question": pid, "n_right": n_right}


class GenerateOnlyEngine(RolloutEngine):
    """A scripted engine's base: it only generates (no scoring, no weights to load)."""

    def score(self, sequences, prompt_lens):
        raise NotImplementedError

    def load_weights(self, named_tensors):
        pass


class ScriptedEngine(GenerateOnlyEngine):
    """Returns, for a prompt record with `n_right = k`, k answers "42" and n - k answers "7".

    Response i of a prompt has i + 2 tokens, so rows differ in length. Records every call.
    """

    def __init__(self, records: list[dict]):
        self.by_ids = {tuple(r["prompt_ids"]): r for r in records}
        self.calls: list[dict] = []
        self.log: list[str] | None = None

    def generate(self, prompts, sampling, images=None):
        self.calls.append({"prompts": [list(p) for p in prompts], "seed": sampling.seed, "n": sampling.n})
        if self.log is not None:
            self.log.append("generate")
        out = []
        for ids in prompts:
            rec = self.by_ids[tuple(ids)]
            group = []
            for i in range(sampling.n):
                right = i < rec["n_right"]
                tokens = [20 + (7 * i + j) % 13 for j in range(i + 2)]
                group.append(Completion(tokens, GOLD if right else "7", [-0.5] * len(tokens), "stop"))
            out.append(group)
        return out


def exact_match_grade(log: list[str] | None = None, fmt: float | list[float] = 0.0):
    """grade(texts, golds) -> (accuracy, format): 1.0 when the text equals the gold."""

    def grade(texts, golds):
        if log is not None:
            log.append("grade")
        acc = [float(t == g) for t, g in zip(texts, golds)]
        f = fmt if isinstance(fmt, list) else [fmt] * len(texts)
        return acc, f[: len(texts)]

    return grade


class SpyTracker:
    """Wraps a tracker and records every call with its inputs and outputs, in order."""

    def __init__(self, inner, log: list[str] | None = None):
        self.inner = inner
        self.calls: list[tuple[str, dict]] = []
        self.log = log

    def assign(self, prompt_ids, group_accuracy):
        buckets = self.inner.assign(prompt_ids, group_accuracy)
        self.calls.append(("assign", {"ids": list(prompt_ids), "acc": group_accuracy.clone(), "buckets": buckets.clone()}))
        if self.log is not None:
            self.log.append("assign")
        return buckets

    def update_targets(self, n_hwe, bucket):
        targets, alpha = self.inner.update_targets(n_hwe, bucket)
        self.calls.append(("update_targets", {"n_hwe": n_hwe.clone(), "bucket": bucket.clone(), "targets": targets.clone(), "alpha": alpha.clone()}))
        if self.log is not None:
            self.log.append("update_targets")
        return targets, alpha

    def metrics(self):
        return self.inner.metrics()


class FixedControllers:
    """A tracker that buckets like the real one but returns fixed T_d and α_d."""

    def __init__(self, targets, alpha):
        from ares_lit.core import assign_buckets

        self._assign = assign_buckets
        self.targets = torch.tensor(targets, dtype=torch.float32)
        self.alpha = torch.tensor(alpha, dtype=torch.float32)

    def assign(self, prompt_ids, group_accuracy):
        return self._assign(group_accuracy)

    def update_targets(self, n_hwe, bucket):
        return self.targets.clone(), self.alpha.clone()

    def metrics(self):
        return {}


class FakeScorer:
    """score(input_ids, attention_mask, response_len, temperature, with_entropy, multimodal).

    Entropy of a token is (token id mod 5) / 2, log-probs are a constant. Zero rows are answered like
    `AEPOModule.score` does: a [0, 0] tensor and no entropy. Records the row count of every call.
    """

    def __init__(self, logp: float = -0.25, log: list[str] | None = None, name: str = "score"):
        self.logp = logp
        self.rows: list[int] = []
        self.log = log
        self.name = name

    def __call__(self, input_ids, attention_mask, response_len, temperature, with_entropy=False, multimodal=None):
        self.rows.append(int(input_ids.shape[0]))
        if self.log is not None:
            self.log.append(self.name)
        if input_ids.shape[0] == 0:
            return torch.zeros(0, 0), None
        resp = input_ids[:, -response_len:]
        lp = torch.full(resp.shape, self.logp)
        ent = (resp % 5).float() / 2 if with_entropy else None
        return lp, ent


class StubTokenizer:
    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


class Refill:
    """refill(k): the next k records of a fixed stream, recording each request."""

    def __init__(self, stream: list[dict]):
        self.stream = list(stream)
        self.requests: list[int] = []

    def __call__(self, k: int) -> list[dict]:
        self.requests.append(k)
        out, self.stream = self.stream[:k], self.stream[k:]
        return out


def run_step(prompts, stream=(), log=None, fmt=0.0, scorer=None, tracker=None, hwe=None, **cfg):
    """One make_experience call with fakes; returns (experience, engine, tracker, refill)."""
    config = ExperienceConfig(n=4, max_new_tokens=16, window=2, **cfg)
    engine = ScriptedEngine(list(prompts) + list(stream))
    engine.log = log
    tracker = tracker or SpyTracker(DifficultyTracker(), log)
    refill = Refill(list(stream))
    exp = make_experience(
        list(prompts),
        config,
        engine=engine,
        grade=exact_match_grade(log, fmt),
        tracker=tracker,
        refill=refill,
        score_policy=scorer or FakeScorer(log=log, name="score_policy"),
        score_reference=FakeScorer(-0.5, log=log, name="score_reference"),
        hwe=hwe or HWEThreshold(min_windows=0),  # the scripted responses are a few tokens: all vote (the paper)
        tokenizer=StubTokenizer(),
        seed=5,
    )
    return exp, engine, tracker, refill
