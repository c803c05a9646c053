"""The ablation report (ares_lit/tools/ablate_report.py, ablate_figures.py) on synthetic results: the
standard error over seeds on hand numbers, each claim's verdict flipping with the numbers that decide
it, the results table of a two-stage and a one-stage result, and the figures (PNG files), also with
missing curves. No training, no evaluation."""

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.tools import ablate_figures
from ares_lit.tools.ablate_report import (
    _by_level,
    claims,
    claims_table,
    controller_table,
    figure,
    paper_figures,
    seed_error,
    stat,
    summarize,
)

PNG = b"\x89PNG\r\n\x1a\n"
LEVELS = ("easy", "medium", "hard")


def _ev(**levels):
    """BY_LEVEL from level=(accuracy, length, stderr) keyword arguments."""
    return {lv: {"accuracy": a, "length": n, "stderr": se, "n_problems": 40} for lv, (a, n, se) in levels.items()}


def _curves(seed: int, skip: tuple = ()) -> dict:
    tags = {"hwe/threshold": 0.8 + 0.01 * seed, "hwe/voters": 3.0}
    for lv, base in zip(LEVELS, (100.0, 200.0, 300.0)):
        tags |= {f"bucket/{lv}/response_length": base, f"bucket/{lv}/alpha": 0.5, f"bucket/{lv}/target": base / 100,
                 f"bucket/{lv}/setpoint": base / 100 + 0.5, f"bucket/{lv}/n_hwe": base / 50, f"bucket/{lv}/accuracy": 0.5}  # fmt: skip
    return {t: [[s, v + s + seed] for s in range(4)] for t, v in tags.items() if not t.endswith(skip) and t not in skip}


def _arm(alls: list[float], *, easy=(0.8, 200.0), hard=(0.2, 400.0), se=0.01, curves=True) -> dict:
    seeds = []
    for i, a in enumerate(alls):
        ev = _ev(all=(a, 300.0, se), easy=(easy[0], easy[1], 0.02), medium=(0.5, 300.0, 0.03), hard=(hard[0], hard[1], 0.03))
        seeds.append({"seed": i, "fit_seconds": 60.0 * (i + 1), "eval": ev, "curves": _curves(i) if curves else {}})
    return {"seeds": seeds}


def two_stage() -> dict:
    """C1–C5 all reproduced: the cold start grows length with difficulty, aepo is shorter on easy problems
    and more accurate on hard ones than grpo, each switch adds accuracy, aepo beats forking_tokens."""
    coldstart = _ev(all=(0.50, 300.0, 0.02), easy=(0.80, 200.0, 0.02), medium=(0.50, 300.0, 0.03), hard=(0.20, 400.0, 0.03))
    return {
        "mode": "ares",
        "settings": {},
        "eval": {"n": 4},
        "seeds": {"grpo": [0, 1, 2], "entropy_shaping": [0, 1], "aepo": [0, 1, 2], "forking_tokens": [0, 1]},
        "models": {"base": _ev(all=(0.30, 150.0, 0.02), easy=(0.5, 140.0, 0.03), medium=(0.3, 150.0, 0.03), hard=(0.1, 160.0, 0.02)),
                   "coldstart": coldstart},  # fmt: skip
        "start": coldstart,
        "coldstart": {"fit_seconds": 120.0, "gate": {"passed": True, "checks": []}, "curation": {}},
        "arms": {
            "grpo": _arm([0.50, 0.52, 0.54], hard=(0.20, 400.0)),
            "entropy_shaping": _arm([0.60, 0.62]),
            "aepo": _arm([0.70, 0.71, 0.72], easy=(0.82, 150.0), hard=(0.35, 450.0)),
            "forking_tokens": _arm([0.55, 0.57]),
        },
        "wall_seconds_this_invocation": 1.0,
        "fit_seconds_total": 720.0,
    }


def one_stage() -> dict:
    start = _ev(all=(0.40, 250.0, 0.02), easy=(0.7, 200.0, 0.03), medium=(0.4, 250.0, 0.03), hard=(0.1, 300.0, 0.02))
    return {"mode": "one_stage", "settings": {}, "eval": {"n": 4}, "seeds": [0, 1], "start": start,
            "arms": {"grpo": _arm([0.50, 0.52]), "aepo": _arm([0.60, 0.62], hard=(0.3, 420.0))}}  # fmt: skip


def _set(result, arm, level, key, values):
    for seed, v in zip(result["arms"][arm]["seeds"], values):
        seed["eval"][level][key] = v


