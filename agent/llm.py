"""The chat client: one OpenAI-compatible completion per call, with our own retry policy.

The SDK's retries are off (`max_retries=0`) and tenacity retries instead, because a run waits on
reasoning models for minutes and must own the policy: how many attempts, how long a backoff may grow,
that a server's Retry-After is honoured, and that the number of attempts is recorded in the answer.
Retrying in both places would multiply the attempts and hide them. Errors that no retry can fix (a
refused key, an unknown model, an unreachable endpoint) become a ConfigError that names the flag or
variable to fix; a request that keeps failing becomes an LLMError.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

import openai
import tenacity

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
PLACEHOLDER_KEY = "not-needed"  # vLLM, Ollama and friends accept any key
THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class ModelConfig:
    model: str  # model id as the endpoint names it
    base_url: str | None = None  # endpoint root (.../v1); None means $OPENAI_BASE_URL, else OpenAI's own
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the key; the key itself is never stored
    request_timeout_s: float = 900.0  # longest wait for one answer: reasoning models think for minutes
    connect_timeout_s: float = 10.0  # longest wait to connect, and for the whole preflight check
    max_attempts: int = 6  # attempts per completion, the first included
    max_backoff_s: float = 60.0  # longest single wait between attempts, a server's Retry-After included
    temperature: float | None = None  # None leaves the server's default
    max_tokens: int | None = None  # cap on generated tokens (reasoning included on most servers); None: server's

    def public(self) -> dict:
        """The config as written to a run directory: no key, and no credentials inside the URL."""
        data = asdict(self)
        if self.base_url and "@" in urlsplit(self.base_url).netloc:
            parts = urlsplit(self.base_url)
            data["base_url"] = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return data


@dataclass
class Answer:
    content: str  # visible text, <think> blocks removed
    reasoning: str  # reasoning_content, or the text of <think> blocks; "" if none
    finish_reason: str
    model: str
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the call, backoff waits included
    attempts: int = 1


class ConfigError(Exception):
    """The endpoint, key or model is wrong; retrying cannot help. The message says what to change."""


class LLMError(Exception):
    """A request failed for good (after retries, or with an error no retry fixes)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ChatClient:
    def __init__(self, config: ModelConfig, api_key: str | None = None):
        self.config = config
        self.base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        env = config.api_key_env
        key = api_key or os.environ.get(env)
        self._key_source = ("the given key" if api_key else f"the key in ${env}" if key
                            else f"a placeholder key (${env} is unset)")
        if not key and urlsplit(self.base_url).hostname not in LOCAL_HOSTS:
            raise ConfigError(f"no API key: ${config.api_key_env} is not set. Set it, or name the variable that "
                              f"holds the key with --api-key-env")
        timeout = openai.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
        self._sdk = openai.OpenAI(api_key=key or PLACEHOLDER_KEY, base_url=self.base_url, max_retries=0,
                                  timeout=timeout)

    def preflight(self) -> None:
        """Check endpoint, key and model in seconds, before a run spends anything.

        Errors a retry may fix (429, 5xx) pass: the endpoint answered, and `complete` retries them."""
        quick = self._sdk.with_options(timeout=self.config.connect_timeout_s)
        try:
            ids = [m.id for m in quick.models.list()]
        except openai.NotFoundError:  # some servers have no /models: ask for one token instead
            ids = []
            try:
                quick.chat.completions.create(model=self.config.model, max_tokens=1,
                                              messages=[{"role": "user", "content": "ping"}])
            except openai.APIError as e:
                self._raise_if_config(e)
        except openai.APIError as e:
            self._raise_if_config(e)
            return
        if ids and self.config.model not in ids:
            shown = ", ".join(sorted(ids)[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")
            raise ConfigError(f"model {self.config.model!r} is not served at {self.base_url}; available: {shown}. "
                              f"Pick one with --model")

    def complete(self, messages: list[dict]) -> Answer:
        """One chat completion, retried on rate limits, server errors, timeouts and dropped connections."""
        started = time.monotonic()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.max_attempts),
            wait=_RetryAfterOr(tenacity.wait_exponential_jitter(multiplier=2, jitter=2, max=self.config.max_backoff_s),
                               cap=self.config.max_backoff_s),
            retry=tenacity.retry_if_exception(_transient), reraise=True)
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    response = self._sdk.chat.completions.create(messages=messages, **self._params())
        except openai.APIError as e:
            if isinstance(e, openai.APIStatusError):
                self._raise_if_config(e)  # a refused key or an unknown model: not retried, as no retry would help
            raise LLMError(f"chat completion failed after {attempts} attempt(s): {_describe(e)}",
                           getattr(e, "status_code", None)) from e
        if not response.choices:
            raise LLMError(f"the endpoint returned no choices (model {response.model!r})")
        choice = response.choices[0]
        content, thoughts = split_reasoning(choice.message.content or "")
        return Answer(content=content, reasoning=_reasoning_field(choice.message) or thoughts,
                      finish_reason=choice.finish_reason or "", model=response.model or self.config.model,
                      usage=response.usage.model_dump(exclude_none=True) if response.usage else {},
                      seconds=time.monotonic() - started, attempts=attempts)

    def close(self) -> None:
        """Close pooled connections (the SDK keeps them alive between calls)."""
        self._sdk.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _params(self) -> dict:
        params = {"model": self.config.model}
        if self.config.temperature is not None:
            params["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            params["max_tokens"] = self.config.max_tokens
        return params

    def _raise_if_config(self, e: openai.APIError) -> None:
        """Raise ConfigError when `e` is something the user must fix; return otherwise."""
        status = getattr(e, "status_code", None)
        env = self.config.api_key_env
        if isinstance(e, openai.APITimeoutError):
            raise ConfigError(f"cannot reach {self.base_url}: no answer within {self.config.connect_timeout_s:g} s. "
                              f"Check --base-url / OPENAI_BASE_URL") from e
        if isinstance(e, openai.APIConnectionError):
            raise ConfigError(f"cannot reach {self.base_url}: {e.__cause__ or e}. Check --base-url / "
                              f"OPENAI_BASE_URL (is the server running?)") from e
        if status in (401, 403):
            raise ConfigError(f"the endpoint {self.base_url} refused {self._key_source}: {_describe(e)}. Set "
                              f"${env} to a valid key, or name another variable with --api-key-env") from e
        if status == 404:
            raise ConfigError(f"{self.base_url} answered 404 for model {self.config.model!r}: {_describe(e)}. "
                              f"Check --model and --base-url") from e


class _RetryAfterOr(tenacity.wait.wait_base):
    """Wait as long as the server's Retry-After says, else fall back; never longer than `cap`."""

    def __init__(self, fallback: tenacity.wait.wait_base, cap: float):
        self.fallback, self.cap = fallback, cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        response = getattr(retry_state.outcome.exception(), "response", None)
        seconds = _retry_after(response.headers) if response is not None else None
        return min(self.cap, seconds if seconds is not None else self.fallback(retry_state))


def _retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI's) or `Retry-After`; None when absent or an HTTP date."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, ValueError):
            continue
    return None


def _transient(e: BaseException) -> bool:
    if isinstance(e, openai.APIConnectionError):  # timeouts and dropped connections included
        return True
    return isinstance(e, openai.APIStatusError) and (e.status_code in (408, 409, 429) or e.status_code >= 500)


def _describe(e: openai.APIError) -> str:
    body = e.body.get("message", e.body) if isinstance(e.body, dict) else e.body
    text = str(body if body is not None else e.message)[:300]
    status = getattr(e, "status_code", None)
    return f"HTTP {status}: {text}" if status else f"{e.message} ({e.__cause__ or 'no detail'})"


def _reasoning_field(message) -> str:
    """DeepSeek-R1 style servers add `reasoning_content` (some say `reasoning`); the SDK keeps extras."""
    extra = message.model_extra or {}
    value = extra.get("reasoning_content") or extra.get("reasoning")
    return value if isinstance(value, str) else ""


def split_reasoning(text: str) -> tuple[str, str]:
    """Split `text` into (visible, reasoning): <think> blocks, an unterminated leading <think>, and text before
    a lone </think> (templates that open the block in the prompt) are reasoning."""
    thoughts = [t.strip() for t in THINK.findall(text)]
    visible = THINK.sub("", text)
    head, sep, tail = visible.partition("</think>")
    if sep and "<think>" not in head:
        thoughts.append(head.strip())
        visible = tail
    opened = re.match(r"\s*<think>(.*)\Z", visible, re.DOTALL)
    if opened:
        thoughts.append(opened.group(1).strip())
        visible = ""
    return visible.strip(), "\n\n".join(t for t in thoughts if t)
