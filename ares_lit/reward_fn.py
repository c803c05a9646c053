"""User reward functions, loaded from a plain file as `path.py:function` (as EasyR1 and ARES do).

The function takes the decoded responses and the gold answers of a batch and returns one score
per response: a float in [0, 1] (R_acc), or a dict with "accuracy" and optionally "format".
A response counts as correct for bucketing when its accuracy is >= 0.5.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

__all__ = ["load_reward_fn"]


def load_reward_fn(spec: str) -> Callable[[list[str], list[str]], list]:
    """Load `path/to/file.py:function`; a clear error names what is missing."""
    if ":" not in spec:
        raise ValueError(f"rollout.reward_fn must look like 'path/to/file.py:function'; got {spec!r}")
    path_str, name = spec.rsplit(":", 1)
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"rollout.reward_fn file {path} does not exist (relative to {Path.cwd()}); give an existing "
            "path/to/file.py:function, or remove rollout.reward_fn to grade with math-verify"
        )
    module_spec = importlib.util.spec_from_file_location(f"ares_user_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{path} has no function {name!r}")
    return fn
