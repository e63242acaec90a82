"""Getting the kernel out of an answer, and the feedback when there is none."""
from __future__ import annotations

import pytest

from agent.extract import FormatError, extract_kernel
from agent.llm import Answer

KERNEL = "import triton\n\n\ndef attention(q, k, v, *, scale=None, **buffers):\n    return q\n"
HELPER = "def helper(x):\n    return x\n"


def answer(content: str, finish_reason: str = "stop", reasoning: str = "") -> Answer:
    return Answer(content=content, reasoning=reasoning, finish_reason=finish_reason, model="m")


def fenced(code: str, language: str = "python") -> str:
    return f"```{language}\n{code}```\n"


def format_error(a: Answer) -> FormatError:
    with pytest.raises(FormatError) as failure:
        extract_kernel(a)
    return failure.value


def test_last_complete_block_defining_attention_wins():
    first = KERNEL.replace("return q", "return k")
    text = f"Draft:\n{fenced(first)}Better:\n{fenced(KERNEL, 'py')}Usage:\n{fenced(HELPER)}"
    assert extract_kernel(answer(text)) == KERNEL


def test_bare_fence_and_indented_block_are_accepted():
    assert extract_kernel(answer(fenced(KERNEL, ""))) == KERNEL
    indented = "1. The kernel:\n   ```python\n" + "".join("   " + line + "\n" if line else "\n"
                                                         for line in KERNEL.splitlines()) + "   ```\n"
    assert extract_kernel(answer(indented)) == KERNEL


def test_blocks_without_attention_or_in_other_languages_are_skipped():
    text = fenced(KERNEL) + fenced(HELPER) + fenced("def attention(q, k, v):\n    pass\n", "text")
    assert extract_kernel(answer(text)) == KERNEL


def test_think_blocks_are_ignored():
    text = "<think>\n" + fenced(KERNEL.replace("return q", "return v")) + "</think>\n" + fenced(KERNEL)
    assert extract_kernel(answer(text)) == KERNEL


def test_cut_off_answer_is_truncated():
    error = format_error(answer("Here it is:\n```python\nimport triton\ndef attention(q, k,", "length"))
    assert error.kind == "truncated"
    assert "finish_reason=length" in error.feedback and "```python" in error.feedback


def test_cut_off_after_a_complete_kernel_keeps_the_kernel():
    text = fenced(KERNEL) + "And a quick test:\n```python\nimport torch\nq = torch.randn("
    assert extract_kernel(answer(text, "length")) == KERNEL


def test_unclosed_fence_is_truncated():
    error = format_error(answer("```python\n" + KERNEL))
    assert error.kind == "truncated" and "never closed" in error.feedback


def test_empty_content_with_reasoning_blames_the_token_budget():
    error = format_error(answer("", "length", reasoning="Let me think about tiling for a long time..."))
    assert error.kind == "empty" and "token budget" in error.feedback


def test_empty_content_without_reasoning():
    error = format_error(answer("  \n"))
    assert error.kind == "empty" and "empty" in error.feedback and "token budget" not in error.feedback


def test_no_code_asks_for_the_kernel_file():
    for text in ("I would use FlashAttention-2 tiling.", fenced(HELPER)):
        error = format_error(answer(text))
        assert error.kind == "no_code"
        assert "```python" in error.feedback and "attention(q, k, v, *, scale=None, **buffers)" in error.feedback
