"""Get the kernel out of an answer, or say precisely why there is none.

An answer that holds no usable kernel is not a verifier failure: it costs no GPU time, and the model
needs different feedback (think less, close the block, send code at all), so it is a FormatError whose
`feedback` is written for the model.
"""
from __future__ import annotations

import re
import textwrap

from agent.llm import Answer, split_reasoning

CODE_LANGUAGES = {"", "python", "py", "python3"}
DEFINES_ATTENTION = re.compile(r"^def\s+attention\s*\(", re.MULTILINE)
FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
ASK = ("the complete kernel file in a single ```python fenced block that defines "
       "attention(q, k, v, *, scale=None, **buffers)")


class FormatError(Exception):
    """The answer holds no complete kernel. `kind` is empty | truncated | no_code."""

    def __init__(self, kind: str, feedback: str):
        super().__init__(feedback)
        self.kind = kind
        self.feedback = feedback


def extract_kernel(answer: Answer) -> str:
    """The last complete fenced block that defines `attention`, with a trailing newline."""
    content, thoughts = split_reasoning(answer.content)  # the client strips <think> already; models vary
    if not content.strip():
        raise _empty(bool(answer.reasoning or thoughts), answer.finish_reason)
    blocks, unclosed = _code_blocks(content)
    kernels = [b for b in blocks if DEFINES_ATTENTION.search(b)]
    cut = answer.finish_reason == "length"
    if kernels and (cut or not unclosed):  # a complete kernel written before the cut still counts
        return kernels[-1].rstrip() + "\n"
    if cut:
        raise FormatError("truncated", "Your answer was cut off (finish_reason=length) before the code block "
                                       "closed. Answer again with only the complete kernel in one ```python block, "
                                       "keeping any reasoning short.")
    if unclosed:
        raise FormatError("truncated", "Your answer ended inside a code block that was never closed with ```. "
                                       f"Answer again with {ASK}, and close the block.")
    found = "none of your code blocks defines `attention`" if blocks else "your answer has no fenced code block"
    raise FormatError("no_code", f"No kernel found: {found}. Reply with {ASK}.")


def _empty(had_reasoning: bool, finish_reason: str) -> FormatError:
    if had_reasoning:
        return FormatError("empty", f"Your reasoning used up the token budget before you wrote the answer "
                                    f"(finish_reason={finish_reason}, visible answer empty). Reason more briefly, "
                                    f"then reply with {ASK}.")
    return FormatError("empty", f"Your answer was empty. Reply with {ASK}.")


def _code_blocks(text: str) -> tuple[list[str], bool]:
    """Dedented bodies of the complete Python (or bare) fenced blocks, and whether the text ends in an open one."""
    blocks: list[str] = []
    body: list[str] | None = None  # lines of the open block; None outside a block
    language = ""
    for line in text.splitlines():
        fence = FENCE.match(line)
        if body is None and fence:
            body, language = [], fence.group(1).lower()
        elif body is not None and fence and not fence.group(1):
            if language in CODE_LANGUAGES:
                blocks.append(textwrap.dedent("\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    return blocks, body is not None and language in CODE_LANGUAGES
