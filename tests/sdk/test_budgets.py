"""Budgets and rate limits seen through the official SDKs: a refused call is
a 429 the SDK raises as its own RateLimitError (with the code and
retry-after), and a stream that outgrows what it reserved ends with an
error the SDK raises."""

import anthropic
import openai
import pytest

from conftest import BUDGET_KEYS


def test_openai_rate_limit_is_a_rate_limit_error(gateway):
    client = gateway.openai(api_key=BUDGET_KEYS["budget-rate"])
    admitted = 0
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(5):
            client.chat.completions.create(
                model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
            admitted += 1
    assert admitted == 2
    e = err.value
    assert e.status_code == 429
    assert e.code == "rate_limited"
    assert "api_key:budget-rate requests_per_minute" in e.message
    retry = int(e.response.headers["retry-after"])
    assert 1 <= retry <= 60


def test_anthropic_sees_the_same_limit_in_its_format(gateway):
    # The same key's minute is already spent by the test above or by the
    # calls here.
    client = gateway.anthropic(api_key=BUDGET_KEYS["budget-rate"])
    with pytest.raises(anthropic.RateLimitError) as err:
        for _ in range(5):
            client.messages.create(model="mock-claude", max_tokens=16,
                                   messages=[{"role": "user", "content": "hi"}])
    e = err.value
    assert e.status_code == 429
    assert e.body["type"] == "error"
    assert e.body["error"]["type"] == "rate_limit_error"
    assert "requests_per_minute" in e.body["error"]["message"]


def test_a_stream_past_its_reservation_ends_with_an_sdk_error(gateway):
    # The mock echoes the prompt: ~2000 characters against 10 reserved
    # output tokens.
    client = gateway.openai(api_key=BUDGET_KEYS["budget-tokens"])
    stream = client.chat.completions.create(
        model="mock-gpt", max_tokens=10, stream=True,
        messages=[{"role": "user", "content": "lorem ipsum " * 170}])
    received = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += chunk.choices[0].delta.content
    assert "output tokens reserved" in str(err.value)
    assert len(received) < 500


def test_anthropic_stream_past_its_reservation(gateway):
    client = gateway.anthropic(api_key=BUDGET_KEYS["budget-tokens"])
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(
                model="mock-claude", max_tokens=10,
                messages=[{"role": "user", "content": "lorem ipsum " * 170}]) as stream:
            for _ in stream.text_stream:
                pass
    assert "output tokens reserved" in str(err.value)
