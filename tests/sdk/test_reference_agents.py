"""The reference agents' policies (`policies/examples/`) enforced by a
gateway, seen through the official SDKs.

The module's gateway reads the four agents' Compiled Policies from a
directory (`local_policies`): each is compiled from the example policy tree
and signed with the `tappass` CLI, and must equal the agent's golden
`compiled.json`, so the gateway enforces exactly the reference policies.
Each agent calls with an API key named after it (the key's name is the
caller's agent). The mock plays the model: it is scripted to emit one tool
call, and the test checks what the SDK receives — the tool call with its
arguments unchanged, or the refusal — in each of OpenAI chat completions,
Anthropic messages and OpenAI Responses, streamed and not.

Scenarios (from each agent's `agent.yaml`, its project and org, and
`golden/<agent>/preview.txt`):

- catalog-steward: `collibra.update_asset` needs write access to the
  schema it names (`domain`); `customers` is `read_write`, `pii_archive` is
  `deny` (`schemas_acl`). `postgres.execute` is off its allow-list (and
  denied by its project).
- refund-bot: `stripe.create_refund` up to the ceiling of 1000 (the agent
  lowers its project's 5000); its Rego asks for a person's approval above
  200 (`human_approval`, approved on the admin listener); at most 20 tool
  calls a minute.
- support-emailer: `gmail.send` with a body of at most 20000 bytes.
- code-reviewer: reads and comments on pull requests; it may not push.

Every tool call the gateway sees counts against the agent's
`tool_calls_per_minute` (refund-bot: 20), denied ones too: the refund-bot
scenarios stay within it, and its last test spends the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import (
    Gateway,
    binary,
    free_port,
    http_get_ok,
    raw_request,
    start,
    tcp_open,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY_TREE = ROOT / "policies/examples/policy"
GOLDEN = ROOT / "policies/examples/golden"
AGENTS = ("catalog-steward", "refund-bot", "support-emailer", "code-reviewer")
AGENT_KEYS = {a: f"tp-sdk-ref-{a}-key" for a in AGENTS}
OPENAI_MODEL = "ref-gpt"
ANTHROPIC_MODEL = "ref-claude"
# Large enough that the output reserved for a call covers a 20 KB tool call
# (the gateway ends a stream whose output passes its reservation).
MAX_TOKENS = 16000
# Agents whose compliance tags (GDPR) ask providers not to keep the call.
NO_TRAIN = {"catalog-steward", "support-emailer"}

COMBOS = [(fmt, stream) for fmt in ("chat", "messages", "responses") for stream in (False, True)]
COMBO_IDS = [f"{fmt}-{'stream' if stream else 'whole'}" for fmt, stream in COMBOS]
UPSTREAM_PATH = {"chat": "/v1/chat/completions", "messages": "/v1/messages",
                 "responses": "/v1/responses"}

combos = pytest.mark.parametrize(("fmt", "stream"), COMBOS, ids=COMBO_IDS)


def args_text(args: dict) -> str:
    return json.dumps(args, separators=(",", ":"))


# ---- the gateway ----


@dataclass
class RefGateway:
    gw: Gateway
    policies: dict  # agent -> signed Compiled Policy payload

    def admin(self, path: str):
        r = raw_request(self.gw.admin_port, "GET", path)
        assert r.status == 200, r
        return r.json()

    def limit(self, agent: str, name: str) -> dict:
        [row] = [r for r in self.admin("/budgets")["limits"]
                 if r["scope"] == f"agent:{agent}" and r["limit"] == name]
        return row


def run_cli(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(argv)}\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def ref(workdir, mock_llm):
    """A gateway enforcing the four reference agents' signed policies."""
    cli = str(binary("tappass"))
    exe = binary("tappass-gateway")
    base = workdir / "reference-agents"
    policies_dir = base / "policies"
    policies_dir.mkdir(parents=True)
    secret = base / "policy.key"
    run_cli([cli, "keys", "generate", "--out", str(secret)])
    payloads = {}
    for agent in AGENTS:
        out = policies_dir / f"{agent}.json"
        run_cli([cli, "policy", "compile", "--agent", agent, "--sign-key", str(secret),
                 "--out", str(out), str(POLICY_TREE)])
        signed = json.loads(out.read_text())
        golden = json.loads((GOLDEN / agent / "compiled.json").read_text())
        assert signed["payload"] == golden, f"{agent}: the compiled policy is not the golden one"
        payloads[agent] = signed["payload"]

    port, admin_port = free_port(), free_port()
    keys = "".join(
        f"  - name: {agent}\n    sha256: {hashlib.sha256(key.encode()).hexdigest()}\n"
        for agent, key in AGENT_KEYS.items()
    )
    upstream = f"http://127.0.0.1:{mock_llm.port}/v1"
    # The mock is on this machine, so `network.allow_domains` lets it pass
    # (`upstream_allowed`); the policies' dollar budgets need model prices.
    text = f"""\
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
graceful_shutdown_seconds: 1
api_keys:
{keys}local_policies:
  dir: {policies_dir}
  public_key_file: {secret}.pub
budgets:
  prices:
    {OPENAI_MODEL}: {{ input: 1.0, output: 2.0 }}
    {ANTHROPIC_MODEL}: {{ input: 1.0, output: 2.0 }}
providers:
  - name: mock
    kind: openai-compatible
    base_url: {upstream}
  - name: mock-anthropic
    kind: anthropic
    base_url: {upstream}
models:
  - name: {OPENAI_MODEL}
    provider: mock
  - name: {ANTHROPIC_MODEL}
    provider: mock-anthropic
"""
    config = base / "gateway.yaml"
    config.write_text(text)
    proc = start("tappass-gateway-reference", [str(exe), "--config", str(config)], workdir,
                 dict(os.environ))
    try:
        wait_until(proc, f"admin GET /healthz on 127.0.0.1:{admin_port} -> 200",
                   lambda: http_get_ok(admin_port, "/healthz"))
        wait_until(proc, f"client listener on 127.0.0.1:{port}", lambda: tcp_open(port))
        gw = Gateway(port, admin_port, proc, key=AGENT_KEYS["catalog-steward"], config_text=text)
        yield RefGateway(gw, payloads)
        for c in gw._clients:
            try:
                c.close()
            except Exception:
                pass
    finally:
        proc.stop()
        # A call refused before the upstream leaves its script queued.
        mock_llm.reset()


