"""The chat client against a real loopback server: answers, retries, timeouts, and config errors."""
from __future__ import annotations

import json
import socket
import time

import pytest

from agent.llm import Answer, ChatClient, ConfigError, LLMError, ModelConfig, split_reasoning
from fake_openai import FakeOpenAI, drop, error, reply, slow

KEY = "sk-test-0123456789"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The SDK reads several OPENAI_* variables; a developer's shell must not change these tests."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
                 "KGEN_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


OPEN: list[ChatClient] = []


@pytest.fixture(autouse=True)
def close_clients():
    yield
    while OPEN:
        OPEN.pop().close()


def make_client(server: FakeOpenAI, api_key: str | None = KEY, **overrides) -> ChatClient:
    """A client with fast retries; closed after the test."""
    config = dict(model="fake-model", base_url=server.base_url, request_timeout_s=5.0, connect_timeout_s=2.0,
                  max_attempts=4, max_backoff_s=0.02)
    OPEN.append(ChatClient(ModelConfig(**{**config, **overrides}), api_key=api_key))
    return OPEN[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# answers

def test_normal_answer(server):
    server.script(reply("here is the kernel"))
    answer = make_client(server, temperature=0.3, max_tokens=1000).complete(HELLO)
    assert isinstance(answer, Answer)
    assert (answer.content, answer.reasoning, answer.finish_reason) == ("here is the kernel", "", "stop")
    assert answer.model == "fake-model" and answer.attempts == 1
    assert answer.usage["total_tokens"] == answer.usage["prompt_tokens"] + answer.usage["completion_tokens"]
    assert 0 < answer.seconds < 5
    [body] = server.chat_requests
    assert body["messages"] == HELLO and body["model"] == "fake-model"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 1000


def test_reasoning_content_captured_and_never_sent_back(server):
    server.script(reply("<think>draft</think>final answer", reasoning="long deliberation"), reply("ok"))
    client = make_client(server)
    answer = client.complete(HELLO)
    assert answer.content == "final answer"
    assert answer.reasoning == "long deliberation"  # the server's field wins over <think> text
    history = HELLO + [{"role": "assistant", "content": answer.content}, {"role": "user", "content": "again"}]
    client.complete(history)
    sent = server.chat_requests[1]
    assert sent["messages"] == history
    assert "reasoning" not in json.dumps(sent) and "deliberation" not in json.dumps(sent)


def test_think_blocks_are_stripped_into_reasoning(server):
    server.script(reply("<think>plan the tiling</think>\n```python\ncode\n```"),
                  reply("<think>still thinking when the budget ran out", finish_reason="length"))
    client = make_client(server)
    first = client.complete(HELLO)
    assert (first.content, first.reasoning) == ("```python\ncode\n```", "plan the tiling")
    cut = client.complete(HELLO)
    assert (cut.content, cut.reasoning, cut.finish_reason) == ("", "still thinking when the budget ran out", "length")


def test_lone_closing_think_tag_marks_reasoning():
    # chat templates that open <think> in the prompt leave only the closing tag in the answer
    assert split_reasoning("weighing options</think>\nthe answer") == ("the answer", "weighing options")
    assert split_reasoning("no tags at all") == ("no tags at all", "")


# retries

def test_rate_limit_twice_then_success(server):
    server.script(error(429, "slow down", retry_after=0), error(429, "slow down", retry_after=0), reply("done"))
    answer = make_client(server).complete(HELLO)
    assert answer.content == "done" and answer.attempts == 3
    assert len(server.chat_requests) == 3


def test_retry_after_is_honoured_and_capped(server):
    server.script(error(429, retry_after=0.4), reply("waited"))
    started = time.monotonic()
    assert make_client(server, max_backoff_s=10).complete(HELLO).content == "waited"
    assert 0.4 <= time.monotonic() - started < 2  # the header, not the 2 s+ exponential fallback
    server.script(error(429, retry_after=30), reply("capped"))
    started = time.monotonic()
    assert make_client(server, max_backoff_s=0.1).complete(HELLO).content == "capped"
    assert time.monotonic() - started < 2


def test_server_error_then_success(server):
    server.script(error(500, "overloaded"), reply("recovered"))
    answer = make_client(server).complete(HELLO)
    assert answer.content == "recovered" and answer.attempts == 2


def test_permanent_server_error_exhausts_attempts(server):
    server.script(*[error(503, "upstream is down")] * 3)
    with pytest.raises(LLMError, match="after 3 attempt.*HTTP 503: upstream is down") as failure:
        make_client(server, max_attempts=3).complete(HELLO)
    assert failure.value.status == 503
    assert len(server.chat_requests) == 3


def test_slow_answer_times_out_and_is_retried(server):
    server.script(slow(5, then=reply("too late")), reply("on time"))
    started = time.monotonic()
    answer = make_client(server, request_timeout_s=0.5).complete(HELLO)
    assert answer.content == "on time" and answer.attempts == 2
    assert time.monotonic() - started < 2.5


def test_timeouts_exhaust_attempts(server):
    server.script(slow(5), slow(5))
    started = time.monotonic()
    with pytest.raises(LLMError, match="2 attempt.*timed out"):
        make_client(server, request_timeout_s=0.3, max_attempts=2).complete(HELLO)
    assert time.monotonic() - started < 2


def test_dropped_connection_is_retried(server):
    server.script(drop(), reply("second try"))
    answer = make_client(server).complete(HELLO)
    assert answer.content == "second try" and answer.attempts == 2
    assert len(server.chat_requests) == 2


def test_bad_request_is_not_retried(server):
    server.script(error(400, "context length exceeded"), reply("never sent"))
    with pytest.raises(LLMError, match="context length exceeded") as failure:
        make_client(server).complete(HELLO)
    assert failure.value.status == 400
    assert len(server.chat_requests) == 1


# configuration errors

def test_refused_key_fails_preflight_once():
    with FakeOpenAI(api_key="the-right-key") as server:
        client = make_client(server, api_key=None, api_key_env="KGEN_TEST_KEY")
        with pytest.raises(ConfigError, match=r"refused .*\$KGEN_TEST_KEY.*--api-key-env"):
            client.preflight()
        assert len(server.requests) == 1


def test_refused_key_during_complete_is_not_retried(server):
    server.script(error(401, "invalid api key"), reply("never sent"))
    with pytest.raises(ConfigError, match="refused the given key"):
        make_client(server).complete(HELLO)
    assert len(server.chat_requests) == 1


def test_unreachable_endpoint_fails_preflight_fast():
    with ChatClient(ModelConfig(model="m", base_url=f"http://127.0.0.1:{closed_port()}/v1"), api_key=KEY) as client:
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1.*--base-url"):
            client.preflight()
        assert time.monotonic() - started < 3


def test_silent_endpoint_fails_preflight_within_connect_timeout():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        with ChatClient(ModelConfig(model="m", base_url=url, connect_timeout_s=0.5), api_key=KEY) as client:
            started = time.monotonic()
            with pytest.raises(ConfigError, match="no answer within 0.5 s"):
                client.preflight()
            assert time.monotonic() - started < 3


def test_missing_model_lists_available_ones():
    with FakeOpenAI(models=["qwen-coder", "deepseek-r1"]) as server:
        with pytest.raises(ConfigError, match=r"'fake-model' is not served.*deepseek-r1, qwen-coder.*--model"):
            make_client(server).preflight()
        make_client(server, model="deepseek-r1").preflight()
        assert [path for path, _, _ in server.requests] == ["/v1/models", "/v1/models"]


def test_preflight_falls_back_to_chat_without_models_endpoint():
    with FakeOpenAI(models_status=404) as server:
        server.script(reply("p"), error(404, "The model `fake-model` does not exist."))
        client = make_client(server)
        client.preflight()
        assert [path for path, _, _ in server.requests] == ["/v1/models", "/v1/chat/completions"]
        assert server.chat_requests[0]["max_tokens"] == 1
        with pytest.raises(ConfigError, match="does not exist.*--model"):
            client.preflight()


def test_key_goes_in_the_header_and_never_into_public_config(server, monkeypatch):
    monkeypatch.setenv("KGEN_TEST_KEY", "sk-from-env-secret")
    server.script(reply("ok"))
    config = ModelConfig(model="fake-model", base_url=server.base_url, api_key_env="KGEN_TEST_KEY")
    with ChatClient(config) as client:
        client.complete(HELLO)
    [(_, headers, _)] = server.requests
    assert headers["authorization"] == "Bearer sk-from-env-secret"
    public = json.dumps(config.public())
    assert "sk-from-env-secret" not in public and '"api_key_env": "KGEN_TEST_KEY"' in public
    leaky = ModelConfig(model="m", base_url="https://user:hunter2@example.com/v1").public()
    assert leaky["base_url"] == "https://example.com/v1"


def test_missing_key_is_a_config_error_except_for_local_servers(server):
    with pytest.raises(ConfigError, match=r"\$KGEN_TEST_KEY is not set.*--api-key-env"):
        ChatClient(ModelConfig(model="m", base_url="https://api.example.com/v1", api_key_env="KGEN_TEST_KEY"))
    server.script(reply("ok"))
    make_client(server, api_key=None, api_key_env="KGEN_TEST_KEY").complete(HELLO)
    assert server.requests[0][1]["authorization"] == "Bearer not-needed"
