"""`python -m ares_lit.evaluate`: accuracy and reasoning length of a model, by source and difficulty.

    python -m ares_lit.evaluate --model_path builtin:smollm2-135m-instruct --data builtin:math \\
        --n 8 --k 1,4,8 --engine vllm --output_dir runs/eval/smollm2
    python -m ares_lit.evaluate --like_run runs/aepo/version_0 --output_dir runs/eval/aepo
    python -m ares_lit.evaluate --model_path runs/aepo/version_0/hf_model \\
        --baseline_path builtin:smollm2-135m-instruct --data builtin:math --n 8 --output_dir runs/eval/aepo

One evaluation setting. `--like_run DIR` evaluates as the training run in DIR (a Lightning log
folder such as runs/aepo/version_0, holding the config.yaml LightningCLI saved) validated: its
`model.init_args.validation` sampling and grading (n, k, temperature, top_p, top_k, max_tokens,
seed, answer_fallback, grade_timeout), its prompt suffix and system prompt, its exported model
(`--model_path` default: `model.init_args.export_dir`, else DIR/hf_model, else DIR/huggingface) and,
without `--data`, its held-out problems (`data.init_args.val_path`, first `val_size`, as `--limit`,
with the run's column keys and prompt-length limit). A `--model_path` folder exported from a run
(its ares_export.json names the run's folder), or directly inside a run folder (DIR/hf_model,
DIR/huggingface) or its checkpoints/, implies `--like_run DIR`; `--no_like_run` turns that off. A flag on the command line always wins over the run; the run wins
over evaluate's defaults. Without a run, the defaults are those of validation during fit in the
embedded configs (configs/aepo.yaml, configs/coldstart.yaml): temperature 0.7, top_p 1.0,
top_k -1, max_tokens 128, answer_fallback last_number, n 4. The first lines printed name every
setting's value and source (command line, run, default); metrics.json has them as
`config.sources`. Details: `ares_lit/evaluation/like_run.py`.

Each problem is sampled `--n` times with the rollout engines and graded with the training grader
(`ares_lit/evaluation/runner.py`). `--baseline_path` evaluates a second model on the same
problems with the same seeds, side by side. Written to `--output_dir`:

- `samples.jsonl`: one row per problem × sample (`id, source, level, sample, prompt, response,
  answer, gold, correct, n_tokens, finish_reason, seed`, then `problem, boxed, grader_timeout`);
- `metrics.json`: `config, model_path, version, overall, groups` (groups keyed by `source`,
  `level` and `source/level`), plus `baseline` (its `model_path, overall, groups`) when given,
  and `skipped` (rows dropped per source and reason);
- `metrics.md` (the table printed at the end), `by_level.png`, and TensorBoard scalars
  `eval/<model|baseline>/<group>/<metric>` under `tensorboard/`;
- `baseline/samples.jsonl` for the baseline.

Rerunning into the same folder resumes: finished batches are kept, the rest is redone, and the
metrics equal those of an uninterrupted run. The metric definitions are in
`ares_lit/evaluation/metrics.py` and in the README's "Evaluation" section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ares_lit.atomic_io import DISK_FULL, NO_ROOM_HINT, write_text_atomic
from ares_lit.evaluation.like_run import DEFAULTS, resolve, settings_header
from ares_lit.evaluation.metrics import summarize, valid_ks
from ares_lit.evaluation.runner import EvalSettings, evaluate_batches
from ares_lit.evaluation.sources import check_columns, check_sources, load_problems, parse_source
from ares_lit.evaluation.store import SampleStore
from ares_lit.prompting import ARES_PROMPT_SUFFIX

__all__ = ["main", "parse_args", "run"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ares_lit.evaluate",
        description="Sample, grade and report accuracy (avg@n, pass@k, maj@k) and response length, by source and level.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_path", default=None,
                   help="the model: an HF folder (e.g. an export), a builtin:* model, or a hub name; with --like_run: the "
                        "run's export. A run's export (<run>/hf_model, or a folder whose ares_export.json names the run) implies "
                        "--like_run <run>")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--like_run", default=None, metavar="DIR",
                     help="evaluate as the training run in DIR (e.g. runs/aepo/version_0, holding config.yaml) validated: "
                          "its validation sampling and grading, prompt, exported model and held-out data, for every "
                          "option not given here")
    run.add_argument("--no_like_run", action="store_true",
                     help="do not take the settings of the run folder around --model_path")
    p.add_argument("--baseline_path", default=None, help="a second model, evaluated on the same problems with the same seeds")
    p.add_argument("--data", action="append", default=None, metavar="SOURCE",
                   help="a .jsonl/.json/.parquet file, a datasets name, builtin:math or builtin:visual (their held-out "
                        "test splits), or a JSON object {\"path\": ..., \"name\": ..., \"question_key\": ...}; repeat for several; "
                        "with --like_run: the run's held-out data")
    p.add_argument("--question_key", default="question", help="column of the question text")
    p.add_argument("--answer_key", default="answer", help="column of the gold answer")
    p.add_argument("--image_key", default=None, help="column of each row's images (VL models); builtin:visual sets it")
    p.add_argument("--id_key", default=None, help="column of a stable problem id (default: a hash of question and answer)")
    p.add_argument("--limit", type=int, default=0,
                   help="evaluate only the first N usable problems of each source (0 = all); with the run's data: its val_size")
    p.add_argument("--split", default="test", help="split of a datasets name, or the key of a {split: [...]} .json file")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="rollout engine")
    p.add_argument("--engine_kwargs", default="{}", help="JSON of extra engine arguments, e.g. '{\"kv_cache_gb\": 2}'")
    p.add_argument("--vllm_log_level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   default="WARNING", help="vLLM's log level (INFO restores its start-up log; VLLM_LOGGING_LEVEL wins)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights dtype; auto = bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="samples per problem")
    p.add_argument("--k", default=DEFAULTS["k"], help="comma-separated ks of pass@k and maj@k, each <= n (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="sampling temperature; 0 = greedy")
    p.add_argument("--top_p", type=float, default=DEFAULTS["top_p"], help="nucleus mass; 1 is off")
    p.add_argument("--top_k", type=int, default=DEFAULTS["top_k"], help="top-k; -1 is off")
    p.add_argument("--max_tokens", type=int, default=DEFAULTS["max_tokens"], help="response budget in tokens")
    p.add_argument("--max_prompt_length", type=int, default=1024,
                   help="prompts longer than this (tokens) are skipped and counted; with the run's data: the run's limit")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="base seed: problem p, sample j uses seed + p*n + j")
    p.add_argument("--batch_size", type=int, default=16, help="problems per engine call (the unit of resuming)")
    p.add_argument("--answer_fallback", choices=("none", "last_number"), default=DEFAULTS["answer_fallback"],
                   help="none: only \\boxed{} answers count (ARES); last_number: grade an unboxed response on its last number")
    p.add_argument("--grade_timeout", type=float, default=DEFAULTS["grade_timeout"], help="seconds of grading per answer")
    p.add_argument("--prompt_suffix", default=ARES_PROMPT_SUFFIX, help="text appended to every question; '' for none")
    p.add_argument("--system_prompt", default=None, help="an optional system message")
    p.add_argument("--output_dir", required=True, help="where samples, metrics, table, figure and TensorBoard logs go")
    p.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds another evaluation")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _given(argv: list[str] | None) -> set[str]:
    """The options set on the command line (a parse in which no option has a default)."""
    parser = _parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The options of `argv`, completed from the run (`--like_run`, or the run folder around
    `--model_path`) where not given, with `like_run` (the run used) and `sources` (per option:
    "command line", "run" or "default"). Raises ValueError for a bad run folder."""
    args = (parser or _parser()).parse_args(argv)
    resolve(args, _given(argv))
    return args