def verdicts(result) -> dict:
    return {cid: c["verdict"] for cid, c in claims(result).items()}


# --- the standard error -------------------------------------------------------------------------


def test_seed_error_on_hand_numbers():
    # within = (0.03² + 0.04² + 0.05²)/3² = 0.005/9; between = var(0.5, 0.6, 0.7)/3 = 0.01/3
    assert seed_error([0.5, 0.6, 0.7], [0.03, 0.04, 0.05]) == pytest.approx(math.sqrt(0.005 / 9 + 0.01 / 3))
    assert seed_error([0.5, 0.6, 0.7], [0.03, 0.04, 0.05]) == pytest.approx(0.0623610, abs=1e-6)
    assert seed_error([0.5, 0.7], [0.02, 0.02]) == pytest.approx(math.sqrt(0.0008 / 4 + 0.02 / 2))  # 0.100995
    assert seed_error([0.4], [0.03]) == pytest.approx(0.03)  # a single model: its own stderr
    assert seed_error([0.4, 0.4], [0.0, 0.0]) == 0.0
    assert seed_error([100.0, 120.0]) == pytest.approx(math.sqrt(200.0 / 2))  # lengths: the seed spread only
    assert seed_error([100.0]) is None and seed_error([]) is None
    assert seed_error([0.5, None, 0.7], [0.02, 0.9, 0.02]) == seed_error([0.5, 0.7], [0.02, 0.02])  # a missing seed drops out


def test_stat_of_single_models_and_arms():
    r = two_stage()
    assert stat(r, "coldstart", "easy") == (0.80, 0.02, 1)
    assert stat(r, "coldstart", "easy", "length") == (200.0, None, 1)
    mean, se, k = stat(r, "grpo")
    assert k == 3 and mean == pytest.approx(0.52) and se == pytest.approx(math.sqrt(3 * 0.01**2 / 9 + 0.0004 / 3))
    assert stat(r, "nope") is None and stat(r, "grpo", "extreme") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 0.5)), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_seed_error_bounds_and_order(seeds, rnd):
    means, ses = [m for m, _ in seeds], [s for _, s in seeds]
    se = seed_error(means, ses)
    k = len(seeds)
    assert all(se >= s / k - 1e-12 for s in ses)
    assert se <= math.sqrt(sum(s * s for s in ses) / k**2 + (0.25 / k if k > 1 else 0.0) * k / max(k - 1, 1)) + 1e-9
    shuffled = list(seeds)
    rnd.shuffle(shuffled)
    assert seed_error([m for m, _ in shuffled], [s for _, s in shuffled]) == pytest.approx(se, rel=1e-12, abs=1e-15)


def test_by_level_carries_stderr_and_problems():
    block = {"avg_at_n": 0.5, "avg_at_n_stderr": 0.04, "mean_length": 321.0, "n_problems": 12}
    metrics = {"overall": block, "groups": {"level": {"easy": {**block, "avg_at_n": 0.9}, "hard": block}}}
    row = _by_level(metrics)
    assert set(row) == {"all", "easy", "hard"}
    assert row["easy"] == {"accuracy": 0.9, "length": 321.0, "stderr": 0.04, "n_problems": 12}
    assert _by_level({"overall": {"avg_at_n": 0.1, "mean_length": 9.0}, "groups": {}})["all"]["stderr"] is None


# --- the claims ---------------------------------------------------------------------------------


def test_all_claims_reproduced_and_table():
    r = two_stage()
    assert verdicts(r) == dict.fromkeys(("C1", "C2", "C3", "C4", "C5"), "reproduced")
    table = claims_table(r)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 5 and all(line.count(" | ") == 3 for line in lines[2:])
    assert "coldstart length easy/medium/hard: 200.0 / 300.0 / 400.0; base: 140.0 / 150.0 / 160.0" in table
    assert "grpo 0.520 ± 0.013 → entropy_shaping 0.610 ± 0.012" in table and "→ aepo 0.710" in table


def test_c1_follows_the_coldstart_lengths():
    r = two_stage()
    for lengths, verdict in (((200, 300, 400), "reproduced"), ((200, 500, 400), "partly"), ((400, 300, 200), "not"), ((300, 300, 300), "not")):
        for lv, n in zip(LEVELS, lengths):
            r["models"]["coldstart"][lv]["length"] = float(n)
        assert verdicts(r)["C1"] == verdict, lengths


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(1, 5000, allow_nan=False), min_size=3, max_size=3))
def test_c1_verdict_is_the_sortedness_of_the_lengths(lengths):
    r = two_stage()
    for lv, n in zip(LEVELS, lengths):
        r["models"]["coldstart"][lv]["length"] = n
    e, m, h = lengths
    assert (verdicts(r)["C1"] == "reproduced") == (e < m < h)
    assert (verdicts(r)["C1"] == "partly") == (h > e and not e < m < h)


