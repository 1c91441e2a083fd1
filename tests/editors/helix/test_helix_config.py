"""editors/helix/languages.toml is valid TOML of the shape Helix accepts for adding diffusion-ls."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SNIPPET = ROOT / "editors" / "helix" / "languages.toml"

# helix-core's LanguageServerFeature names (kebab-case, as languages.toml spells them).
HELIX_FEATURES = {
    "format", "goto-definition", "goto-declaration", "goto-type-definition", "goto-reference",
    "goto-implementation", "signature-help", "hover", "document-highlight", "completion",
    "code-action", "workspace-command", "document-symbols", "workspace-symbols", "diagnostics",
    "rename-symbol", "inlay-hints", "document-colors",
}
# Keys Helix reads in a [language-server.NAME] table.
HELIX_SERVER_KEYS = {"command", "args", "config", "timeout", "environment", "required-root-patterns"}
SERVER_SETTINGS = {"model", "steps", "maxSpanTokens", "candidates", "temperature", "contextTokens", "verify", "debounceMs"}


def load() -> dict:
    with SNIPPET.open("rb") as f:
        return tomllib.load(f)


def test_language_server_entry():
    doc = load()
    assert set(doc) <= {"language-server", "language"}
    server = doc["language-server"]["diffusion-ls"]
    assert server["command"] == "diffusion-ls"
    assert set(server) <= HELIX_SERVER_KEYS, set(server) - HELIX_SERVER_KEYS
    assert isinstance(server.get("args", []), list)
    config = server.get("config", {})
    assert isinstance(config, dict)
    assert set(config) <= SERVER_SETTINGS, set(config) - SERVER_SETTINGS
    for key in ("steps", "maxSpanTokens", "candidates", "contextTokens", "debounceMs"):
        if key in config:
            assert isinstance(config[key], int) and not isinstance(config[key], bool) and config[key] >= 0, key
    if "temperature" in config:
        assert isinstance(config["temperature"], (int, float)) and config["temperature"] >= 0
    if "verify" in config:
        assert isinstance(config["verify"], bool)


def test_rust_keeps_rust_analyzer_and_adds_diffusion_ls_for_completion():
    doc = load()
    langs = doc["language"]
    assert isinstance(langs, list)
    rust = [lang for lang in langs if lang["name"] == "rust"]
    assert len(rust) == 1
    servers = rust[0]["language-servers"]
    assert servers[0] == "rust-analyzer", "the list replaces Helix's default, so rust-analyzer must stay"
    ours = [s for s in servers if (s if isinstance(s, str) else s["name"]) == "diffusion-ls"]
    assert len(ours) == 1
    entry = ours[0]
    assert isinstance(entry, dict)
    assert set(entry) <= {"name", "only-features", "except-features"}
    assert not ("only-features" in entry and "except-features" in entry), "Helix rejects both"
    assert entry["only-features"] == ["completion"]
    for s in servers:
        if isinstance(s, dict):
            for f in s.get("only-features", []) + s.get("except-features", []):
                assert f in HELIX_FEATURES, f
    # Every server named is defined (here, or built into Helix like rust-analyzer).
    defined = set(doc["language-server"]) | {"rust-analyzer"}
    for s in servers:
        assert (s if isinstance(s, str) else s["name"]) in defined


def test_config_keys_are_server_settings():
    """The keys match the fields of the server's Settings (camelCase of server/src/config.rs)."""
    config_rs = ROOT / "server" / "src" / "config.rs"
    config = load()["language-server"]["diffusion-ls"].get("config", {})
    if not config_rs.is_file():
        return
    fields = set(re.findall(r"^\s*pub (\w+):", config_rs.read_text(), re.M))
    camel = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), f) for f in fields}
    assert set(config) <= camel, set(config) - camel
    assert SERVER_SETTINGS <= camel, SERVER_SETTINGS - camel