def _ks(text: str | None, n: int) -> list[int]:
    if text is None:
        return valid_ks([1, n], n)
    try:
        ks = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--k must be comma-separated integers like 1,4,16; got {text!r}") from err
    if not ks or min(ks) < 1:
        raise ValueError(f"--k values must be >= 1; got {text!r}")
    if max(ks) > n:
        raise ValueError(f"--k {max(ks)} is larger than --n {n}: pass@k needs at least k samples per problem")
    return sorted(set(ks))


def _check(args: argparse.Namespace) -> tuple[EvalSettings, list[int], list, dict]:
    """Every option error, before any tokenizer or model loads."""
    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}")
    ks = _ks(args.k, args.n)
    settings = EvalSettings(
        n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
        seed=args.seed, batch_size=args.batch_size, answer_fallback=args.answer_fallback,
        grade_timeout=args.grade_timeout,
    )
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0 (0 = all); got {args.limit}")
    if args.max_prompt_length < 1:
        raise ValueError(f"--max_prompt_length must be >= 1; got {args.max_prompt_length}")
    try:
        engine_kwargs = json.loads(args.engine_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--engine_kwargs must be a JSON object; got {args.engine_kwargs!r}") from err
    if not isinstance(engine_kwargs, dict):
        raise ValueError(f"--engine_kwargs must be a JSON object; got {args.engine_kwargs!r}")
    keys = {k: getattr(args, k) for k in ("question_key", "answer_key", "image_key", "id_key", "split")}
    sources = [parse_source(spec, keys) for spec in args.data]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"--data names must be distinct (give JSON sources a 'name'); got {names}")
    check_sources(sources)
    check_columns(sources, args.max_prompt_length)
    from ares_lit.models.resolve import check_model_path

    for path in (args.model_path, args.baseline_path):
        if path is not None:
            check_model_path(path)  # a wrong folder says so before any tokenizer loads
    return settings, ks, sources, engine_kwargs


