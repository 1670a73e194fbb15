"""Tool-call governance seen through the official SDKs: a tool call the
gateway refuses never reaches the SDK, streamed or not, and the stream ends
with an error the SDK understands; an allowed tool call arrives intact.

The gateway of this module has tool governance on (`guardrails.tools`); the
session-wide gateway of conftest has no guardrails.
"""

from __future__ import annotations

import json
import os

import anthropic
import openai
import pytest

from conftest import (
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    Gateway,
    binary,
    free_port,
    gateway_config,
    http_get_ok,
    start,
    tcp_open,
    wait_until,
)

GUARDRAILS = """\
guardrails:
  injection: off
  tools_deny: ['shell_*']
  tools:
    schemas: {finance: [read], pii_archive: []}
"""

DENIED_ARGS = json.dumps({"cmd": "rm -rf /tmp/x"})
ALLOWED_ARGS = json.dumps({"schema": "finance", "sql": "select 1"})


def directive(**script) -> str:
    return "MOCK:" + json.dumps(script)


@pytest.fixture(scope="module")
def governed(workdir, mock_llm):
    exe = binary("tappass-gateway")
    port, admin_port = free_port(), free_port()
    text = gateway_config(port, admin_port, mock_llm.port) + GUARDRAILS
    config = workdir / "gateway-tools.yaml"
    config.write_text(text)
    env = dict(os.environ)
    env[PROVIDER_KEY_ENV] = PROVIDER_KEY
    proc = start("tappass-gateway-tools", [str(exe), "--config", str(config)], workdir, env)
    try:
        wait_until(proc, f"admin GET /healthz on 127.0.0.1:{admin_port} -> 200",
                   lambda: http_get_ok(admin_port, "/healthz"))
        wait_until(proc, f"client listener on 127.0.0.1:{port}", lambda: tcp_open(port))
        gw = Gateway(port, admin_port, proc, config_text=text)
        yield gw
        for c in gw._clients:
            try:
                c.close()
            except Exception:
                pass
    finally:
        proc.stop()


def chat_tools():
    return [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("shell_exec", "postgres_query")
    ]


def responses_tools():
    return [{"type": "function", "name": n, "parameters": {"type": "object"}}
            for n in ("shell_exec", "postgres_query")]


def claude_tools():
    return [{"name": n, "input_schema": {"type": "object"}} for n in ("shell_exec", "postgres_query")]


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_chat_stream_denied_tool_call_never_reaches_the_sdk(governed, chunk_size):
    oai = governed.openai()
    stream = oai.chat.completions.create(
        model="mock-gpt", stream=True, tools=chat_tools(),
        messages=[{"role": "user", "content": directive(
            tool_call={"name": "shell_exec", "arguments": DENIED_ARGS}, chunk_size=chunk_size)}],
    )
    seen = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            seen.append(chunk)
    assert all(not (c.choices and c.choices[0].delta.tool_calls) for c in seen)
    assert "tool_denied" in str(err.value) or "tools_denied" in str(err.value)


def test_chat_non_stream_denied_tool_call_is_a_403(governed):
    oai = governed.openai()
    with pytest.raises(openai.PermissionDeniedError) as err:
        oai.chat.completions.create(
            model="mock-gpt", tools=chat_tools(),
            messages=[{"role": "user", "content": directive(
                tool_call={"name": "shell_exec", "arguments": DENIED_ARGS})}],
        )
    assert err.value.status_code == 403
    assert err.value.code == "tool_denied"


def test_chat_stream_allowed_tool_call_arrives_intact(governed):
    oai = governed.openai()
    stream = oai.chat.completions.create(
        model="mock-gpt", stream=True, tools=chat_tools(),
        extra_headers={"x-tappass-session": "sdk-allowed"},
        messages=[{"role": "user", "content": directive(
            tool_call={"name": "postgres_query", "arguments": ALLOWED_ARGS}, chunk_size=3)}],
    )
    name, args, finish = None, "", None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name = name or tc.function.name
                args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert (name, json.loads(args), finish) == ("postgres_query", json.loads(ALLOWED_ARGS), "tool_calls")


def test_responses_stream_denied_tool_call_ends_with_response_failed(governed):
    oai = governed.openai()
    events = list(oai.responses.create(
        model="mock-gpt", stream=True, tools=responses_tools(),
        input=directive(tool_call={"name": "shell_exec", "arguments": DENIED_ARGS}, chunk_size=2),
    ))
    types = [e.type for e in events]
    assert not any("function_call" in t for t in types), types
    assert types[-1] == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "tool_denied"


def test_responses_non_stream_denied_tool_call_is_a_403(governed):
    oai = governed.openai()
    with pytest.raises(openai.PermissionDeniedError) as err:
        oai.responses.create(
            model="mock-gpt", tools=responses_tools(),
            input=directive(tool_call={"name": "shell_exec", "arguments": DENIED_ARGS}),
        )
    assert err.value.code == "tool_denied"


def test_messages_stream_denied_tool_call_never_reaches_the_sdk(governed):
    claude = governed.anthropic()
    seen = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with claude.messages.stream(
            model="mock-claude", max_tokens=64, tools=claude_tools(),
            messages=[{"role": "user", "content": directive(
                tool_call={"name": "shell_exec", "arguments": DENIED_ARGS}, chunk_size=2)}],
        ) as stream:
            for event in stream:
                seen.append(event)
    assert not any(getattr(e, "type", "") in ("content_block_start", "input_json") for e in seen), seen
    assert "tools_denied" in str(err.value)


def test_messages_non_stream_denied_tool_call_is_a_403(governed):
    claude = governed.anthropic()
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        claude.messages.create(
            model="mock-claude", max_tokens=64, tools=claude_tools(),
            messages=[{"role": "user", "content": directive(
                tool_call={"name": "shell_exec", "arguments": DENIED_ARGS})}],
        )
    assert err.value.status_code == 403


def test_messages_stream_allowed_tool_call_arrives_intact(governed):
    claude = governed.anthropic()
    with claude.messages.stream(
        model="mock-claude", max_tokens=64, tools=claude_tools(),
        extra_headers={"x-tappass-session": "sdk-allowed-claude"},
        messages=[{"role": "user", "content": directive(
            tool_call={"name": "postgres_query", "arguments": ALLOWED_ARGS}, chunk_size=4)}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert (block.type, block.name, block.input) == ("tool_use", "postgres_query", json.loads(ALLOWED_ARGS))
