"""Reasoning trigger words for the optional HWE filter (docs/algorithm.md "HWE tokens").

With the filter on, an HWE token also needs the decoded, lower-cased word of the *sampled* token
at t to be one of these (the released code mistakenly looked at the arg-max token). The released
code used a 174-word list; this shorter English list covers the common self-reflection and
connective words. Users can pass their own list.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_TRIGGER_WORDS", "trigger_token_ids", "trigger_mask"]

DEFAULT_TRIGGER_WORDS = (
    "wait", "but", "however", "alternatively", "hmm", "therefore", "perhaps", "maybe", "actually",
    "so", "thus", "hence", "let", "check", "verify", "recheck", "reconsider", "instead", "suppose",
    "assume", "if", "then", "because", "since", "although", "though", "yet", "still", "again",
    "oh", "no", "hold", "now", "first", "second", "next", "finally", "consider", "note", "recall",
    "rethink", "double", "mistake", "wrong", "correct", "indeed", "otherwise", "meanwhile", "why",
)


def trigger_token_ids(tokenizer, words=DEFAULT_TRIGGER_WORDS) -> torch.Tensor:
    """Ids of vocabulary tokens whose decoded, stripped, lower-cased text is a trigger word.

    Built once per tokenizer; a word split over several tokens is not matched (token-level).
    """
    wanted = {w.strip().lower() for w in words}
    ids = [
        i
        for i in range(len(tokenizer))
        if tokenizer.decode([i], skip_special_tokens=True).strip().lower().strip(".,;:!?") in wanted
    ]
    return torch.tensor(ids, dtype=torch.long)


def trigger_mask(response_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """bool [B, R]: the sampled token at t is a trigger word."""
    return torch.isin(response_ids, ids.to(response_ids.device))
