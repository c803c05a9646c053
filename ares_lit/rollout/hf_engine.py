"""HF `generate` rollout engine: the reference engine, and the fallback where vLLM is unavailable.

Built on a live model (the trainer's policy: weights shared, nothing to sync) or on a folder (an
owned copy that `load_weights` overwrites by name). Log-probs follow the convention in `base.py`,
the same as the vLLM engine's `processed_logprobs`: temperature, top-k and top-p are applied as
our own logits processors, and a last processor records `log_softmax` of the final scores, so
only one [batch, vocab] tensor is held (HF `output_scores` would hold [batch, steps, vocab]).
Do not use it on a ZeRO-3-sharded model: uneven generation lengths hang the ranks.

Images (Qwen2.5-VL): `generate(..., images=...)` takes each prompt's PIL images; the prompt ids
must already hold the expanded `<|image_pad|>` runs (`VisionProcessor.expand`). The engine builds
`pixel_values` / `image_grid_thw` with its `VisionProcessor` and passes `mm_token_type_ids`, so
that `generate` computes the same 3-D positions as the trainer (`vision.mrope_position_ids`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import torch
from torch.nn.utils.rnn import pad_sequence

from ares_lit.rollout.base import (
    Completion,
    RolloutEngine,
    SamplingConfig,
    check_max_tokens,
    check_prompts,
    check_score_inputs,
    truncate_completion,
)

__all__ = ["HFEngine"]


class HFEngine(RolloutEngine):
    """Rollouts with `transformers` `generate`, batched with left padding.

    Args:
        model: a live causal LM (shares weights with the trainer; `load_weights` is a no-op).
        model_path: a folder to load an owned copy from (exactly one of model / model_path).
        tokenizer: tokenizer object or folder; None = the model's folder.
        dtype: dtype of an owned copy ("float32", "bfloat16", ...); a live model keeps its own.
        batch_size: sequences per `generate` / forward call (prompts x n are flattened first).
        device: device of an owned copy; None = CUDA if available else CPU. A live model stays where it is.
        max_model_len: prompt + completion limit; None = the config's max_position_embeddings.
        processor: `VisionProcessor` for image prompts; None = built from the model folder on first use.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        model_path: str | None = None,
        tokenizer=None,
        dtype: str = "float32",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        max_model_len: int | None = None,
        processor=None,
    ) -> None:
        from transformers import AutoTokenizer

        from ares_lit.modules.policy import load_pretrained

        if (model is None) == (model_path is None):
            raise ValueError("HFEngine needs exactly one of model= (a live policy, shared) or model_path= (an owned copy)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.owns_weights = model is None
        if model is None:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_pretrained(str(model_path), getattr(torch, dtype)).to(device)
            model.eval().requires_grad_(False)
        self.model = model
        self.device = next(model.parameters()).device

        if tokenizer is None:
            tokenizer = model_path or getattr(model, "name_or_path", None)
            if not tokenizer:
                raise ValueError("HFEngine needs tokenizer= (object or folder): the live model has no name_or_path")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer
        self.processor = processor
        self.model_path = str(model_path or getattr(model, "name_or_path", "") or "")
        self.batch_size = batch_size
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_model_len = max_model_len or config.max_position_embeddings
        self.vocab_size = config.vocab_size

        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = {self.tokenizer.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_token_ids = sorted(e for e in eos if e is not None)
        if not self.eos_token_ids:
            raise ValueError("HFEngine found no eos token id on the tokenizer or the model's generation_config")
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

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
        if max_tokens is not None:  # one max_new_tokens per HF batch: generate to the longest cap, then cut
            out = self.generate(prompts, replace(sampling, max_tokens=max(max_tokens)), images)
            decode = partial(self.tokenizer.decode, skip_special_tokens=True)
            return [[truncate_completion(c, cap, decode) for c in cs] for cs, cap in zip(out, max_tokens)]
        stop_ids = sorted(set(self.eos_token_ids) | set(sampling.stop_token_ids or []))
        rows = [p for p in prompts for _ in range(sampling.n)]  # prompt-major: row i*n + j is sample j of prompt i
        row_mm = self._multimodal_rows(prompts, images, sampling.n)
        seed_ctx = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        completions: list[Completion] = []
        with seed_ctx, _inference(self.model):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in range(0, len(rows), self.batch_size):
                batch_mm = row_mm[start : start + self.batch_size] if row_mm else None
                completions += self._generate_batch(rows[start : start + self.batch_size], sampling, stop_ids, batch_mm)
        return [completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]

    def _multimodal_rows(self, prompts: list[list[int]], images: list[list | None] | None, n: int) -> list | None:
        """One MultimodalInputs (or None) per generated row; checks images against placeholders."""
        from ares_lit.vision import VisionProcessor, is_vision_language

        if images is None or not any(images):
            return None
        if len(images) != len(prompts):
            raise ValueError(f"generate got {len(prompts)} prompts but {len(images)} image lists")
        if not is_vision_language(self.model.config):
            raise ValueError("image prompts need a vision-language model; this engine's model has no vision tower")
        if self.processor is None:
            self.processor = VisionProcessor.from_pretrained(self.model_path, tokenizer=self.tokenizer)
        token = self.processor.image_token_id
        per_prompt = []
        for i, (p, imgs) in enumerate(zip(prompts, images)):
            imgs = list(imgs or [])
            if not imgs:
                per_prompt.append(None)
                continue
            mm = self.processor.pixels(imgs)
            expected = int((mm.image_grid_thw.prod(-1) // self.processor.merge_size**2).sum())
            if sum(t == token for t in p) != expected:
                raise ValueError(
                    f"prompt {i} has {sum(t == token for t in p)} image tokens but its images need {expected}; "
                    "expand the placeholders with VisionProcessor.expand"
                )
            per_prompt.append(mm)
        return [m for m in per_prompt for _ in range(n)]

    def _generate_batch(
        self, rows: list[list[int]], s: SamplingConfig, stop_ids: list[int], row_mm: list | None = None
    ) -> list[Completion]:
        from ares_lit.modules.logprobs import banned_token_ids
        from ares_lit.vision import merge_multimodal

        from transformers import GenerationConfig, LogitsProcessorList
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        ids = [torch.tensor(r, dtype=torch.long) for r in rows]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id, padding_side="left")
        mask = pad_sequence([torch.ones_like(t) for t in ids], batch_first=True, padding_side="left")
        prompt_width = input_ids.shape[1]
        # One max_new_tokens per batch: the longest prompt sets the max_model_len cap for the batch.
        max_new = min(s.max_tokens, self.max_model_len - max(len(r) for r in rows))

        do_sample = s.temperature > 0
        processors = []
        if do_sample:  # same order as vLLM: temperature, then top-k, then top-p
            if s.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k > 0:
                processors.append(TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                processors.append(TopPLogitsWarper(s.top_p))
        banned = banned_token_ids(self.model)
        if banned:  # a VL model's image/video placeholders are never sampled (the trainer masks them too)
            processors.insert(0, _BanTokens(banned))
        # Untruncated, the recorded log-softmax is the trainer's own: its entropy is the exact H_t.
        recorder = _SampledTokenLogprobs(with_entropy=do_sample and s.top_k <= 0 and s.top_p >= 1.0)
        # A clean config, so the checkpoint's generation_config (e.g. Qwen's top_k=20, repetition_penalty)
        # cannot leak into the sampling distribution; every warper above is ours and explicit.
        # Sampling knobs only when sampling: greedy decoding with them set makes transformers warn.
        knobs = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {"temperature": None, "top_k": None, "top_p": None}
        config = GenerationConfig(
            do_sample=do_sample,
            **knobs,
            max_new_tokens=max_new,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=False,
        )
        extra = {}
        mm = merge_multimodal(row_mm) if row_mm else None
        if mm is not None:
            extra = {
                "pixel_values": mm["pixel_values"].to(self.device, self.model.dtype),
                "image_grid_thw": mm["image_grid_thw"].to(self.device),
                "mm_token_type_ids": (input_ids == self.processor.image_token_id).int().to(self.device),
            }
        if mm is None:
            extra["past_key_values"] = self._shared_prefill(rows, input_ids, mask)
        seqs = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([*processors, recorder]),
            **extra,
        )
        gen = seqs[:, prompt_width:]
        logprobs, entropy = recorder.result(gen)

        # Cut each row after its first stop token (HF pads finished rows with pad_token_id).
        is_stop = torch.isin(gen, torch.tensor(stop_ids, device=gen.device))
        stopped = is_stop.any(dim=1)
        first_stop = is_stop.int().argmax(dim=1)
        lengths = torch.where(stopped, first_stop + 1, torch.full_like(first_stop, gen.shape[1])).tolist()
        gen_list, lp_list, stopped = gen.tolist(), logprobs.tolist(), stopped.tolist()
        ent_list = entropy.tolist() if entropy is not None else [None] * len(gen_list)
        token_ids = [g[:n] for g, n in zip(gen_list, lengths)]
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return [
            Completion(token_ids=t, text=txt, logprobs=lp[:n], finish_reason="stop" if st else "length",
                       entropy=None if ent is None else ent[:n])
            for t, txt, lp, ent, n, st in zip(token_ids, texts, lp_list, ent_list, lengths, stopped)
        ]

    def _shared_prefill(self, rows: list[list[int]], input_ids: torch.Tensor, mask: torch.Tensor):
        """The KV cache of all but the last prompt token, computed once per distinct prompt and
        repeated to its n rows (`generate` then prefills only the last token of each row); None
        when rows do not come in equal runs of one prompt (or a prompt has one token).

        Rows are prompt-major (row i*n + j is sample j of prompt i), so the n samples of a prompt
        are consecutive copies of the same left-padded ids.
        """
        runs, start = [], 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i] != rows[start]:
                runs.append(i - start)
                start = i
        k = runs[0]
        if k < 2 or any(r != k for r in runs) or input_ids.shape[1] < 2:
            return None
        base_ids, base_mask = input_ids[::k, :-1].to(self.device), mask[::k, :-1].to(self.device)
        positions = (base_mask.long().cumsum(-1) - 1).clamp_min(0)
        cache = self.model(input_ids=base_ids, attention_mask=base_mask, position_ids=positions, use_cache=True).past_key_values
        cache.batch_repeat_interleave(k)
        return cache

    @property
    def reports_trainer_scores(self) -> bool:
        """On the trainer's live policy the recorded log-probs and entropy are the trainer's own (to
        the ~1e-6 of a cached vs a full forward); an owned copy may differ in dtype."""
        return not self.owns_weights

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        check_score_inputs(sequences, prompt_lens, self.max_model_len, self.vocab_size)
        out: list[list[float]] = []
        with _inference(self.model):
            for start in range(0, len(sequences), self.batch_size):
                seqs, plens = sequences[start : start + self.batch_size], prompt_lens[start : start + self.batch_size]
                ids = [torch.tensor(s, dtype=torch.long) for s in seqs]
                # Right padding: real tokens keep positions 0..L-1, and causal attention never sees the pads.
                input_ids = pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id).to(self.device)
                mask = pad_sequence([torch.ones_like(t) for t in ids], batch_first=True).to(self.device)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
                lp = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1).tolist()
                # lp[j - 1] is the log-prob of token j.
                out += [row[p - 1 : len(s) - 1] for row, s, p in zip(lp, seqs, plens)]
        return out

    # ---------------------------------------------------------------- weights

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Owned copy: copy each tensor in by name (unknown names and shape mismatches raise; `partial`
        pushes leave the others as they are, as any push does). Live model: no-op."""
        if not self.owns_weights:
            return  # the engine *is* the trainer's model
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers(remove_duplicate=False))
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = targets.get(name)
                if target is None:
                    known = ", ".join(list(targets)[:5])
                    raise KeyError(f"HFEngine.load_weights: unknown parameter {name!r} (known names look like: {known}, ...)")
                if target.shape != tensor.shape:
                    raise ValueError(f"HFEngine.load_weights: {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
                target.copy_(tensor.detach())

    def close(self) -> None:
        if self.owns_weights:
            self.model = None


@contextlib.contextmanager
def _inference(model: torch.nn.Module):
    """eval() + no_grad() for the duration, then the caller's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class _BanTokens:
    """Sets the logits of `token_ids` to -inf (image placeholders must never be generated)."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.token_ids] = float("-inf")
        return scores


class _SampledTokenLogprobs:
    """The last logits processor: keeps log_softmax of this step's final scores and, when called at the
    next step (whose input_ids end with the token just sampled), keeps that token's entry. With
    `with_entropy` it also keeps each step's full-vocabulary entropy of those scores (-inf entries
    add 0), the trainer's H_t when no truncation is applied."""

    def __init__(self, with_entropy: bool = False) -> None:
        self.picked: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] | None = [] if with_entropy else None
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from ares_lit.core.entropy import entropy_from_log_probs

        if self.last is not None:
            self.picked.append(self.last.gather(1, input_ids[:, -1:]))
        self.last = scores.float().log_softmax(-1)
        if self.entropies is not None:
            self.entropies.append(entropy_from_log_probs(self.last)[:, None])
        return scores

    def result(self, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([batch, steps] log-probs of `generated` (the new tokens of `generate`'s output),
        [batch, steps] entropies or None)."""
        steps = generated.shape[1]
        if len(self.picked) < steps and self.last is not None:
            self.picked.append(self.last.gather(1, generated[:, -1:]))
        zeros = generated.new_zeros(generated.shape, dtype=torch.float32)
        if not self.picked:
            return zeros, (zeros.clone() if self.entropies is not None else None)
        entropy = torch.cat(self.entropies, dim=1)[:, :steps] if self.entropies else None
        return torch.cat(self.picked, dim=1)[:, :steps], entropy
