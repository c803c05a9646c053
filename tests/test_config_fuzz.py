"""A config fuzz corpus (issue #26 item 5): wrong configs that users really write.

Each case in tests/data/bad_configs/cases.yaml is a small YAML overlay applied on top of
configs/aepo.yaml or configs/coldstart.yaml (`fit --config BASE --config OVERLAY`, run by the real
LightningCLI in-process; `$CORPUS` in an overlay is that folder). Each must exit with status 2 and one message that names the field and
contains the fix, before any model is loaded: the model, tokenizer and builtin-model resolvers are
replaced by functions that raise AssertionError("model loaded"), so a case that gets that far fails.

vllm_not_installed: vLLM is installed here, so the case simulates its absence by monkeypatching
`ares_lit.rollout.vllm_logs.vllm_importable` (the check RolloutCallback runs at construction) to
return False.
"""

import sys
from pathlib import Path

import pytest
import yaml

from ares_lit.cli import main
from tests.test_cli_errors import ROOT, _fails

CORPUS = Path(__file__).parent / "data" / "bad_configs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())["cases"]


def _model_loaded(*args, **kwargs):
    raise AssertionError("model loaded")


@pytest.fixture(autouse=True)
def _no_models(monkeypatch, tmp_path):
    import transformers

    import data_modules.base
    import ares_lit.models.resolve

    monkeypatch.setattr(sys, "argv", ["ares_lit"])  # pytest's own arguments are not the CLI's
    monkeypatch.chdir(tmp_path)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", _model_loaded)
    monkeypatch.setattr(ares_lit.models.resolve, "resolve_model_path", _model_loaded)
    monkeypatch.setattr(data_modules.base, "resolve_model_path", _model_loaded)


def test_the_corpus_is_big_and_covers_every_category():
    files = {p.name for p in CORPUS.glob("*.yaml")} - {"cases.yaml"}
    assert len(CASES) >= 40 and files == {c["file"] for c in CASES}
    assert {c["category"] for c in CASES} == {"unknown_key", "wrong_type", "out_of_range", "contradiction", "bad_path"}


@pytest.mark.parametrize("case", CASES, ids=[c["file"][:-5] for c in CASES])
def test_a_bad_config_fails_before_any_model_loads_naming_field_and_fix(case, capsys, monkeypatch, tmp_path):
    if case["file"] == "vllm_not_installed.yaml":
        import ares_lit.rollout.vllm_logs

        monkeypatch.setattr(ares_lit.rollout.vllm_logs, "vllm_importable", lambda: False)
    overlay = tmp_path / case["file"]  # `$CORPUS` names the corpus folder (a data file kept beside the overlays)
    overlay.write_text((CORPUS / case["file"]).read_text().replace("$CORPUS", str(CORPUS)))
    text = _fails(capsys, "fit", "--config", str(ROOT / case["base"]), "--config", str(overlay))
    message = text.split("error: ", 1)[-1]
    assert case["field"] in message and case["fix"] in message, text
