"""Node settings: a JSON or TOML file, NULLIUS_* variables over it, devnet defaults under it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agents.node.config import load_settings

KEY = "ab" * 32


def test_load_settings__json_file__read_with_defaults(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"private_key": KEY, "port": 9001}))
    s = load_settings(path)
    assert (s.private_key, s.port, s.rpc_url, s.model) == (
        "0x" + KEY, 9001, "http://127.0.0.1:8545", "nullius/ref-tiny")
    assert s.url == "http://127.0.0.1:9001"
    assert s.artifact_store_url == str(s.data_dir / "artifacts")


def test_load_settings__toml_file__env_overrides_it(tmp_path, monkeypatch):
    path = tmp_path / "node.toml"
    path.write_text(f'private_key = "{KEY}"\nport = 9001\nmodel = "a/b"\n')
    monkeypatch.setenv("NULLIUS_PORT", "9002")
    s = load_settings(path)
    assert (s.port, s.model) == (9002, "a/b")


def test_load_settings__env_only__works(monkeypatch):
    monkeypatch.setenv("NULLIUS_PRIVATE_KEY", "0x" + KEY)
    assert load_settings().private_key == "0x" + KEY


def test_load_settings__missing_file__names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found: .*nope.json"):
        load_settings(tmp_path / "nope.json")


def test_load_settings__bad_key__rejected(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"private_key": "0x1234"}))
    with pytest.raises(ValidationError, match="private_key"):
        load_settings(path)


def test_load_settings__unknown_field__rejected(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"private_key": KEY, "prot": 1}))
    with pytest.raises(ValidationError, match="prot"):
        load_settings(path)


def test_nullius_node__missing_config__exits_2_naming_it(tmp_path, capsys):
    from agents.cli import main

    with pytest.raises(SystemExit) as info:
        main(["node", "--config", str(tmp_path / "absent.json")])
    assert info.value.code == 2
    assert "nullius node: error: config file not found: " in capsys.readouterr().err
