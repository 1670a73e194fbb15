"""The official `openai` Python SDK against the gateway (mock upstream)."""

from __future__ import annotations

import json
import math
import struct
import time

import openai
import pytest


def directive(**script) -> str:
    """A user message that scripts the mock for this one call."""
    return "MOCK:" + json.dumps(script)


def out_tokens(text: str) -> int:
    """The mock's output-token count for a reply."""
    return max(1, math.ceil(len(text) / 4))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_embedding(text: str) -> list[float]:
    """The mock's deterministic 8-float embedding (FNV-1a, see mock.rs)."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001B3) & mask
    out = []
    for k in range(8):
        r = k * 8
        rot = ((h << r) | (h >> (64 - r))) & mask if r else h
        v = rot & 0xFFFF
        out.append(f32(f32(f32(f32(float(v)) / 65535.0) * 2.0) - 1.0))
    return out


# --------------------------------------------------------------- chat ----


def test_chat_non_streaming_echo(oai):
    text = "Hello TapPass, echo this exact sentence."
    resp = oai.chat.completions.create(model="mock-gpt", messages=user(text))
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens == out_tokens(text)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_streaming_text_without_usage(oai, mock):
    text = "Streaming through the gateway, fragment by fragment: done."
    stream = oai.chat.completions.create(model="mock-gpt", messages=user(text), stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # The mock streams 8 characters per event: the text arrives in pieces.
    assert len(deltas) == math.ceil(len(text) / 8)
    assert "".join(deltas) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # The gateway asked upstream for usage (to account for it) ...
    upstream = json.loads(mock.requests()["requests"][-1]["body"])
    assert upstream["stream_options"]["include_usage"] is True
    # ... but the client did not ask for it: the usage chunk must not reach it.
    assert [c for c in chunks if not c.choices] == []
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_chat_streaming_with_include_usage(oai):
    text = "Count my tokens, please."
    stream = oai.chat.completions.create(
        model="mock-gpt", messages=user(text), stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == out_tokens(text)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # Exactly one usage chunk, and it is the last one.
    assert [c for c in chunks if c.usage is not None] == [last]


def test_chat_streaming_tool_call_fragments(oai):
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "detail": {"wind": True}}
    args_text = json.dumps(args)
    stream = oai.chat.completions.create(
        model="mock-gpt",
        messages=user(directive(tool_call={"name": "get_weather", "arguments": args_text}, chunk_size=3)),
        tools=[{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }],
        stream=True,
    )
    calls: dict[int, dict] = {}
    fragments = 0
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                fragments += 1
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == args
    assert calls[0]["arguments"] == args_text
    assert fragments == math.ceil(len(args_text) / 3)
    assert finish == "tool_calls"


def test_chat_non_streaming_tool_call(oai):
    args = {"query": "tappass", "limit": 5}
    resp = oai.chat.completions.create(
        model="mock-gpt",
        messages=user(directive(tool_call={"name": "search", "arguments": json.dumps(args)})),
    )
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert len(msg.tool_calls) == 1
    assert msg.tool_calls[0].function.name == "search"
    assert json.loads(msg.tool_calls[0].function.arguments) == args


# ----------------------------------------------------------- responses ---


def test_responses_non_streaming(oai):
    text = "Responses API, non-streaming."
    resp = oai.responses.create(model="mock-gpt", input=text)
    assert resp.status == "completed"
    assert resp.output_text == text
    assert resp.usage is not None
    assert resp.usage.input_tokens > 0
    assert resp.usage.output_tokens == out_tokens(text)


def test_responses_streaming(oai):
    text = "Responses API streaming, joined deltas must match."
    stream = oai.responses.create(model="mock-gpt", input=text, stream=True)
    events = list(stream)
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == math.ceil(len(text) / 8)
    assert "".join(deltas) == text
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.failed" not in types
    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == text
    assert completed.usage is not None
    assert completed.usage.input_tokens > 0
    assert completed.usage.output_tokens == out_tokens(text)
    assert completed.usage.total_tokens == completed.usage.input_tokens + completed.usage.output_tokens


def test_responses_tool_call_non_streaming(oai):
    args = {"city": "Ghent", "unit": "celsius"}
    resp = oai.responses.create(
        model="mock-gpt",
        input=directive(tool_call={"name": "get_weather", "arguments": json.dumps(args)}),
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    )
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].call_id
    assert json.loads(calls[0].arguments) == args


def test_responses_tool_call_streaming(oai):
    args = {"ticket": "TP-42", "priority": "high", "tags": ["sdk", "stream"]}
    args_text = json.dumps(args)
    stream = oai.responses.create(
        model="mock-gpt",
        input=directive(tool_call={"name": "open_ticket", "arguments": args_text}, chunk_size=5),
        tools=[{"type": "function", "name": "open_ticket", "parameters": {"type": "object"}}],
        stream=True,
    )
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == math.ceil(len(args_text) / 5)
    assert json.loads("".join(deltas)) == args
    assert events[-1].type == "response.completed"
    items = [i for i in events[-1].response.output if i.type == "function_call"]
    assert [i.name for i in items] == ["open_ticket"]
    assert json.loads(items[0].arguments) == args


# ------------------------------------------------- embeddings, models ----


def test_embeddings_base64_default(oai):
    a1 = oai.embeddings.create(model="mock-gpt", input="governed gateway")
    a2 = oai.embeddings.create(model="mock-gpt", input="governed gateway")
    b = oai.embeddings.create(model="mock-gpt", input="a different text")
    va, va2, vb = a1.data[0].embedding, a2.data[0].embedding, b.data[0].embedding
    assert len(va) == 8 and len(vb) == 8
    assert va == va2
    assert va != vb
    assert va == expected_embedding("governed gateway")
    assert vb == expected_embedding("a different text")
    assert a1.usage.prompt_tokens > 0


def test_embeddings_batch_float(oai):
    inputs = ["one", "two", "three"]
    resp = oai.embeddings.create(model="mock-gpt", input=inputs, encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    for d, text in zip(resp.data, inputs):
        assert d.embedding == expected_embedding(text)


def test_models_list(oai):
    ids = [m.id for m in oai.models.list()]
    assert "mock-gpt" in ids
    assert "mock-claude" in ids


# -------------------------------------------------------------- errors ---


def test_wrong_gateway_key(gateway):
    client = gateway.openai(api_key="tp-wrong-key")
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="mock-gpt", messages=user("hi"))
    assert exc.value.status_code == 401


def test_unknown_model(oai):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="no-such-model", messages=user("hi"))
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"


def test_unknown_model_streaming(oai):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="no-such-model", messages=user("hi"), stream=True)
    assert exc.value.code == "model_not_found"


def test_upstream_503_passthrough(oai):
    with pytest.raises(openai.APIStatusError) as exc:
        oai.chat.completions.create(
            model="mock-gpt-faulty",
            messages=user(directive(status=503, error_message="mock says overloaded")),
        )
    assert exc.value.status_code == 503
    assert "mock says overloaded" in exc.value.message


def test_upstream_503_passthrough_streaming(oai):
    with pytest.raises(openai.APIStatusError) as exc:
        oai.chat.completions.create(
            model="mock-gpt-faulty",
            messages=user(directive(status=503, error_message="stream overloaded")),
            stream=True,
        )
    assert exc.value.status_code == 503
    assert "stream overloaded" in exc.value.message


def test_upstream_dies_mid_stream_chat(gateway):
    client = gateway.openai(timeout=10)
    reply = "abcdefghijklmnopqrstuvwxyz0123456789"
    started = time.monotonic()
    got = ""
    stream = client.chat.completions.create(
        model="mock-gpt-faulty",
        messages=user(directive(reply=reply, chunk_size=4, die_after_events=4)),
        stream=True,
    )
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    assert not isinstance(exc.value, openai.APITimeoutError)
    assert time.monotonic() - started < 10
    assert reply.startswith(got) and len(got) < len(reply)


def test_upstream_dies_mid_stream_responses(gateway):
    client = gateway.openai(timeout=10)
    reply = "The Responses stream will be cut short."
    started = time.monotonic()
    stream = client.responses.create(
        model="mock-gpt-faulty",
        input=directive(reply=reply, chunk_size=4, die_after_events=5),
        stream=True,
    )
    events = list(stream)  # the failure arrives as an event, not an exception
    types = [e.type for e in events]
    assert time.monotonic() - started < 10
    assert "response.completed" not in types
    assert types[0] == "response.created"
    assert types[-1] == "response.failed", types
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.message
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert reply.startswith(text) and len(text) < len(reply)


def test_credentials_provider_key_sent_gateway_key_not(gateway, mock):
    client = gateway.openai()
    resp = client.chat.completions.create(model="mock-gpt-keyed", messages=user("who am I?"))
    assert resp.choices[0].message.content == "who am I?"
    recorded = mock.requests()
    assert recorded["calls"] == 1
    req = recorded["requests"][0]
    assert req["path"].endswith("/v1/chat/completions")
    headers = [(k.lower(), v) for k, v in req["headers"]]
    auth = [v for k, v in headers if k == "authorization"]
    assert auth == [f"Bearer {gateway.provider_key}"]
    for k, v in headers:
        assert gateway.key not in v, f"gateway key leaked upstream in header {k}"
    assert gateway.key not in req["body"]


def test_credentials_no_provider_key_gateway_key_not_forwarded(gateway, mock):
    client = gateway.openai()
    resp = client.chat.completions.create(model="mock-gpt", messages=user("keyless upstream"))
    assert resp.choices[0].message.content == "keyless upstream"
    recorded = mock.requests()
    assert recorded["calls"] == 1
    for k, v in recorded["requests"][0]["headers"]:
        assert gateway.key not in v, f"gateway key leaked upstream in header {k}"