# ---- one call, as the agent ----


@dataclass
class Emitted:
    """The tool call the SDK received."""

    name: str
    arguments: str | None  # the exact text, where the SDK exposes it
    parsed: dict


@dataclass
class Refused:
    """How the SDK saw the refusal."""

    exc: Exception | None  # what the SDK raised (None: a Responses stream)
    status: int | None
    code: str | None  # the error code, where the format carries one
    message: str
    leaked: list  # tool-call pieces the client received before the refusal


def tool_defs(fmt: str, name: str) -> list:
    schema = {"type": "object"}
    if fmt == "chat":
        return [{"type": "function", "function": {"name": name, "parameters": schema}}]
    if fmt == "responses":
        return [{"type": "function", "name": name, "parameters": schema}]
    return [{"name": name, "input_schema": schema}]


def call_as(ref: RefGateway, mock, agent: str, fmt: str, stream: bool, name: str, args: str,
            chunk_size: int = 7):
    """The mock emits the tool call `name(args)`; returns `Emitted` or
    `Refused` as the agent's SDK saw it."""
    mock.script([{"tool_call": {"name": name, "arguments": args}, "chunk_size": chunk_size}])
    key = AGENT_KEYS[agent]
    # A session per call: the loop guard counts repeats within a session.
    headers = {"x-tappass-session": f"ref-{agent}-{uuid.uuid4().hex}"}
    prompt = "Handle the next task."
    tools = tool_defs(fmt, name)
    if fmt == "chat":
        client = ref.gw.openai(api_key=key)
        kw = dict(model=OPENAI_MODEL, tools=tools, max_tokens=MAX_TOKENS, extra_headers=headers,
                  messages=[{"role": "user", "content": prompt}])
        if not stream:
            try:
                r = client.chat.completions.create(**kw)
            except openai.APIStatusError as e:
                return refused_openai(e, [])
            [tc] = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls"
            text = tc.function.arguments
            return Emitted(tc.function.name, text, json.loads(text))
        pieces, names, finish = [], [], None
        try:
            for chunk in client.chat.completions.create(stream=True, **kw):
                for c in chunk.choices:
                    for tc in c.delta.tool_calls or []:
                        if tc.function and tc.function.name:
                            names.append(tc.function.name)
                        pieces.append((tc.function.arguments or "") if tc.function else "")
                    finish = c.finish_reason or finish
        except openai.APIError as e:
            return refused_openai(e, names + pieces)
        assert finish == "tool_calls"
        text = "".join(pieces)
        return Emitted("".join(names), text, json.loads(text))
    if fmt == "responses":
        client = ref.gw.openai(api_key=key)
        kw = dict(model=OPENAI_MODEL, tools=tools, max_output_tokens=MAX_TOKENS,
                  extra_headers=headers, input=prompt)
        if not stream:
            try:
                r = client.responses.create(**kw)
            except openai.APIStatusError as e:
                return refused_openai(e, [])
            [item] = r.output
            assert item.type == "function_call"
            return Emitted(item.name, item.arguments, json.loads(item.arguments))
        try:
            events = list(client.responses.create(stream=True, **kw))
        except openai.APIStatusError as e:
            return refused_openai(e, [])
        types = [e.type for e in events]
        calls = [e for e in events if "function_call" in e.type
                 or (e.type == "response.output_item.added" and e.item.type == "function_call")]
        if types[-1] == "response.failed":
            err = events[-1].response.error
            return Refused(None, None, err.code, err.message, calls)
        assert types[-1] == "response.completed", types
        deltas = "".join(e.delta for e in events
                         if e.type == "response.function_call_arguments.delta")
        [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
        [item] = events[-1].response.output
        # The streamed fragments, the `.done` event and the final response
        # all carry the same text.
        assert deltas == done.arguments == item.arguments
        return Emitted(item.name, item.arguments, json.loads(item.arguments))
    # Anthropic messages
    client = ref.gw.anthropic(api_key=key)
    kw = dict(model=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS, tools=tools, extra_headers=headers,
              messages=[{"role": "user", "content": prompt}])
    if not stream:
        try:
            r = client.messages.create(**kw)
        except anthropic.APIStatusError as e:
            return refused_anthropic(e, [])
        [block] = r.content
        assert (block.type, r.stop_reason) == ("tool_use", "tool_use")
        return Emitted(block.name, None, block.input)
    seen = []
    try:
        with client.messages.stream(**kw) as s:
            for event in s:
                seen.append(event)
            final = s.get_final_message()
    except anthropic.APIStatusError as e:
        leaked = [ev for ev in seen if ev.type in ("content_block_start", "input_json")
                  or (ev.type == "content_block_delta" and ev.delta.type == "input_json_delta")]
        return refused_anthropic(e, leaked)
    [block] = final.content
    assert (block.type, final.stop_reason) == ("tool_use", "tool_use")
    text = "".join(ev.delta.partial_json for ev in seen
                   if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta")
    return Emitted(block.name, text, block.input)


def refused_openai(e: openai.APIError, leaked: list) -> Refused:
    status = getattr(e, "status_code", None)
    if status is not None:
        # A whole response: the gateway names the code in a header too.
        assert e.response.headers.get("x-tappass-error-code") == e.code, e.response.headers
    return Refused(e, status, e.code, e.message, leaked)


def refused_anthropic(e: anthropic.APIStatusError, leaked: list) -> Refused:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", {})
    code = None
    if e.status_code != 200:
        # A whole response carries the code in a header; the Anthropic
        # error body has only a type.
        code = e.response.headers.get("x-tappass-error-code")
    # A stream's error event arrives on a 200 response, as `event: error`.
    return Refused(e, e.status_code if e.status_code != 200 else None, code,
                   err.get("message", str(e)), leaked)


# ---- assertions ----


def upstream_calls(mock) -> list:
    return mock.requests()["requests"]


def assert_passes(ref, mock, agent, fmt, stream, name, args: dict, chunk_size: int = 7):
    """The call reaches the SDK unchanged, and the upstream got the request."""
    text = args_text(args)
    got = call_as(ref, mock, agent, fmt, stream, name, text, chunk_size)
    assert isinstance(got, Emitted), got
    assert got.name == name
    assert got.parsed == args
    if got.arguments is not None:
        assert got.arguments == text  # byte-identical
    [seen] = upstream_calls(mock)
    assert seen["path"] == UPSTREAM_PATH[fmt]
    body = json.loads(seen["body"])
    offered = [t.get("name") or t.get("function", {}).get("name") for t in body.get("tools", [])]
    assert offered == [name], body
    if fmt in ("chat", "responses"):
        # GDPR compliance tags turn on `enforce_no_train`.
        assert body.get("store") is (False if agent in NO_TRAIN else None), body
    return got


def assert_denied(ref, mock, agent, fmt, stream, name, args: dict, step: str, why: str,
                  chunk_size: int = 7, code: str = "tool_denied") -> Refused:
    """The model's call never reaches the SDK; the refusal names the step."""
    got = call_as(ref, mock, agent, fmt, stream, name, args_text(args), chunk_size)
    assert isinstance(got, Refused), f"the gateway let the call through: {got}"
    assert got.leaked == [], got.leaked
    assert f"the tool call `{name}` was refused by {step}" in got.message, got.message
    assert why in got.message, got.message
    if not stream:
        assert isinstance(got.exc, (openai.PermissionDeniedError, anthropic.PermissionDeniedError))
        assert (got.status, got.code) == (403, code)
    elif fmt == "chat":
        # The stream ends with `data: {"error": ...}`, which the SDK raises.
        assert isinstance(got.exc, openai.APIError) and got.code == code
    elif fmt == "responses":
        # ... with `response.failed`, which the SDK yields as its last event.
        assert got.exc is None and got.code == code
    else:
        # ... with `event: error` (type permission_error), which the SDK raises.
        assert isinstance(got.exc, anthropic.APIStatusError)
        assert got.exc.body["error"]["type"] == "permission_error", got.exc.body
    # The model did emit the call: the gateway refused it on the way back.
    assert len(upstream_calls(mock)) == 1
    return got


# ---- budgets ----


def test_the_reference_policies_set_the_agents_budgets(ref):
    # The limits each policy sets for its agent are the gateway's.
    assert ref.limit("refund-bot", "tool_calls_per_minute")["max"] == 20
    # org/budget.rego: agents that touch payment data get $500 a month.
    assert ref.limit("refund-bot", "dollars_per_month")["max"] == 500_000_000
    assert ref.limit("support-emailer", "tokens_per_day")["max"] == 1_000_000
    assert ref.limit("catalog-steward", "tool_calls_per_minute")["max"] == 60
    assert ref.limit("code-reviewer", "tool_calls_per_minute")["max"] == 30


# ---- catalog-steward ----

UPDATE = {"domain": "customers", "asset_id": "warehouse.customers.email",
          "description": "Contact address; owner: CRM team"}
DROP_PII_ARCHIVE = {"domain": "pii_archive", "asset_id": "archive.customers_2019",
                    "description": "Deprecated; drop"}


@combos
def test_catalog_steward_updates_an_asset_of_a_read_write_schema(ref, mock, fmt, stream):
    assert ref.policies["catalog-steward"]["tools"]["schemas_acl"]["customers"] == "read_write"
    assert_passes(ref, mock, "catalog-steward", fmt, stream, "collibra_update_asset", UPDATE)


@combos
def test_catalog_steward_drop_pii_archive_is_denied_by_schemas_acl(ref, mock, fmt, stream):
    assert_denied(ref, mock, "catalog-steward", fmt, stream, "collibra_update_asset",
                  DROP_PII_ARCHIVE, "schemas_acl",
                  "schema `pii_archive` grants none access, the tool needs read_write")


@combos
def test_catalog_steward_postgres_execute_is_denied(ref, mock, fmt, stream):
    # Off the agent's allow-list, and denied by its project (data): the
    # allow-list is checked first.
    assert "postgres.execute" in ref.policies["catalog-steward"]["tools"]["deny"]
    assert_denied(ref, mock, "catalog-steward", fmt, stream, "postgres_execute",
                  {"schema": "customers", "sql": "drop table customers"}, "tools_allowed",
                  "it is not on the allow-list")


# ---- refund-bot ----


def refund(amount: int) -> dict:
    return {"charge": "ch_3PqR2x", "amount": amount, "reason": "requested_by_customer"}


@combos
def test_refund_bot_refund_within_the_approval_threshold_passes(ref, mock, fmt, stream):
    assert_passes(ref, mock, "refund-bot", fmt, stream, "stripe_create_refund", refund(120))


@combos
def test_refund_bot_refund_above_the_ceiling_is_denied(ref, mock, fmt, stream):
    # The project allows 5000, the agent lowers it to 1000: lower wins.
    constraints = ref.policies["refund-bot"]["tools"]["constraints"]
    assert constraints["stripe.create_refund"]["max_amount"] == 1000
    assert_denied(ref, mock, "refund-bot", fmt, stream, "stripe_create_refund", refund(5000),
                  "tool_arg_validation", "`amount` is above the ceiling of 1000")


@combos
def test_refund_bot_refund_needing_approval_waits_for_a_person(ref, mock, fmt, stream):
    """refunds.rego answers `require_approval` for a refund above 200: the
    gateway evaluates the agent's Rego on the tool call (`rego_policy`) and
    refuses it with `approval_required` and an approval id
    (`human_approval`). In one combination an operator then approves it on
    the admin listener and the same call passes once. (Refund-bot may make
    20 tool calls a minute, refused ones included: the other combinations
    stop at the refusal.)"""
    rego = ref.policies["refund-bot"]["rego"]
    assert "data.tappass.runtime.refunds.decision" in rego["entrypoints"]
    [module] = [m for m in rego["modules"] if m["package"] == "data.tappass.runtime.refunds"]
    assert "approval_threshold := 200" in module["text"]
    got = assert_denied(ref, mock, "refund-bot", fmt, stream, "stripe_create_refund",
                        refund(450), "human_approval", "exceeds the approval threshold of 200",
                        code="approval_required")
    if (fmt, stream) != ("chat", False):
        return
    [approval] = re.findall(r"approval (apr-[0-9a-f]+)", got.message)
    listed = ref.admin("/approvals")["approvals"]
    assert [a["state"] for a in listed if a["id"] == approval] == ["pending"], listed
    r = raw_request(ref.gw.admin_port, "POST", f"/approvals/{approval}/approve", b"")
    assert r.status == 200, r
    mock.reset()
    assert_passes(ref, mock, "refund-bot", fmt, stream, "stripe_create_refund", refund(450))


# ---- support-emailer ----

LIMIT = 20000  # gmail.send max_content_bytes (agent.yaml)


def email(body_bytes: int) -> dict:
    line = "Thank you for your patience. Your replacement order has shipped today.\n"
    body = (line * (body_bytes // len(line) + 1))[:body_bytes]
    assert len(body.encode()) == body_bytes
    return {"to": "jane.doe@example.com", "subject": "Your ticket #4711", "body": body}


# Large fragments: a streamed tool call is held until it is complete, and
# the bytes held are bounded (`max_stream_hold_bytes`, 1 MiB by default).


@combos
def test_support_emailer_sends_an_email_at_the_content_limit(ref, mock, fmt, stream):
    c = ref.policies["support-emailer"]["tools"]["constraints"]["gmail.send"]
    assert (c["content_param"], c["max_content_bytes"]) == ("body", LIMIT)
    assert_passes(ref, mock, "support-emailer", fmt, stream, "gmail_send", email(LIMIT),
                  chunk_size=1000)


@combos
def test_support_emailer_email_over_the_content_limit_is_denied(ref, mock, fmt, stream):
    assert_denied(ref, mock, "support-emailer", fmt, stream, "gmail_send", email(LIMIT + 1),
                  "tool_arg_validation", f"`body` is larger than {LIMIT} bytes", chunk_size=1000)


# ---- code-reviewer ----


@combos
def test_code_reviewer_comments_on_a_pull_request(ref, mock, fmt, stream):
    assert_passes(ref, mock, "code-reviewer", fmt, stream, "github_comment_pr",
                  {"repo": "acme/shop", "pr": 42, "body": "Consider a test for the empty cart."})


@combos
def test_code_reviewer_cannot_push(ref, mock, fmt, stream):
    # It reads and comments (tools.allow); github.push writes to the
    # repository (file_write, sor_write).
    assert ref.policies["code-reviewer"]["tools"]["allow"] == [
        "fs.read", "github.comment_pr", "github.read_repo"]
    assert_denied(ref, mock, "code-reviewer", fmt, stream, "github_push",
                  {"repo": "acme/shop", "branch": "main", "force": True}, "tools_allowed",
                  "it is not on the allow-list")


# ---- refund-bot's tool-call budget (keep last: it spends the budget) ----


def test_refund_bot_tool_calls_per_minute_refuses_once_spent(ref, mock):
    """Every tool call the model emits counts, denied ones too (here:
    `postgres.execute`, off refund-bot's allow-list); once the 20 of the
    minute are spent, the next call is refused before the upstream is
    called, in each format. (The minute slides: a call may be let through
    again as the previous minute's calls weigh less, so each format calls
    until it is refused.)"""
    assert ref.limit("refund-bot", "tool_calls_per_minute")["max"] == 20
    pg = args_text({"sql": "update refunds set amount = 0"})
    for fmt, stream in COMBOS:
        for _ in range(30):
            mock.reset()
            got = call_as(ref, mock, "refund-bot", fmt, stream, "postgres_execute", pg)
            assert isinstance(got, Refused), got
            if got.status == 429:
                break
            assert "the tool call `postgres_execute` was refused by tools_allowed" in got.message
        else:
            pytest.fail(f"{fmt}: the tool-call budget never refused a call")
        assert isinstance(got.exc, (openai.RateLimitError, anthropic.RateLimitError)), got
        assert got.code == "rate_limited", got
        assert re.search(r"agent:refund-bot tool_calls_per_minute exceeded: \d+ of 20",
                         got.message), got.message
        assert upstream_calls(mock) == []
