"""Session fixtures: a live tappass-mock-llm and a tappass-gateway in front of it.

Both processes bind to 127.0.0.1 on free ports, log to files in a temporary
directory, and are killed at the end of the session (also when setup fails).
The binaries are taken from $TAPPASS_BIN_DIR, by default
${CARGO_TARGET_DIR:-~/.cache/tappass/target}/debug.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The SDKs read these; a developer's real settings must not leak into the
# suite (e.g. ANTHROPIC_AUTH_TOKEN adds a second Authorization header).
for _var in list(os.environ):
    if _var.startswith(("OPENAI_", "ANTHROPIC_")):
        del os.environ[_var]

GATEWAY_KEY = "tp-sdk-test-key-3f9c1e"
# Keys of their own for the budget tests, so that their limits touch no
# other test.
BUDGET_KEYS = {"budget-rate": "tp-sdk-budget-rate-7a1d", "budget-tokens": "tp-sdk-budget-tokens-52be"}
PROVIDER_KEY = "sk-provider-test"
PROVIDER_KEY_ENV = "TAPPASS_TEST_PROVIDER_KEY"
MAX_BODY = 262144
READY_TIMEOUT = 20.0
CLIENT_TIMEOUT = 15.0


def bin_dir() -> Path:
    explicit = os.environ.get("TAPPASS_BIN_DIR")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/tappass/target")
    return Path(target) / "debug"


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{name} not found at {path}: build it first, or point TAPPASS_BIN_DIR "
            f"at the directory holding tappass-gateway and tappass-mock-llm",
            pytrace=False,
        )
    return path


_LOWEST_PORT = 10_000
_next_port: int | None = None


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, below the kernel's ephemeral
    range (so no port-0 bind or outgoing connection takes it before the
    server binds it) and not handed out before by this session."""
    global _next_port
    high = _ephemeral_start()
    if high - _LOWEST_PORT < 1_000:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    span = high - _LOWEST_PORT
    candidate = _next_port or _LOWEST_PORT + (os.getpid() * 7919) % span
    for _ in range(span):
        port = candidate
        candidate = port + 1 if port + 1 < high else _LOWEST_PORT
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port = candidate
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {_LOWEST_PORT}..{high}")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return text[-limit:] if text else "(empty)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    def describe(self) -> str:
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited with code {rc}"
        return (
            f"{self.name} ({state})\n--- stderr ---\n{_tail(self.stderr)}"
            f"\n--- stdout ---\n{_tail(self.stdout)}"
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def start(name: str, argv: list[str], workdir: Path, env: dict | None = None) -> Proc:
    out = workdir / f"{name}.stdout.log"
    err = workdir / f"{name}.stderr.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen(
            argv, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, cwd=workdir
        )
    return Proc(name, popen, out, err)


def wait_until(proc: Proc, what: str, probe) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited before {what}\n{proc.describe()}", pytrace=False)
        try:
            if probe():
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    pytest.fail(
        f"{proc.name}: {what} not reached within {READY_TIMEOUT:.0f}s (last error: {last})\n"
        f"{proc.describe()}",
        pytrace=False,
    )


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_get_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


@dataclass
class RawResponse:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = CLIENT_TIMEOUT) -> RawResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


@dataclass
class MockLlm:
    port: int
    proc: Proc

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        r = raw_request(self.port, "POST", "/__mock/reset", b"")
        assert r.status == 204, r

    def script(self, scripts: list[dict]) -> None:
        r = raw_request(self.port, "POST", "/__mock/script", json.dumps(scripts).encode(),
                        {"content-type": "application/json"})
        assert r.status == 204, r

    def requests(self) -> dict:
        r = raw_request(self.port, "GET", "/__mock/requests")
        assert r.status == 200, r
        return r.json()


