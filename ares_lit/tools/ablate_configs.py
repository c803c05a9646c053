"""The settings and config resolution of `python -m ares_lit.tools.ablate` (docs/ablation.md, docs/ares.md):
presets, per-mode settings, overlays layered as the CLI layers them, per-run configs, the cold-start gate."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

LEVELS = ("easy", "medium", "hard")
ROOT = Path(__file__).resolve().parents[2]
ARMS = ("grpo", "dynamic_kl", "entropy_shaping", "aepo")

# Presets: what is trained. `ares` (docs/ares.md, issue #24) runs both stages: the cold start once, then every
# arm from its export, on the chained-arithmetic task. `one_stage` is the issue #15 setting (docs/ablation.md):
# RL from the base model on builtin:math, as it ran before.
PRESETS: dict[str, dict] = {
    "ares": {
        "coldstart": ["configs/coldstart.yaml", "configs/chain/coldstart.yaml"],
        "base": ["configs/aepo.yaml", "configs/chain/aepo.yaml"],
        "arms": "grpo,entropy_shaping,aepo,forking_tokens,kimi_length",
        "seeds": {"grpo": [0, 1, 2], "aepo": [0, 1, 2], "*": [0, 1]},
        "data": "builtin:chain",
    },
    "one_stage": {
        "coldstart": None,
        "base": ["configs/aepo.yaml"],
        "arms": ",".join(ARMS),
        "seeds": {"*": [0, 1]},
        "data": "builtin:math",
    },
}
# The measured settings, applied on top of the base configs + the arm's overlay: dotted keys (`rollout.n`,
# `model.init_args.lr`); `callbacks.<ClassName>.<arg>` addresses an entry of trainer.callbacks by class
# (`callbacks.RolloutCallback.<arg>` means `rollout.<arg>`).
_TINY_RL = {  # + a parity reward_fn (QUICK_REWARD): a smoke test of the tool, not an experiment
    "trainer.max_steps": 1,
    "model.init_args.model_path": "builtin:tiny-qwen2",
    "model.init_args.mini_batch_size": 8,
    "data.init_args.batch_size": 2,
    "data.init_args.max_prompt_length": 96,
    "rollout.engine": "hf",
    "rollout.engine_kwargs": {},
    "rollout.max_new_tokens": 8,
}
SETTINGS: dict[str, dict] = {
    "ares": {"trainer.max_steps": 12, "model.init_args.lr": 2.0e-5},
    "ares_quick": {**_TINY_RL, "data.init_args.max_prompt_length": 128},
    "one_stage": {"trainer.max_steps": 20, "model.init_args.lr": 1.0e-5},
    "one_stage_quick": dict(_TINY_RL),
}
COLDSTART_SETTINGS: dict[str, dict] = {
    "ares": {},
    "ares_quick": {
        "model.init_args.model_path": "builtin:tiny-qwen2",
        "trainer.max_epochs": 1,
        "data.init_args.builtin_size": 48,
        "data.init_args.size": 12,
        "data.init_args.batch_size": 4,
    },
}
QUICK_REWARD = """def parity(responses, answers):
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
"""
_QUICK_EVAL = {"n": 2, "max_tokens": 8, "limit": 3}  # one problem per level
EVAL = {
    # all 480 held-out problems (SE <= 0.04 per level), 160 per vLLM call: at 16 per call one evaluation took
    # over 10 minutes on 2 busy cores (2026-12-05)
    "ares": {"n": 1, "max_tokens": 192, "limit": 0, "batch_size": 160},
    "ares_quick": dict(_QUICK_EVAL),
    "one_stage": {"n": 4, "max_tokens": 128, "limit": 0},
    "one_stage_quick": dict(_QUICK_EVAL),
}
# The gate on the cold-start model (docs/ares.md "The gate"): room to improve at every level, hard accuracy in
# the zone, and length growing with difficulty.
GATE = {"hard_accuracy": (0.15, 0.6), "max_accuracy": 0.95}


def _merge(base: dict, over: dict) -> dict:
    """jsonargparse's layering of configs: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _set(config: dict, key: str, value) -> None:
    if key.startswith("callbacks.RolloutCallback."):  # the rollout callback's settings live in `rollout:`
        key = "rollout." + key[len("callbacks.RolloutCallback."):]
    parts = key.split(".")
    if parts[0] == "callbacks":
        _, cls, arg = parts
        entries = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[-1] == cls]
        if not entries:
            raise ValueError(f"--setting {key}: no {cls} in trainer.callbacks")
        entries[0].setdefault("init_args", {})[arg] = value
        return
    node = config
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def rollout_settings(config: dict) -> dict:
    """The rollout callback's init_args: the `rollout:` group (short or class_path form)."""
    rollout = config.get("rollout") or {}
    return rollout.get("init_args", rollout) if "class_path" in rollout else rollout


