"""The ARES prompt: a question, the paper's reasoning suffix, the policy's chat template.

Both stages (AdaCS and AEPO) and evaluation build prompts here, so that the model is always asked
the same way (docs/algorithm.md "Two stages": the suffix is used in training and eval).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARES_PROMPT_SUFFIX", "build_prompt_text", "build_messages"]

ARES_PROMPT_SUFFIX = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)


def build_messages(
    question: str, suffix: str = ARES_PROMPT_SUFFIX, system_prompt: str | None = None, num_images: int = 0
) -> list[dict[str, Any]]:
    """Chat messages for one question: an optional system message and one user message.

    The user text is `question + "\\n" + suffix` (just the question when the suffix is empty). With
    `num_images > 0` the user content is the Hugging Face multimodal list form, images first, so a
    vision-language processor's template inserts its image placeholders.
    """
    text = f"{question}\n{suffix}" if suffix else question
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if num_images > 0:
        content: Any = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    else:
        content = text
    messages.append({"role": "user", "content": content})
    return messages


def build_prompt_text(
    tokenizer: Any,
    question: str,
    suffix: str = ARES_PROMPT_SUFFIX,
    system_prompt: str | None = None,
    num_images: int = 0,
) -> str:
    """The prompt string the policy sees: the chat template applied with a generation prompt.

    Args:
        tokenizer: a Hugging Face tokenizer (or processor) with a chat template.
        question: the problem text.
        suffix: appended to the question after a newline; "" for none.
        system_prompt: an optional system message.
        num_images: number of image placeholders to put before the text (multimodal templates).

    Raises:
        ValueError: when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; ARES prompts go through the policy's chat template. "
            "Point tokenizer_path at an instruct/chat model (or set tokenizer.chat_template)."
        )
    messages = build_messages(question, suffix, system_prompt, num_images)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
