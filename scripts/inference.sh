#!/usr/bin/env bash
# Ask a model one question, as the ARES release's inference script does
# (`python infer.py --model_path M --image_path I --question Q --prompt P --max_tokens 16384
#  --do_sample True --temperature 1.0 --top_p 0.95 --top_k 50 --num_return_sequences 1`),
# through `python -m ares_lit.infer`. Every setting is an environment variable with a default:
#
#   MODEL_PATH            builtin:smollm2-135m-instruct   an HF folder (e.g. an export), a builtin:*, or a hub name
#   IMAGE_PATH            (none)                          an image file (VL models); empty = no --image_path
#   QUESTION              "What is 12 + 7?"
#   PROMPT                (unset)                         the suffix after the question; unset = the ARES
#                                                         reasoning suffix, PROMPT="" = no suffix
#   MAX_TOKENS            512                             (the release uses 16384; 512 suits a CPU)
#   DO_SAMPLE             True                            True/False
#   TEMPERATURE           1.0
#   TOP_P                 0.95
#   TOP_K                 50
#   NUM_RETURN_SEQUENCES  1
#   ENGINE                hf                              hf or vllm
#   PYTHON                python                          the interpreter that has ares_lit installed
#
# Any argument to this script is passed on to `python -m ares_lit.infer` (after the ones above, so it
# wins: e.g. `--seed 3`, `--system_prompt ...`, another `--image_path`). Relative paths are relative to
# the current directory; the script runs from anywhere.
#
#   MODEL_PATH=runs/aepo/version_0/hf_model QUESTION="What is 2 + 3?" bash scripts/inference.sh
#   PYTHON=.venv/bin/python MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct IMAGE_PATH=chart.png \
#       QUESTION="Which bar is tallest?" MAX_TOKENS=16384 bash scripts/inference.sh --seed 1
set -euo pipefail

: "${MODEL_PATH:=builtin:smollm2-135m-instruct}"
: "${IMAGE_PATH:=}"
: "${QUESTION:=What is 12 + 7?}"
: "${MAX_TOKENS:=512}"
: "${DO_SAMPLE:=True}"
: "${TEMPERATURE:=1.0}"
: "${TOP_P:=0.95}"
: "${TOP_K:=50}"
: "${NUM_RETURN_SEQUENCES:=1}"
: "${ENGINE:=hf}"

# The repo root on PYTHONPATH: `-m ares_lit.infer` works from any directory, installed or not.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

args=(
    --model_path "${MODEL_PATH}"
    --question "${QUESTION}"
    --max_tokens "${MAX_TOKENS}"
    --do_sample "${DO_SAMPLE}"
    --temperature "${TEMPERATURE}"
    --top_p "${TOP_P}"
    --top_k "${TOP_K}"
    --num_return_sequences "${NUM_RETURN_SEQUENCES}"
    --engine "${ENGINE}"
)
if [[ -n "${IMAGE_PATH}" ]]; then
    args+=(--image_path "${IMAGE_PATH}")
fi
if [[ -n "${PROMPT+set}" ]]; then  # set, even to "": passed as is; unset: infer's default ARES suffix
    args+=(--prompt "${PROMPT}")
fi

exec "${PYTHON:-python}" -m ares_lit.infer "${args[@]}" "$@"
