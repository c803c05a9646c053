"""What a run prints: vLLM's log level is a RolloutCallback setting (WARNING by default), checked at construction."""

import pytest

from callbacks.rollout import RolloutCallback


def test_rollout_callback_takes_a_vllm_log_level():
    assert RolloutCallback().vllm_log_level == "WARNING"
    assert RolloutCallback(vllm_log_level="info").vllm_log_level == "INFO"
    with pytest.raises(ValueError, match="vllm log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got 'loud'"):
        RolloutCallback(vllm_log_level="loud")
