"""Rollout engines: the only code that talks to vLLM or HF `generate`.

One interface (`RolloutEngine`), several engines, picked by name:

    engine = build_engine("vllm", model_path="...", dtype="float32")
    groups = engine.generate(prompt_ids, SamplingConfig(n=8, max_tokens=256))
    engine.load_weights(policy.named_parameters())   # after each optimizer step

Importing this package imports neither vLLM nor transformers; engines import them when built.
"""

from __future__ import annotations

from ares_lit.rollout.base import Completion, RolloutEngine, SamplingConfig
from ares_lit.rollout.hf_engine import HFEngine
from ares_lit.rollout.vllm_engine import VLLMEngine

__all__ = ["ENGINES", "Completion", "HFEngine", "RolloutEngine", "SamplingConfig", "VLLMEngine", "build_engine"]

ENGINES: dict[str, type[RolloutEngine]] = {"vllm": VLLMEngine, "hf": HFEngine}


def build_engine(name: str, **kwargs) -> RolloutEngine:
    """Construct the engine registered under `name` with `kwargs`."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](**kwargs)
