"""The official `anthropic` Python SDK against the gateway (mock upstream)."""

from __future__ import annotations

import json
import math
import time

import anthropic
import pytest


def directive(**script) -> str:
    """A user message that scripts the mock for this one call."""
    return "MOCK:" + json.dumps(script)


def out_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_messages_non_streaming(claude):
    text = "Hello Claude through TapPass, echo me exactly."
    msg = claude.messages.create(model="mock-claude", max_tokens=256, messages=user(text))
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0
    assert msg.usage.output_tokens == out_tokens(text)


def test_messages_content_blocks_input(claude):
    msg = claude.messages.create(
        model="mock-claude", max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "text", "text": "block one, "},
                                               {"type": "text", "text": "block two"}]}],
    )
    assert msg.content[0].text == "block one, block two"


def test_messages_streaming_text(claude):
    text = "Anthropic streaming via the gateway; every fragment counts."
    with claude.messages.stream(model="mock-claude", max_tokens=256, messages=user(text)) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == math.ceil(len(text) / 8)
    assert "".join(pieces) == text
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens == out_tokens(text)


def test_messages_streaming_tool_use(claude):
    args = {"city": "Brussels", "unit": "celsius", "hours": [9, 12, 18], "opts": {"rain": True}}
    args_text = json.dumps(args)
    fragments = []
    with claude.messages.stream(
        model="mock-claude", max_tokens=256, tools=[WEATHER_TOOL],
        messages=user(directive(tool_call={"name": "get_weather", "arguments": args_text}, chunk_size=4)),
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                fragments.append(event.partial_json)
        final = stream.get_final_message()
    assert len(fragments) == math.ceil(len(args_text) / 4)
    assert "".join(fragments) == args_text
    assert final.stop_reason == "tool_use"
    tool_blocks = [b for b in final.content if b.type == "tool_use"]
    assert len(tool_blocks) == 1
    assert tool_blocks[0].name == "get_weather"
    assert tool_blocks[0].id
    assert tool_blocks[0].input == args


def test_messages_non_streaming_tool_use(claude):
    args = {"query": "governance", "limit": 3}
    msg = claude.messages.create(
        model="mock-claude", max_tokens=64, tools=[WEATHER_TOOL],
        messages=user(directive(tool_call={"name": "search", "arguments": json.dumps(args)})),
    )
    assert msg.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in msg.content] == [("tool_use", "search", args)]


def test_count_tokens(claude):
    short = claude.messages.count_tokens(model="mock-claude", messages=user("hi"))
    long = claude.messages.count_tokens(model="mock-claude", messages=user("hi " * 200))
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens


def test_models_list_anthropic_shape(claude):
    ids = [m.id for m in claude.models.list()]
    assert "mock-gpt" in ids
    assert "mock-claude" in ids


# -------------------------------------------------------------- errors ---


def test_wrong_gateway_key(gateway):
    client = gateway.anthropic(api_key="tp-wrong-key")
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client.messages.create(model="mock-claude", max_tokens=16, messages=user("hi"))
    assert exc.value.status_code == 401


def test_unknown_model(claude):
    with pytest.raises(anthropic.NotFoundError) as exc:
        claude.messages.create(model="no-such-claude", max_tokens=16, messages=user("hi"))
    assert exc.value.status_code == 404
    body = exc.value.body
    assert isinstance(body, dict)
    assert body.get("type") == "error"
    assert body["error"]["type"] == "not_found_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_upstream_503_passthrough(claude):
    with pytest.raises(anthropic.APIStatusError) as exc:
        claude.messages.create(
            model="mock-claude-faulty", max_tokens=16,
            messages=user(directive(status=503, error_message="claude mock overloaded")),
        )
    assert exc.value.status_code == 503
    assert "claude mock overloaded" in str(exc.value)


def test_upstream_dies_mid_stream(gateway):
    client = gateway.anthropic(timeout=10)
    reply = "This Anthropic stream is going to be cut off early."
    got = []
    started = time.monotonic()
    with pytest.raises(anthropic.APIError) as exc:
        with client.messages.stream(
            model="mock-claude-faulty", max_tokens=256,
            messages=user(directive(reply=reply, chunk_size=4, die_after_events=5)),
        ) as stream:
            for piece in stream.text_stream:
                got.append(piece)
    assert not isinstance(exc.value, anthropic.APITimeoutError)
    assert time.monotonic() - started < 10
    text = "".join(got)
    assert reply.startswith(text) and len(text) < len(reply)


def test_credentials_provider_key_sent_gateway_key_not(gateway, mock):
    client = gateway.anthropic()
    msg = client.messages.create(model="mock-claude-keyed", max_tokens=16, messages=user("key check"))
    assert msg.content[0].text == "key check"
    recorded = mock.requests()
    assert recorded["calls"] == 1
    req = recorded["requests"][0]
    assert req["path"].endswith("/v1/messages")
    headers = [(k.lower(), v) for k, v in req["headers"]]
    assert [v for k, v in headers if k == "x-api-key"] == [gateway.provider_key]
    for k, v in headers:
        assert gateway.key not in v, f"gateway key leaked upstream in header {k}"
    assert gateway.key not in req["body"]
