"""Shared fixtures of the editor tests: where the server binary and the test model are.

DIFFUSION_LS: the server binary (default target/release/diffusion-ls); a value that is not a file
is split like a shell command line, so a wrapper can stand in for it.
DIFFUSION_LS_MODEL: the model folder (default model/default, the shipped model).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def server_binary() -> list[str]:
    value = os.environ.get("DIFFUSION_LS") or str(ROOT / "target" / "release" / "diffusion-ls")
    if Path(value).is_file():
        return [str(Path(value).resolve())]
    return shlex.split(value)


def model_dir() -> Path:
    value = os.environ.get("DIFFUSION_LS_MODEL") or str(ROOT / "model" / "default")
    return Path(value).resolve()


def server_command() -> list[str]:
    """The server command line the tests start: binary + --model <test model>."""
    return [*server_binary(), "--model", str(model_dir())]


# Settings that keep completions quick on the random test model. verify is off: the model's random
# text rarely parses, and with verify on the server may reject every candidate (no item at all).
FAST_SETTINGS = {
    "steps": 2,
    "maxSpanTokens": 8,
    "candidates": 1,
    "temperature": 0,
    "debounceMs": 0,
    "verify": False,
}


@pytest.fixture(scope="session")
def server_cmd() -> list[str]:
    binary = server_binary()
    if len(binary) == 1 and not Path(binary[0]).is_file():
        pytest.fail(f"diffusion-ls binary not found at {binary[0]} (build it or set DIFFUSION_LS)")
    return server_command()


@pytest.fixture(scope="session")
def fast_settings() -> dict:
    return dict(FAST_SETTINGS)
