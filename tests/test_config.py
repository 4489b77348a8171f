"""Settings from TOML + environment; errors name the source and the key at fault."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from receiver.config import load_settings, settings_from_mapping
from receiver.errors import ConfigError

GOOD = """
[database]
url = "sqlite:///from-file.db"

[sources.refonte]
kind = "refonte"
verify = "header-token"
header = "Refonte-Callback-Auth"
secrets = ["s3cret-new", "s3cret-old"]

[api.keys.ops]
key_env = "TASKHOOK_OPS_KEY"
scopes = ["tasks.read", "deliveries.read", "deliveries.write"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskhook.toml"
    path.write_text(text)
    return path


def test_the_contract_example_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), environ={"TASKHOOK_OPS_KEY": "k"})
    source = settings.sources["refonte"]
    assert source.header_name == "refonte-callback-auth"
    assert source.secret_values() == ("s3cret-new", "s3cret-old")
    assert settings.database.url == "sqlite:///from-file.db"
    ops = settings.api.keys["ops"]
    assert ops.key is not None and ops.key.get_secret_value() == "k"


def test_secrets_never_show_in_repr_or_dump(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), environ={"TASKHOOK_OPS_KEY": "opskey"})
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cret" not in text
        assert "opskey" not in text


def test_database_url_from_environment_wins(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, GOOD),
        environ={"TASKHOOK_OPS_KEY": "k", "TASKHOOK_DATABASE_URL": "sqlite:////tmp/env.db"},
    )
    assert settings.database.url == "sqlite:////tmp/env.db"


def test_secrets_from_the_environment(tmp_path: Path) -> None:
    text = GOOD.replace('secrets = ["s3cret-new", "s3cret-old"]', 'secrets_env = "REF_SECRETS"')
    settings = load_settings(
        write(tmp_path, text), environ={"TASKHOOK_OPS_KEY": "k", "REF_SECRETS": "a, b,"}
    )
    assert settings.sources["refonte"].secret_values() == ("a", "b")


@pytest.mark.parametrize(
    ("text", "environ", "key", "words"),
    [
        (
            GOOD.replace('verify = "header-token"\n', ""),
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte.verify",
            "Field required",
        ),
        (
            GOOD.replace('"header-token"', '"rot13"'),
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte.verify",
            "header-token",
        ),
        (
            GOOD.replace('kind = "refonte"', 'kind = "acme"'),
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte.kind",
            "refonte",
        ),
        (GOOD, {}, "api.keys.ops.key_env", "TASKHOOK_OPS_KEY"),
        (
            GOOD.replace('secrets = ["s3cret-new", "s3cret-old"]', 'secrets_env = "NOPE"'),
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte.secrets_env",
            "NOPE",
        ),
        (
            GOOD.replace('secrets = ["s3cret-new", "s3cret-old"]', ""),
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte",
            "needs `secrets`",
        ),
        (
            GOOD + "\n[sources.refonte.extra]\n",
            {"TASKHOOK_OPS_KEY": "k"},
            "sources.refonte.extra",
            "Extra inputs",
        ),
        (
            GOOD.replace('"sqlite:///from-file.db"', '"mysql://x"'),
            {"TASKHOOK_OPS_KEY": "k"},
            "database",
            "sqlite",
        ),
    ],
)
def test_bad_config_names_file_and_key(
    tmp_path: Path, text: str, environ: dict[str, str], key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert words in message
    assert "s3cret" not in message


def test_verify_none_must_be_written_out() -> None:
    with pytest.raises(ConfigError, match=r"sources\.x\.verify"):
        settings_from_mapping({"sources": {"x": {"kind": "refonte"}}}, environ={})
    settings = settings_from_mapping(
        {"sources": {"x": {"kind": "refonte", "verify": "none"}}}, environ={}
    )
    assert settings.sources["x"].verify == "none"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[database\n"), environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    settings = load_settings(environ={"TASKHOOK_CONFIG": str(path), "TASKHOOK_OPS_KEY": "k"})
    assert settings.database.url == "sqlite:///from-file.db"


def test_local_default_uses_the_refonte_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"TASKHOOK_REFONTE_SECRET": "dev"})
    assert settings.database.url == "sqlite:///taskhook.db"
    source = settings.sources["refonte"]
    assert (source.kind, source.verify, source.secret_values()) == (
        "refonte",
        "header-token",
        ("dev",),
    )
    assert not settings.insecure_dev


def test_local_default_refuses_without_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--insecure-dev"):
        load_settings(environ={})
    settings = load_settings(environ={}, insecure_dev=True)
    assert settings.insecure_dev
    assert settings.sources["refonte"].verify == "none"


def test_taskhook_toml_in_the_working_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={"TASKHOOK_OPS_KEY": "k"}).database.url == "sqlite:///from-file.db"


def test_local_default_offers_an_ops_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    without = load_settings(environ={"TASKHOOK_REFONTE_SECRET": "dev"})
    assert without.api.keys == {}
    settings = load_settings(environ={"TASKHOOK_REFONTE_SECRET": "dev", "TASKHOOK_OPS_KEY": "k"})
    ops = settings.api.keys["ops"]
    assert ops.key is not None and ops.key.get_secret_value() == "k"
    assert "tasks.read" in ops.scopes and "deliveries.write" in ops.scopes


def test_every_readme_config_example_is_valid_configuration() -> None:
    """The README's TOML examples, merged into one file, load as settings."""
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    merged: dict[str, Any] = {}

    def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
        for key, value in more.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    documents = [tomllib.loads(b) for b in blocks if "[project" not in b]
    assert len(documents) >= 5
    for document in documents:
        merge(merged, document)
    names = set(re.findall(r'_env = "([A-Z_]+)"', readme))
    # One value for every variable, valid as any kind of secret (a 24-byte Standard Webhooks key).
    value = "whsec_" + base64.b64encode(b"from the environment, 24").decode()
    settings = settings_from_mapping(merged, environ=dict.fromkeys(names, value))
    assert {"refonte", "taskmonk", "clarifai", "cf-labeling", "docs", "billing"} <= set(
        settings.sources
    )
    assert settings.http.body_timeout_seconds == 30