@dataclass
class Gateway:
    port: int
    admin_port: int
    proc: Proc
    key: str = GATEWAY_KEY
    provider_key: str = PROVIDER_KEY
    max_body: int = MAX_BODY
    config_text: str = ""
    _clients: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def openai(self, api_key: str | None = None, **kw):
        import openai

        client = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=api_key or self.key,
            max_retries=0, timeout=kw.pop("timeout", CLIENT_TIMEOUT), **kw,
        )
        self._clients.append(client)
        return client

    def anthropic(self, api_key: str | None = None, **kw):
        import anthropic

        # The Anthropic SDK appends /v1/... itself.
        client = anthropic.Anthropic(
            base_url=self.url, api_key=api_key or self.key,
            max_retries=0, timeout=kw.pop("timeout", CLIENT_TIMEOUT), **kw,
        )
        self._clients.append(client)
        return client

    def raw(self, method: str, path: str, body: bytes | str | None = None,
            headers: dict | None = None, auth: bool = True, **kw) -> RawResponse:
        h = {}
        if auth:
            h["authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        if isinstance(body, str):
            body = body.encode()
        return raw_request(self.port, method, path, body, h, **kw)

    def describe(self) -> str:
        return self.proc.describe()


def gateway_config(port: int, admin_port: int, mock_port: int) -> str:
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    key_hash = hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()
    budget_keys = "".join(
        f"  - name: {name}\n    sha256: {hashlib.sha256(key.encode()).hexdigest()}\n"
        for name, key in BUDGET_KEYS.items()
    )
    # Providers used by the error tests get a breaker that never opens, so
    # scripted upstream failures cannot affect the other tests.
    never_open = "    circuit_breaker: { failure_threshold: 1000000, cooldown_ms: 1 }\n"
    return f"""\
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
graceful_shutdown_seconds: 1
limits: {{ max_request_body_bytes: {MAX_BODY} }}
api_keys:
  - name: tests
    sha256: {key_hash}
{budget_keys}budgets:
  scopes:
    api_key:budget-rate: {{ requests_per_minute: 2 }}
    api_key:budget-tokens: {{ tokens_per_day: 1000000 }}
providers:
  - name: mock
    kind: openai-compatible
    base_url: {upstream}
  - name: mock-anthropic
    kind: anthropic
    base_url: {upstream}
  - name: mock-keyed
    kind: openai-compatible
    base_url: {upstream}
    api_key_env: {PROVIDER_KEY_ENV}
  - name: mock-anthropic-keyed
    kind: anthropic
    base_url: {upstream}
    api_key_env: {PROVIDER_KEY_ENV}
  - name: mock-faulty
    kind: openai-compatible
    base_url: {upstream}
{never_open}  - name: mock-anthropic-faulty
    kind: anthropic
    base_url: {upstream}
{never_open}models:
  - name: mock-gpt
    provider: mock
  - name: mock-claude
    provider: mock-anthropic
  - name: mock-gpt-keyed
    provider: mock-keyed
  - name: mock-claude-keyed
    provider: mock-anthropic-keyed
  - name: mock-gpt-faulty
    provider: mock-faulty
  - name: mock-claude-faulty
    provider: mock-anthropic-faulty
"""


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="tappass-sdk-"))
    yield d
    if os.environ.get("TAPPASS_KEEP_LOGS"):
        print(f"\nlogs kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def mock_llm(workdir):
    exe = binary("tappass-mock-llm")
    port = free_port()
    proc = start("tappass-mock-llm", [str(exe), "--listen", f"127.0.0.1:{port}"], workdir)
    try:
        wait_until(proc, f"listening on 127.0.0.1:{port}", lambda: tcp_open(port))
        mock = MockLlm(port, proc)
        wait_until(proc, "GET /__mock/requests answering", lambda: mock.requests() is not None)
        yield mock
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def gateway(workdir, mock_llm):
    exe = binary("tappass-gateway")
    port, admin_port = free_port(), free_port()
    text = gateway_config(port, admin_port, mock_llm.port)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items()}
    env[PROVIDER_KEY_ENV] = PROVIDER_KEY
    proc = start("tappass-gateway", [str(exe), "--config", str(config)], workdir, env)
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


@pytest.fixture
def mock(mock_llm):
    """The mock, with its script queue and recorded requests cleared."""
    mock_llm.reset()
    return mock_llm


@pytest.fixture
def oai(gateway):
    return gateway.openai()


@pytest.fixture
def claude(gateway):
    return gateway.anthropic()