def _fingerprint(args: argparse.Namespace, settings: EvalSettings, sources: list, model_path: str) -> dict:
    """What must match for a rerun to resume into the same folder."""
    return {
        "model_path": model_path,
        "engine": args.engine,
        "dtype": args.dtype,
        "settings": settings.as_dict(),
        "data": [s.as_dict() for s in sources],
        "prompt_suffix": args.prompt_suffix,
        "system_prompt": args.system_prompt,
        "max_prompt_length": args.max_prompt_length,
        "limit": args.limit,
    }


def _claim(folder: Path, fingerprint: dict, overwrite: bool) -> SampleStore:
    """The folder's sample store; refuses a folder that holds an evaluation with other settings."""
    folder.mkdir(parents=True, exist_ok=True)
    store = SampleStore(folder / "samples.jsonl")
    marker = folder / "run.json"
    if marker.exists() and not overwrite:
        old = json.loads(marker.read_text())
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            raise ValueError(
                f"{folder} holds an evaluation with other settings ({', '.join(diff)} differ); "
                "use a new --output_dir or pass --overwrite to start over"
            )
    elif overwrite and store.path.exists():
        store.path.unlink()
    marker.write_text(json.dumps(fingerprint, indent=2))
    return store


def _engine(args, name: str, path: str, tokenizer, processor, max_model_len: int, engine_kwargs: dict):
    import torch

    from ares_lit.rollout import build_engine

    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    kwargs = dict(engine_kwargs)
    if name == "vllm":
        kwargs.setdefault("max_model_len", max_model_len)
        kwargs.setdefault("seed", args.seed)
        kwargs.setdefault("dtype", dtype)
        kwargs.setdefault("log_level", args.vllm_log_level)
        return build_engine("vllm", model_path=path, **kwargs)
    kwargs.setdefault("dtype", dtype)
    return build_engine("hf", model_path=path, tokenizer=tokenizer, processor=processor, **kwargs)