def test_c2_needs_shorter_easy_answers_at_equal_accuracy():
    r = two_stage()
    _set(r, "aepo", "easy", "length", [250.0] * 3)  # longer than the cold start's 200, accuracy as good
    assert verdicts(r)["C2"] == "partly"
    _set(r, "aepo", "easy", "accuracy", [0.50] * 3)  # longer and 0.3 less accurate
    assert verdicts(r)["C2"] == "not"
    _set(r, "aepo", "easy", "length", [150.0] * 3)  # shorter but less accurate
    assert verdicts(r)["C2"] == "partly"
    _set(r, "aepo", "easy", "accuracy", [0.78] * 3)  # 0.02 less: within 2·SE_diff (2·sqrt(0.02²/3 + 0.02²) ≈ 0.046)
    assert verdicts(r)["C2"] == "reproduced"
    _set(r, "aepo", "easy", "accuracy", [0.74] * 3)  # 0.06 less: beyond it
    assert verdicts(r)["C2"] == "partly"


def test_c3_hard_accuracy_or_depth():
    r = two_stage()
    _set(r, "aepo", "hard", "accuracy", [0.20] * 3)  # equal to grpo's 0.20, but longer (450 > 400)
    assert verdicts(r)["C3"] == "partly"
    _set(r, "aepo", "hard", "length", [350.0] * 3)  # equal and shorter
    assert verdicts(r)["C3"] == "not"
    _set(r, "aepo", "hard", "accuracy", [0.22] * 3)  # higher within noise (2·SE_diff = 2·sqrt(2·0.03²/3) ≈ 0.049), shorter
    assert verdicts(r)["C3"] == "partly"
    _set(r, "aepo", "hard", "accuracy", [0.28] * 3)  # higher by 0.08 > 2·SE_diff, even though shorter
    assert verdicts(r)["C3"] == "reproduced"


def test_c4_each_switch_adds_accuracy():
    r = two_stage()
    _set(r, "entropy_shaping", "all", "accuracy", [0.52, 0.54])  # +0.01 over grpo: > 0 but within noise
    assert verdicts(r)["C4"] == "partly"
    _set(r, "entropy_shaping", "all", "accuracy", [0.40, 0.40])  # a significant drop, then a significant gain
    assert verdicts(r)["C4"] == "not"
    _set(r, "entropy_shaping", "all", "accuracy", [0.515, 0.515])  # −0.005 (noise), then a significant gain
    assert verdicts(r)["C4"] == "partly"
    del r["arms"]["entropy_shaping"]  # the chain is grpo → aepo
    assert verdicts(r)["C4"] == "reproduced" and "grpo 0.520 ± 0.013 → aepo" in claims(r)["C4"]["numbers"]
    del r["arms"]["grpo"]
    assert verdicts(r)["C4"] == "n/a"


def test_c5_aepo_against_the_baselines():
    r = two_stage()
    _set(r, "forking_tokens", "all", "accuracy", [0.80, 0.80])  # a better baseline
    assert verdicts(r)["C5"] == "not"
    _set(r, "forking_tokens", "all", "accuracy", [0.70, 0.70])  # aepo 0.71: ahead within noise
    assert verdicts(r)["C5"] == "partly"
    r["arms"]["kimi_length"] = _arm([0.30, 0.31])  # a second baseline, far behind: still partly
    assert verdicts(r)["C5"] == "partly" and "vs kimi_length 0.305" in claims(r)["C5"]["numbers"]
    del r["arms"]["forking_tokens"], r["arms"]["kimi_length"]
    assert verdicts(r)["C5"] == "n/a"


def test_claims_of_a_one_stage_result():
    v = verdicts(one_stage())
    assert v["C1"] == v["C2"] == "n/a" and v["C5"] == "n/a"
    assert v["C3"] == "reproduced" and v["C4"] == "reproduced"


# --- the tables ---------------------------------------------------------------------------------


