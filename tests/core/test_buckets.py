"""Online difficulty buckets and the group filter (docs/algorithm.md "Online difficulty buckets", "Group filter")."""

import pytest
import torch

from ares_lit.core.buckets import EASY, HARD, MEDIUM, assign_buckets
from ares_lit.core.groups import group_mean, informative_groups


def test_group_of_eight():
    acc = torch.arange(9, dtype=torch.float32) / 8  # k = 0..8 correct out of 8
    expect = [HARD, HARD, HARD, MEDIUM, MEDIUM, MEDIUM, EASY, EASY, EASY]
    assert assign_buckets(acc).tolist() == expect


def test_boundaries_are_inclusive_with_float32_thirds():
    acc = torch.tensor([1, 1, 0], dtype=torch.float32).mean().reshape(1)  # 2/3 rounded in fp32
    assert assign_buckets(acc).tolist() == [EASY]
    acc = torch.tensor([1, 0, 0], dtype=torch.float32).mean().reshape(1)
    assert assign_buckets(acc).tolist() == [MEDIUM]
    assert assign_buckets(torch.tensor([0.3333])).tolist() == [HARD]


def test_custom_thresholds_and_validation():
    acc = torch.tensor([0.9, 0.5, 0.1])
    assert assign_buckets(acc, easy_min=0.95, medium_min=0.05).tolist() == [MEDIUM, MEDIUM, MEDIUM]
    with pytest.raises(ValueError, match="medium_min"):
        assign_buckets(acc, easy_min=0.2, medium_min=0.5)


def test_buckets_from_per_sample_correctness():
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.float32)
    groups = torch.tensor([5, 5, 5, 5, 9, 9, 9, 9, 2, 2, 2, 2])
    acc = group_mean(correct, groups)
    assert acc.tolist() == [0.75] * 4 + [0.25] * 8
    assert assign_buckets(acc).tolist() == [EASY] * 4 + [HARD] * 8


def test_informative_groups_drops_all_right_and_all_wrong():
    correct = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float32)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    keep = informative_groups(groups, correct)
    assert keep.tolist() == [False] * 8 + [True] * 4