def _evaluate_model(args, label: str, model_path: str, sources, settings, engine_kwargs, folder: Path):
    """Rows of one model (resumed where possible), its problems, and skipped-row counts."""
    from transformers import AutoConfig, AutoTokenizer
    from tqdm import tqdm

    from ares_lit.grading import Grader
    from ares_lit.models.resolve import resolve_model_path

    path = str(resolve_model_path(model_path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    problems, skipped = load_problems(
        sources, tokenizer, path, args.max_prompt_length, limit=args.limit,
        prompt_suffix=args.prompt_suffix, system_prompt=args.system_prompt,
    )
    if args.engine == "vllm" and any(p.get("images") for p in problems):
        try:
            import torchvision  # noqa: F401
        except Exception as err:  # noqa: BLE001 - missing, or built for another torch
            raise ValueError(
                f"--engine vllm cannot take image prompts here: vLLM's Qwen2.5-VL code imports torchvision, which is "
                f"not usable ({type(err).__name__}); use --engine hf, or a GPU machine with vllm and torchvision"
            ) from err
    store = _claim(folder, _fingerprint(args, settings, sources, model_path), args.overwrite)
    rows, start = store.resume([p["id"] for p in problems], settings.n, settings.batch_size)
    if start < len(problems):
        config = AutoConfig.from_pretrained(path)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        longest = max(len(p["prompt_ids"]) for p in problems)
        max_len = min(longest + settings.max_tokens, int(text_config.max_position_embeddings))
        processor = None
        if any(p.get("images") for p in problems):
            from ares_lit.vision import VisionProcessor

            processor = VisionProcessor.from_pretrained(path, tokenizer=tokenizer)
        engine = _engine(args, args.engine, path, tokenizer, processor, max_len, engine_kwargs)
        grader = Grader(timeout=settings.grade_timeout, answer_fallback=settings.answer_fallback)
        bar = tqdm(total=len(problems), initial=start, desc=f"evaluate {label}", unit="problem", disable=args.no_progress)
        started, tokens, new_rows = time.perf_counter(), 0, 0
        try:
            for batch in evaluate_batches(engine, grader, problems, settings, start_problem=start, on_batch=store.append):
                rows.extend(batch)
                tokens += sum(r["n_tokens"] for r in batch)
                new_rows += len(batch)
                bar.update(len(batch) // settings.n)
        finally:
            bar.close()
            grader.close()
            engine.close()
        wall = time.perf_counter() - started
        print(
            f"[ares_lit] {label}: {new_rows} samples ({start // settings.batch_size} batches resumed), {tokens} "
            f"response tokens in {wall:.1f} s ({tokens / max(wall, 1e-9):.1f} tokens/s, sampling and grading)",
            flush=True,
        )
    return rows, problems, skipped, path


def run(args: argparse.Namespace) -> dict:
    """Evaluate (and resume) as `args` say; returns the metrics.json dict.

    `args` comes from `parse_args`; in a Namespace made otherwise, every option that is not None
    counts as given, and only the None ones (`model_path`, `data`, ...) are taken from a run."""
    from ares_lit.evaluation.report import flat_scalars, markdown_table, plot_by_level, write_tensorboard

    if not hasattr(args, "sources"):  # a Namespace made by hand: what it sets counts as given
        resolve(args, {k for k, v in vars(args).items() if v is not None and k != "like_run"})
    settings, ks, sources, engine_kwargs = _check(args)
    if args.like_run:
        print(f"[ares_lit] evaluating like the run {args.like_run} (command-line flags win over it)", flush=True)
    print(settings_header(args, ks), flush=True)
    out = Path(args.output_dir)
    models = [("model", args.model_path, out)]
    if args.baseline_path:
        models.append(("baseline", args.baseline_path, out / "baseline"))
    summaries: dict[str, dict] = {}
    results: dict[str, dict] = {}
    problem_ids = None
    for label, model_path, folder in models:
        rows, problems, skipped, _ = _evaluate_model(args, label, model_path, sources, settings, engine_kwargs, folder)
        ids = [p["id"] for p in problems]
        if problem_ids is not None and ids != problem_ids:
            raise ValueError(
                "the baseline's tokenizer keeps other problems than the model's (prompt lengths differ around "
                "--max_prompt_length); raise --max_prompt_length so both keep every problem"
            )
        problem_ids = ids
        summaries[label] = summarize(rows, ks)
        results[label] = {"model_path": model_path, **summaries[label], "skipped": skipped}
    try:
        pkg_version = version("ares_lit")
    except PackageNotFoundError:
        pkg_version = "unknown"
    metrics = {
        "config": {**vars(args), "k": ks, "data": [s.as_dict() for s in sources]},
        "model_path": args.model_path,
        "version": pkg_version,
        "overall": results["model"]["overall"],
        "groups": results["model"]["groups"],
        "skipped": results["model"]["skipped"],
    }
    if "baseline" in results:
        metrics["baseline"] = {k: results["baseline"][k] for k in ("model_path", "overall", "groups")}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))  # a full disk keeps the old one
    table = markdown_table(summaries, ks)
    write_text_atomic(out / "metrics.md", table + "\n")
    scalars: dict[str, float] = {}
    for label, summary in summaries.items():
        scalars.update(flat_scalars(summary, f"eval/{label}", ks))
    write_tensorboard(out / "tensorboard", scalars)
    plot_by_level(summaries, out / "by_level.png")
    print(table, flush=True)
    for label in summaries:
        skipped = {k: v for s in results[label]["skipped"].values() for k, v in s.items() if v}
        if skipped:
            print(f"[ares_lit] {label}: skipped rows {skipped}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    from ares_lit.vision import ImageError

    parser = _parser()
    try:
        run(parse_args(argv, parser))
    except OSError as err:
        if err.errno in DISK_FULL:  # finished rows and a previous metrics.json are kept; a rerun resumes
            parser.exit(1, f"{parser.prog}: error: {err}\n       {NO_ROOM_HINT} run the same command again\n")
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except (ImageError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    sys.stdout.flush()


if __name__ == "__main__":  # vLLM spawns helpers that re-import __main__
    main()