def _row(table: str, name: str) -> list[str]:
    (line,) = [x for x in table.splitlines() if x.startswith(f"| {name} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_summarize_two_stage():
    table = summarize(two_stage())
    names = [x.split("|")[1].strip() for x in table.splitlines()[2:] if x.startswith("| ")]
    assert names == ["base", "coldstart", "grpo", "entropy_shaping", "aepo", "forking_tokens"]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    aepo, coldstart = dict(zip(header, _row(table, "aepo"))), dict(zip(header, _row(table, "coldstart")))
    # aepo: all = 0.70, 0.71, 0.72 with stderr 0.01 each: sqrt(3·0.01²/9 + 0.0001/3) = 0.00816
    assert aepo["acc all"] == "0.710 ± 0.008" and aepo["acc easy"] == "0.820 ± 0.012"  # sqrt(3·0.02²/9) = 0.01155
    assert aepo["len easy"] == "150.0 ± 0.0" and aepo["seeds"] == "0,1,2" and aepo["fit min"] == "2.0"
    assert coldstart["acc hard"] == "0.200 ± 0.030" and coldstart["len hard"] == "400.0" and coldstart["seeds"] == "–"
    assert dict(zip(header, _row(table, "entropy_shaping")))["acc all"] == "0.610 ± 0.012"  # sqrt(2·0.01²/4 + 0.0002/2)
    assert "| start |" not in table and "SE = sqrt(Σ se_i²/k² + s_between²/k)" in table


def test_summarize_one_stage_and_old_rows():
    r = one_stage()
    for seed in r["arms"]["grpo"]["seeds"]:  # an old ablation.json: no stderr, no n_problems
        for cell in seed["eval"].values():
            del cell["stderr"], cell["n_problems"]
    table = summarize(r)
    assert [x.split("|")[1].strip() for x in table.splitlines()[2:] if x.startswith("| ")] == ["start", "grpo", "aepo"]
    assert _row(table, "start")[1] == "0.400 ± 0.020"
    assert _row(table, "grpo")[1] == f"0.510 ± {math.sqrt(0.0002 / 2):.3f}"  # the seed spread only


def test_controller_table_without_curves():
    r = two_stage()
    r["arms"]["forking_tokens"]["seeds"][0].pop("curves")
    r["arms"]["forking_tokens"]["seeds"][1]["curves"] = {}
    table = controller_table(r)
    assert "| forking_tokens |" not in table
    assert "| grpo | 0 | 1.50 | 1.50 | 1.50 | 1.81 |" in table  # α = 0.5 + step + seed, mean over seeds 0..2; τ 0.8 + 0.01·seed + 1


# --- the figures --------------------------------------------------------------------------------


def _png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG


def test_paper_figures_and_old_figure(tmp_path):
    paths = paper_figures(two_stage(), tmp_path / "out")
    assert [p.name for p in paths] == ["ares_length.png", "ares_accuracy.png", "ares_curves.png"]
    assert all(_png(p) for p in paths)
    figure(two_stage(), tmp_path / "ablation.png")
    assert _png(tmp_path / "ablation.png")
    paths = paper_figures(one_stage(), tmp_path / "one")
    assert all(_png(p) for p in paths)


def test_curves_with_missing_tags_and_arms_without_curves(tmp_path):
    r = two_stage()
    for arm in r["arms"].values():
        for seed in arm["seeds"]:
            seed["curves"] = {t: v for t, v in seed["curves"].items() if not t.endswith("/setpoint") and t != "hwe/threshold"}
    r["arms"]["forking_tokens"]["seeds"][0].pop("curves")
    r["arms"]["grpo"]["seeds"][1]["curves"] = {}
    del r["models"]["coldstart"]["hard"]  # a level absent from an evaluation
    panels = ablate_figures.curve_panels(r)
    assert panels["τ (hwe/threshold)"] == []
    targets = panels["T_d per bucket (T*_d dashed)"]
    assert targets and not any(line["tag"].endswith("/setpoint") for line in targets)
    (grpo_easy,) = [x for x in panels["α_d per bucket"] if x["arm"] == "grpo" and x["level"] == "easy"]
    assert grpo_easy["steps"] == [0, 1, 2, 3] and grpo_easy["values"] == pytest.approx([1.5, 2.5, 3.5, 4.5])  # 0.5 + step + seed, seeds 0 and 2
    paths = paper_figures(r, tmp_path)
    assert all(_png(p) for p in paths)
    nothing = copy.deepcopy(r)
    for arm in nothing["arms"].values():
        for seed in arm["seeds"]:
            seed["curves"] = {}
    assert all(lines == [] for lines in ablate_figures.curve_panels(nothing).values())
    assert _png(ablate_figures.curves_figure(nothing, tmp_path / "empty.png"))
