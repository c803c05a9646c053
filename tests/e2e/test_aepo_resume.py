"""Resume: `fit --ckpt_path last.ckpt` continues exactly where an uninterrupted run would be.

Compares an uninterrupted 3-step run with a 2-step run saved and resumed to 3 steps: the policy
weights, the difficulty tracker (buckets, history, targets, α), the KL controller κ, the HWE
threshold τ and the data position must all agree.
"""

import math

import torch

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import fit


def _callback_state(ckpt, name):
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith(name))


def _same(a, b, path="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, equal_nan=True, msg=path)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-5 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_resume_matches_uninterrupted_run(tmp_path):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    for d in (straight, first, resumed):
        d.mkdir()
    fit(straight, "--config", str(write_overlay(straight, "hf", steps=3)))
    fit(first, "--config", str(write_overlay(first, "hf", steps=2)))
    fit(
        resumed,
        "--config",
        str(write_overlay(resumed, "hf", steps=3)),
        f"--ckpt_path={first / 'ckpt' / 'last.ckpt'}",
    )
    a = torch.load(straight / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    b = torch.load(resumed / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert a["global_step"] == b["global_step"] == 3
    _same(a["PromptDataModule"], b["PromptDataModule"], "datamodule")  # tracker, α, epoch/consumed
    assert b["PromptDataModule"]["consumed"] == 3
    _same(_callback_state(a, "RolloutCallback"), _callback_state(b, "RolloutCallback"), "hwe")
    _same(_callback_state(a, "DynamicKLCallback"), _callback_state(b, "DynamicKLCallback"), "kl")
    assert _callback_state(b, "DynamicKLCallback")["kappa"] != [0.01, 0.01, 0.01]  # it did update
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], atol=1e-5, rtol=1e-4, msg=k)