BASELINES = ROOT / "configs" / "baselines"


def overlay_chain(arm: str, overlays: Path) -> list[Path]:
    """The overlays of `arm`: `<overlays>/<arm>.yaml` (an ablation arm), or, for a baseline, the
    `grpo` arm then `configs/baselines/<arm>.yaml` (a baseline is one method added to GRPO)."""
    own = overlays / f"{arm}.yaml"
    if own.exists():
        return [own]
    if (BASELINES / f"{arm}.yaml").exists():
        return [overlays / "grpo.yaml", BASELINES / f"{arm}.yaml"]
    known = sorted({p.stem for p in overlays.glob("*.yaml")} | {p.stem for p in BASELINES.glob("*.yaml")})
    raise SystemExit(f"no overlay for arm {arm!r} ({own} or {BASELINES / arm}.yaml); arms are {', '.join(known)}")


def resolve_chain(paths: list[Path], settings: dict | None = None) -> dict:
    """Configs layered in order (`_merge`), then dotted `settings`, as the CLI would resolve them."""
    config: dict = {}
    for path in paths:
        config = _merge(config, yaml.safe_load(Path(path).read_text()))
    for k, v in (settings or {}).items():
        _set(config, k, v)
    return config


def resolve_config(arm: str, base: Path | list[Path], overlays: Path, settings: dict | None = None) -> dict:
    """The base config(s) (configs/aepo.yaml, ...) + the arm's overlays (`overlay_chain`) (+ dotted `settings`)."""
    bases = list(base) if isinstance(base, (list, tuple)) else [base]
    return resolve_chain([*bases, *overlay_chain(arm, overlays)], settings)


def run_config(config: dict, run_dir: Path, seed: int) -> dict:
    """The arm's config for one seed, with this run's paths; validation off (evaluated afterwards)."""
    c = copy.deepcopy(config)
    c["seed_everything"] = seed
    _set(c, "rollout.seed", seed)
    t = c["trainer"]
    t["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(run_dir), "name": "tb", "version": 0}}  # fmt: skip
    t["num_sanity_val_steps"] = 0
    t["limit_val_batches"] = 0
    for cb in t["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"] = {"dirpath": str(run_dir / "ckpt"), "save_last": True, "every_n_train_steps": 5, "save_top_k": 0}
    c["model"]["init_args"]["export_dir"] = str(run_dir / "hf_model")
    return c


def weights_sha256(model_path: str) -> str | None:
    """sha256 over a local HF folder's weight files (None for a builtin or hub name): the byte-for-byte identity
    of a starting model."""
    import hashlib

    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def gate(levels: dict, limits: dict = GATE) -> dict:
    """The cold-start gate (docs/ares.md): {"passed", "checks": [...]} from the cold-start model's per-level evaluation."""
    lo, hi = limits["hard_accuracy"]
    acc = {lv: levels.get(lv, {}).get("accuracy") for lv in LEVELS}
    length = {lv: levels.get(lv, {}).get("length") for lv in LEVELS}
    checks, passed = [], True
    if None in acc.values() or None in length.values():
        return {"passed": False, "checks": ["a level is missing from the evaluation"]}
    ok = lo <= acc["hard"] <= hi
    passed &= ok
    checks.append(f"hard accuracy {acc['hard']:.3f} in [{lo}, {hi}]: {'yes' if ok else 'NO'}")
    ok = max(acc.values()) <= limits["max_accuracy"]
    passed &= ok
    checks.append(f"every level's accuracy <= {limits['max_accuracy']} (room to improve): {'yes' if ok else 'NO'}")
    ok = length["easy"] < length["medium"] < length["hard"]
    passed &= ok
    checks.append("length grows with difficulty ({:.1f} < {:.1f} < {:.1f}): {}".format(*length.values(), "yes" if ok else "NO"))
    return {"passed": bool(passed), "checks": checks, "accuracy": acc, "length": length}
