"""LLM backends for the FDKT server: one small interface, a registry of implementations.

Every backend turns a batch of chat conversations (lists of ``{"role", "content"}`` messages)
into one :class:`Generation` per conversation, in the same order, and keeps running
:class:`LLMStats` (tokens generated, wall-clock seconds) so the server can report tokens/s.

Backends:

* ``"transformers"`` — :class:`TransformersLLM`, an in-process Hugging Face causal LM
  (the default, SmolLM2-135M-Instruct on CPU; bf16 on a GPU that supports it).
* ``"openai"`` — :class:`OpenAIChatLLM`, any OpenAI-compatible chat-completions endpoint
  (vLLM server, llama.cpp server, Ollama, hosted APIs) over HTTP.
* ``"vllm"`` — :class:`VLLMLLM`, in-process vLLM (GPU machines with ``vllm`` installed).
* ``"scripted"`` — :class:`ScriptedLLM`, canned answers for tests and dry runs.

:func:`make_llm` builds a backend by name and caches it per process, so a server that is
asked for the same LLM in every round loads the weights once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


class LLMError(RuntimeError):
    """An LLM backend could not produce an answer (endpoint down, retries exhausted, ...)."""


@dataclass
class Generation:
    """One answer: the generated text (prompt excluded) and how many tokens were generated."""

    text: str
    num_tokens: int


@dataclass
class SamplingParams:
    """Decoding settings for one ``generate`` call.

    ``temperature <= 0`` means greedy decoding. ``seed`` makes sampling reproducible where the
    backend supports it (None = nondeterministic).
    """

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.9
    seed: int | None = None


@dataclass
class LLMStats:
    """Cumulative counters of a backend; thread-safe updates via :meth:`add`."""

    calls: int = 0
    conversations: int = 0
    tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, conversations: int, tokens: int, seconds: float) -> None:
        """Record one ``generate`` call."""
        with self._lock:
            self.calls += 1
            self.conversations += conversations
            self.tokens += tokens
            self.seconds += seconds

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second over all calls (0.0 before the first call)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def snapshot(self) -> dict[str, float]:
        """JSON-safe copy of the counters."""
        with self._lock:
            d: dict[str, float] = {
                "calls": self.calls,
                "conversations": self.conversations,
                "tokens": self.tokens,
                "seconds": self.seconds,
            }
        d["tokens_per_s"] = self.tokens_per_s
        return d


@runtime_checkable
class LLM(Protocol):
    """What the server needs from an LLM.

    ``generate`` returns exactly one :class:`Generation` per conversation, in input order, and
    raises :class:`LLMError` when it cannot. ``stats`` accumulates tokens and seconds.
    """

    stats: LLMStats

    def generate(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[Generation]: ...


# --------------------------------------------------------------------------------------------
# In-process Hugging Face transformers
# --------------------------------------------------------------------------------------------


def default_torch_dtype() -> Any:
    """bf16 on a CUDA GPU that supports it, fp32 otherwise (CPU bf16 matmuls are slow)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class TransformersLLM:
    """Batched generation with a loaded Hugging Face causal LM and its chat template.

    Prompts are rendered with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``,
    sorted by length and LEFT-padded into batches of ``batch_size`` (decoder-only models must
    see the prompt flush against the generated tokens). With a seed, each batch reseeds a forked
    torch RNG, so the same inputs and seed give the same outputs without touching global state.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stats = LLMStats()
        # The loader shares one tokenizer per process; set a pad token only if it has none and
        # pass padding_side per call instead of mutating it (training code pads on the right).
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()

    @classmethod
    def from_name(
        cls, name: str = "smollm2-135m-instruct", dtype: Any = None, batch_size: int = 16
    ) -> TransformersLLM:
        """Load ``name`` with the project's model loader (:func:`fdkt_flwr.models.load_causal_lm`).

        ``dtype=None`` picks bf16 on a supporting GPU and fp32 on CPU; the model is moved to the
        GPU when one is available.
        """
        import torch

        from fdkt_flwr.models import load_causal_lm

        dtype = dtype if dtype is not None else default_torch_dtype()
        model, tokenizer = load_causal_lm(name, dtype=dtype)
        if torch.cuda.is_available() and next(model.parameters()).device.type != "cuda":
            model = model.to("cuda")
        return cls(model, tokenizer, batch_size=batch_size)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(int(i) for i in source)
        return ids

    def generate(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[Generation]:
        """Generate one answer per conversation (see class docstring for batching and seeding)."""
        import torch

        if not conversations:
            return []
        start = time.perf_counter()
        prompts = [
            self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            for conv in conversations
        ]
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        device = next(self.model.parameters()).device
        eos_ids = self._eos_ids()
        pad_id = self.tokenizer.pad_token_id
        do_sample = params.temperature > 0
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": pad_id,
        }
        if do_sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            # Neutralise sampling defaults from generation_config so greedy runs warn-free.
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        total_tokens = 0
        for b, lo in enumerate(range(0, len(order), self.batch_size)):
            idx = order[lo : lo + self.batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                padding_side="left",  # decoder-only: the prompt must end where generation starts
                add_special_tokens=False,  # the chat template already adds them
            ).to(device)
            with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed + b)
                out = self.model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for row, i in zip(new, idx, strict=True):
                n = len(row)
                for j, tok in enumerate(row):
                    if tok in eos_ids:
                        n = j + 1  # count the EOS token, ignore the padding after it
                        break
                total_tokens += n
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                results[i] = Generation(text=text.strip(), num_tokens=n)
        self.stats.add(len(prompts), total_tokens, time.perf_counter() - start)
        return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP endpoint
# --------------------------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIChatLLM:
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Conversations are sent concurrently (at most ``max_concurrency`` in flight). Each request
    is tried up to ``max_retries`` times in total, with exponential backoff (honouring a
    ``Retry-After`` header) on HTTP 408/409/425/429/5xx, timeouts and connection errors; other
    HTTP errors fail at once. When a request cannot be served, :class:`LLMError` is raised with a
    single line such as ``LLM endpoint http://host:8000/v1 failed after 3 tries: HTTP 503``.

    The API key is read from the environment variable ``api_key_env`` (none = no
    ``Authorization`` header, fine for local servers); it is never logged or shown in ``repr``.
    Token counts come from ``usage.completion_tokens`` (a whitespace word count if absent).
    Per-conversation seeds are ``seed + index`` so identical prompts still differ.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(1, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        self.stats = LLMStats()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=self.max_concurrency),
        )

    def __repr__(self) -> str:
        return f"OpenAIChatLLM(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date; fall back to exponential backoff
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)  # jitter spreads concurrent retries

    def _one(
        self, conversation: Conversation, params: SamplingParams, seed: int | None
    ) -> Generation:
        import httpx

        body: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": params.max_new_tokens,
            "temperature": max(0.0, params.temperature),
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            **self.extra_body,
        }
        if seed is not None:
            body["seed"] = seed
        url = f"{self.base_url}/chat/completions"
        reason = "no attempt made"
        for attempt in range(self.max_retries):
            retry_after: str | None = None
            try:
                resp = self._client.post(url, json=body)
            except httpx.TimeoutException:
                reason = f"timeout after {self.timeout:g}s"
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__})"
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                reason = f"HTTP {resp.status_code}"
                if resp.status_code not in _RETRYABLE_STATUS:
                    detail = resp.text.strip().replace("\n", " ")[:200]
                    tries = "try" if attempt == 0 else "tries"
                    raise LLMError(
                        f"LLM endpoint {self.base_url} failed after {attempt + 1} {tries}: "
                        f"{reason}{': ' + detail if detail else ''}"
                    )
                retry_after = resp.headers.get("retry-after")
            if attempt + 1 < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.warning("LLM endpoint %s: %s; retrying in %.1fs", self.base_url, reason, delay)
                time.sleep(delay)
        tries = "try" if self.max_retries == 1 else "tries"
        raise LLMError(
            f"LLM endpoint {self.base_url} failed after {self.max_retries} {tries}: {reason}"
        )

    def _parse(self, resp: Any) -> Generation:
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError(
                f"LLM endpoint {self.base_url} returned an unexpected body ({type(exc).__name__})"
            ) from None
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if not isinstance(tokens, int):
            tokens = len(text.split())
        return Generation(text=text.strip(), num_tokens=tokens)

    def generate(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[Generation]:
        """Send every conversation (bounded concurrency); results keep the input order."""
        if not conversations:
            return []
        start = time.perf_counter()
        n = len(conversations)
        seeds = [None if params.seed is None else params.seed + i for i in range(n)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            futures = [
                pool.submit(self._one, conv, params, seed)
                for conv, seed in zip(conversations, seeds, strict=True)
            ]
            try:
                results = [f.result() for f in futures]
            except LLMError:
                for f in futures:
                    f.cancel()
                raise
        elapsed = time.perf_counter() - start
        self.stats.add(len(results), sum(g.num_tokens for g in results), elapsed)
        return results


# --------------------------------------------------------------------------------------------
# In-process vLLM
# --------------------------------------------------------------------------------------------


class VLLMLLM:
    """In-process vLLM engine (GPU). Extra keyword arguments go to ``vllm.LLM``."""

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise LLMError(
                "the 'vllm' backend needs the vllm package: `pip install vllm` on a GPU machine "
                "(or serve the model with any OpenAI-compatible server and use backend 'openai')"
            ) from exc
        self._vllm = vllm
        self.model_name = model
        self.engine = vllm.LLM(model=model, **engine_kwargs)
        self.stats = LLMStats()

    def generate(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[Generation]:
        """Generate with ``vllm.LLM.chat``; per-conversation seeds are ``seed + index``."""
        if not conversations:
            return []
        start = time.perf_counter()
        sp = [
            self._vllm.SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=max(0.0, params.temperature),
                top_p=params.top_p if params.temperature > 0 else 1.0,
                seed=None if params.seed is None else params.seed + i,
            )
            for i in range(len(conversations))
        ]
        outputs = self.engine.chat(conversations, sp, use_tqdm=False)
        results = [
            Generation(text=o.outputs[0].text.strip(), num_tokens=len(o.outputs[0].token_ids))
            for o in outputs
        ]
        elapsed = time.perf_counter() - start
        self.stats.add(len(results), sum(g.num_tokens for g in results), elapsed)
        return results


# --------------------------------------------------------------------------------------------
# Scripted (tests, dry runs)
# --------------------------------------------------------------------------------------------


class ScriptedLLM:
    """Answers from a script: a list of strings (cycled) or a function of the conversation.

    ``calls`` records every conversation received, so tests can inspect the prompts.
    """

    def __init__(
        self,
        responses: Sequence[str] | Callable[[Conversation], str] = ("",),
        model: str = "scripted",
    ) -> None:
        self.responses = responses
        self.model = model
        self.calls: list[Conversation] = []
        self.params: list[SamplingParams] = []
        self.stats = LLMStats()
        self._i = 0

    def generate(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[Generation]:
        """Return the next scripted answers (one per conversation)."""
        out = []
        for conv in conversations:
            self.calls.append(conv)
            if callable(self.responses):
                text = self.responses(conv)
            else:
                text = self.responses[self._i % len(self.responses)] if self.responses else ""
                self._i += 1
            out.append(Generation(text=text, num_tokens=len(text.split())))
        self.params.append(params)
        self.stats.add(len(out), sum(g.num_tokens for g in out), 0.0)
        return out


# --------------------------------------------------------------------------------------------
# Registry and per-process cache
# --------------------------------------------------------------------------------------------


def _make_transformers(model: str, **kw: Any) -> LLM:
    return TransformersLLM.from_name(model, **kw)


def _make_openai(model: str, **kw: Any) -> LLM:
    if "base_url" not in kw:
        raise ValueError("backend 'openai' needs base_url=... (e.g. http://127.0.0.1:8000/v1)")
    return OpenAIChatLLM(model=model, **kw)


def _make_vllm(model: str, **kw: Any) -> LLM:
    return VLLMLLM(model, **kw)


def _make_scripted(model: str, **kw: Any) -> LLM:
    return ScriptedLLM(model=model, **kw)


_BACKENDS: dict[str, Callable[..., LLM]] = {
    "transformers": _make_transformers,
    "openai": _make_openai,
    "vllm": _make_vllm,
    "scripted": _make_scripted,
}
_CACHE: dict[tuple[str, str, str], LLM] = {}
_CACHE_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[..., LLM]) -> None:
    """Add (or replace) a backend: ``factory(model, **kw) -> LLM``."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names accepted by :func:`make_llm`."""
    return sorted(_BACKENDS)


def make_llm(backend: str, model: str, *, cache: bool = True, **kw: Any) -> LLM:
    """Build the LLM ``model`` with ``backend`` (one of :func:`available_backends`).

    With ``cache=True`` (default) the instance is memoised per process on
    ``(backend, model, kwargs)``, so repeated calls (one per server round) reuse loaded weights.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown LLM backend {backend!r}; choose one of {available_backends()}")
    if not cache:
        return _BACKENDS[backend](model, **kw)
    key = (backend, model, repr(sorted(kw.items())))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _BACKENDS[backend](model, **kw)
        return _CACHE[key]


def clear_llm_cache() -> None:
    """Forget all cached LLM instances (closing HTTP clients)."""
    with _CACHE_LOCK:
        for llm in _CACHE.values():
            close = getattr(llm, "close", None)
            if callable(close):
                close()
        _CACHE.clear()
