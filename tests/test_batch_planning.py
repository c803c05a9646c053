"""Token-budget micro-batches (`ares_lit.batch`): every row once, within budget, sorted, trimmed.

Pure tensor code, property-tested with hypothesis; the module-level checks (scores and gradients
equal with and without budgets) are in tests/modules/test_micro_batching.py.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.batch import RolloutBatch, plan_micro_batches, row_lengths, trim_columns

lengths = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 60)), min_size=1, max_size=40)


def cost(p: torch.Tensor, r: torch.Tensor, rows: torch.Tensor) -> int:
    return len(rows) * (int(p[rows].max()) + max(int(r[rows].max()), 1))


@settings(max_examples=200, deadline=None)
@given(lengths, st.integers(1, 8), st.one_of(st.none(), st.integers(1, 400)))
def test_plan_covers_every_row_once_within_the_budget(pairs, max_rows, budget):
    p = torch.tensor([a for a, _ in pairs])
    r = torch.tensor([b for _, b in pairs])
    rows = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(len(pairs)))
    plans = plan_micro_batches(p, r, rows, max_rows, budget)
    flat = torch.cat(plans)
    assert sorted(flat.tolist()) == sorted(rows.tolist())  # each row exactly once
    for m in plans:
        assert len(m) >= 1
        if budget is None:
            assert len(m) <= max_rows
        elif len(m) > 1:  # a row over the budget on its own runs alone
            assert cost(p, r, m) <= budget
    # longest responses first: the concatenated plan is sorted by response length
    assert r[flat].tolist() == sorted(r[flat].tolist(), reverse=True)


@settings(max_examples=100, deadline=None)
@given(lengths, st.integers(64, 400))
def test_a_budget_never_computes_more_than_fixed_row_micro_batches_of_unsorted_full_width(pairs, budget):
    """The old layout ran every row at the full width P + R: the plan's cost can only be lower."""
    p = torch.tensor([a for a, _ in pairs])
    r = torch.tensor([b for _, b in pairs])
    plans = plan_micro_batches(p, r, torch.arange(len(pairs)), 4, budget)
    full = len(pairs) * (int(p.max()) + max(int(r.max()), 1))
    assert sum(cost(p, r, m) for m in plans) <= full


def layout(pairs):
    """verl's layout: prompts left-padded to P, responses right-padded to R."""
    P = max(a for a, _ in pairs)
    R = max(1, max(b for _, b in pairs))
    mask = torch.zeros(len(pairs), P + R, dtype=torch.long)
    for i, (a, b) in enumerate(pairs):
        mask[i, P - a : P] = 1
        mask[i, P : P + b] = 1
    ids = torch.where(mask.bool(), torch.arange(P + R).expand(len(pairs), -1) + 10, torch.zeros_like(mask))
    return ids, mask, R


@settings(max_examples=100, deadline=None)
@given(lengths, st.data())
def test_trim_keeps_every_real_token_and_drops_all_padding_columns(pairs, data):
    ids, mask, R = layout(pairs)
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, len(pairs) - 1), min_size=1))))
    cols, r_keep = trim_columns(mask[rows], R)
    kept = mask[rows][:, cols]
    assert int(kept.sum()) == int(mask[rows].sum())  # nothing real is cut
    p_lens, r_lens = row_lengths(mask[rows], R)
    assert kept.shape[1] == int(p_lens.max()) + r_keep
    assert r_keep == max(1, int(r_lens.max()))
    # no kept prompt column is padding in every row, and the same for response columns but the last
    # (R' >= 1 keeps one column when every response is empty)
    assert bool(kept[:, 0].any()) or int(p_lens.max()) == 0
    assert bool(kept[:, -1].any()) or int(r_lens.max()) == 0


def test_select_cuts_per_token_tensors_to_the_micro_batch_width():
    pairs = [(5, 9), (3, 2), (4, 1)]
    ids, mask, R = layout(pairs)
    n = len(pairs)
    rb = RolloutBatch(
        input_ids=ids, attention_mask=mask, response_mask=mask[:, -R:].bool(),
        old_log_probs=torch.randn(n, R), ref_log_probs=torch.randn(n, R), advantages=torch.randn(n),
        bucket=torch.zeros(n, dtype=torch.long), window_mask=torch.zeros(n, R, dtype=torch.bool),
    )  # fmt: skip
    micro = rb.select(torch.tensor([1, 2]))
    assert micro["response_len"] == 2 and micro["input_ids"].shape == (2, 4 + 2)
    assert torch.equal(micro["old_log_probs"], rb.old_log_probs[1:, :2])
    assert torch.equal(micro["input_ids"][:, -2:], ids[1:, 5:7])  # the responses' first two tokens
    assert rb.micro_batches(torch.arange(n), 2, None)[0].tolist() == [0, 1]  # longest responses first
