"""Raw HTTP requests the SDKs cannot send (bad bodies, headers, paths)."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from conftest import binary, raw_request

JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"


def assert_openai_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status, (resp.status, resp.body[:500])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    return err


def chat_body(**extra) -> bytes:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return json.dumps(body).encode()


def test_valid_raw_request_succeeds(gateway):
    # Control for the error tests below: the same request, well-formed, works.
    r = gateway.raw("POST", CHAT, chat_body(), JSON)
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"] == "hi"


def test_x_api_key_header_is_accepted(gateway):
    r = gateway.raw("POST", CHAT, chat_body(), {**JSON, "x-api-key": gateway.key}, auth=False)
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"] == "hi"


def test_missing_key_is_401(gateway):
    r = gateway.raw("POST", CHAT, chat_body(), JSON, auth=False)
    assert_openai_error(r, 401)


def test_missing_model_is_400(gateway):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    err = assert_openai_error(gateway.raw("POST", CHAT, body, JSON), 400)
    assert "model" in err["message"].lower()


def test_malformed_json_is_400(gateway):
    assert_openai_error(gateway.raw("POST", CHAT, b'{"model": "mock-gpt", messages: nope}', JSON), 400)


def test_truncated_json_is_400(gateway):
    full = chat_body()
    assert_openai_error(gateway.raw("POST", CHAT, full[: len(full) // 2], JSON), 400)


def test_truncated_json_anthropic_is_400_anthropic_shape(gateway):
    full = json.dumps({"model": "mock-claude", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    r = gateway.raw("POST", "/v1/messages", full[:-3], {**JSON, "anthropic-version": "2023-06-01"})
    assert r.status == 400, r.body
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


def test_wrong_content_type_is_415(gateway):
    r = gateway.raw("POST", CHAT, chat_body(), {"content-type": "text/plain"})
    assert_openai_error(r, 415)


def test_body_over_limit_is_413(gateway):
    padding = "x" * (gateway.max_body + 1024)
    body = chat_body(messages=[{"role": "user", "content": padding}])
    assert len(body) > gateway.max_body
    assert_openai_error(gateway.raw("POST", CHAT, body, JSON), 413)


def test_body_just_under_limit_is_accepted(gateway):
    # The limit is the limit: a large body under it goes through.
    text = "y" * (gateway.max_body - 1024)
    r = gateway.raw("POST", CHAT, chat_body(messages=[{"role": "user", "content": text}]), JSON)
    assert r.status == 200, r.body[:300]
    assert r.json()["choices"][0]["message"]["content"] == text


def test_unknown_path_is_404_openai_shape(gateway):
    assert_openai_error(gateway.raw("GET", "/v1/definitely-not-a-route"), 404)
    assert_openai_error(gateway.raw("POST", "/v2/chat/completions", chat_body(), JSON), 404)


def test_unknown_model_raw_openai_shape(gateway):
    r = gateway.raw("POST", CHAT, chat_body(model="nope-model"), JSON)
    assert_openai_error(r, 404, code="model_not_found")


def test_admin_healthz(gateway):
    r = raw_request(gateway.admin_port, "GET", "/healthz")
    assert r.status == 200
    assert r.body.strip() == b"ok"


def test_hash_key_matches_sha256(gateway):
    exe = binary("tappass-gateway")
    out = subprocess.run([str(exe), "--hash-key", gateway.key], capture_output=True,
                         text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(gateway.key.encode()).hexdigest()
