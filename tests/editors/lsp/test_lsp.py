"""diffusion-ls driven by a real LSP client (pytest-lsp / pygls) over stdio.

The server runs the tiny random-weight test model, so completions are random text: these tests
check the protocol mechanics (capabilities, document sync with emoji, inline completion,
completion, cancellation, bad positions, configuration, commands, shutdown), not the content.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import uuid
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import FAST_SETTINGS, server_command  # noqa: E402

# One completion on the test model takes well under a second; allow for a loaded CI machine.
TIMEOUT = float(os.environ.get("LSP_TEST_TIMEOUT", "60"))

URI = "file:///work/demo/src/main.rs"
RUST = """\
use std::collections::HashMap;

/// Counts words.
fn count(text: &str) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for w in text.split_whitespace() {
        *m.entry(w).or_insert(0) += 1;
    }
    m
}

fn main() {
    let s = "🦀 crabs 🦀";
    let n = 
    println!("{:?}", count(s));
}
"""
LINES = RUST.split("\n")
# After "    let n = " (0-based line 13).
LET_LINE = 13
LET_POS = t.Position(line=LET_LINE, character=len(LINES[LET_LINE]))


def make_client() -> LanguageClient:
    """pytest-lsp's client, plus a workspace/applyEdit handler that records the edits."""
    client = pytest_lsp.make_test_lsp_client()
    client.applied_edits = []  # type: ignore[attr-defined]

    @client.feature(t.WORKSPACE_APPLY_EDIT)
    def apply_edit(ls: LanguageClient, params: t.ApplyWorkspaceEditParams):
        ls.applied_edits.append(params)  # type: ignore[attr-defined]
        return t.ApplyWorkspaceEditResult(applied=True)

    return client


def capabilities(encodings: list[t.PositionEncodingKind] | None) -> t.ClientCapabilities:
    caps = copy.deepcopy(client_capabilities("visual-studio-code"))
    caps.text_document.inline_completion = t.InlineCompletionClientCapabilities(dynamic_registration=False)
    caps.workspace.apply_edit = True
    caps.general = caps.general or t.GeneralClientCapabilities()
    caps.general.position_encodings = encodings
    return caps


def init_params(encodings=(t.PositionEncodingKind.Utf16,), settings=None) -> t.InitializeParams:
    return t.InitializeParams(
        capabilities=capabilities(list(encodings) if encodings is not None else None),
        root_uri="file:///work/demo",
        workspace_folders=[t.WorkspaceFolder(uri="file:///work/demo", name="demo")],
        initialization_options=dict(FAST_SETTINGS if settings is None else settings),
    )


CONFIG = ClientServerConfig(
    server_command=server_command(),
    client_factory=make_client,
    server_env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
)


@pytest_lsp.fixture(config=CONFIG)
async def client(lsp_client: LanguageClient):
    lsp_client.init_result = await lsp_client.initialize_session(init_params())  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, text: str = RUST, uri: str = URI, version: int = 1) -> None:
    client.text_document_did_open(
        t.DidOpenTextDocumentParams(
            text_document=t.TextDocumentItem(uri=uri, language_id="rust", version=version, text=text)
        )
    )


def inline_params(pos: t.Position, uri: str = URI, kind=t.InlineCompletionTriggerKind.Invoked):
    return t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        position=pos,
        context=t.InlineCompletionContext(trigger_kind=kind),
    )


def items_of(result) -> list:
    if result is None:
        return []
    if isinstance(result, list):
        return result
    return list(result.items)


async def inline(client: LanguageClient, pos: t.Position, uri: str = URI):
    return await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(pos, uri)), TIMEOUT)


async def alive(client: LanguageClient) -> None:
    """The server still answers a well-formed request."""
    result = await inline(client, LET_POS)
    assert result is None or isinstance(result, (list, t.InlineCompletionList))


def commands(client) -> list[str]:
    provider = client.init_result.capabilities.execute_command_provider
    return list(provider.commands) if provider else []


def find_command(client, *needles: str) -> str:
    for c in commands(client):
        flat = c.lower().replace("-", "").replace("_", "")
        if any(n in flat for n in needles):
            return c
    pytest.fail(f"no command matching {needles} in {commands(client)}")


def in_doc(pos: t.Position, lines: list[str]) -> bool:
    return 0 <= pos.line < len(lines) and 0 <= pos.character <= len(lines[pos.line].encode("utf-16-le")) // 2


# ---- initialize ---------------------------------------------------------------------------------


async def test_capabilities(client: LanguageClient):
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider, "inlineCompletionProvider"
    assert caps.completion_provider is not None, "completionProvider"
    assert caps.execute_command_provider and caps.execute_command_provider.commands
    cmds = commands(client)
    find_command(client, "fill")
    find_command(client, "rewrite")
    assert len(cmds) == len(set(cmds))
    # Only UTF-16 offered: the server must use it (or leave the field out, meaning UTF-16).
    assert caps.position_encoding in (None, t.PositionEncodingKind.Utf16)
    sync = caps.text_document_sync
    kind = sync if isinstance(sync, t.TextDocumentSyncKind) else sync.change
    assert kind == t.TextDocumentSyncKind.Incremental
    info = client.init_result.server_info
    assert info and info.name


@pytest.mark.parametrize(
    "offered, allowed",
    [
        ([t.PositionEncodingKind.Utf8, t.PositionEncodingKind.Utf16], {t.PositionEncodingKind.Utf8, t.PositionEncodingKind.Utf16}),
        ([t.PositionEncodingKind.Utf32], {t.PositionEncodingKind.Utf32, t.PositionEncodingKind.Utf16}),
        (None, {None, t.PositionEncodingKind.Utf16}),
    ],
)
async def test_position_encoding_negotiation(offered, allowed):
    client = await CONFIG.start()
    try:
        result = await asyncio.wait_for(client.initialize_session(init_params(offered)), TIMEOUT)
        assert result.capabilities.position_encoding in allowed
        await client.shutdown_session()
    finally:
        await client.stop()


# ---- inline completion --------------------------------------------------------------------------


async def wait_items(client: LanguageClient, pos: t.Position, uri: str = URI) -> list:
    """Inline completion items at `pos`; retried while the model may still be loading."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        items = items_of(await inline(client, pos, uri))
        if items or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.5)


async def test_inline_completion(client: LanguageClient):
    open_doc(client)
    items = await wait_items(client, LET_POS)
    assert items, "the server returned no inline completion"
    for item in items:
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        assert isinstance(text, str) and text, item
        if item.range is not None:
            assert in_doc(item.range.start, LINES) and in_doc(item.range.end, LINES), item.range
            start, end = item.range.start, item.range.end
            assert (start.line, start.character) <= (LET_POS.line, LET_POS.character) <= (end.line, end.character)
        if item.command is not None:
            assert item.command.command in commands(client), item.command


async def test_inline_completion_accept_command(client: LanguageClient):
    open_doc(client)
    items = await wait_items(client, LET_POS)
    with_cmd = [i for i in items if i.command is not None]
    if not with_cmd:
        pytest.skip("items carry no accept command")
    cmd = with_cmd[0].command
    await asyncio.wait_for(
        client.workspace_execute_command_async(t.ExecuteCommandParams(command=cmd.command, arguments=cmd.arguments)),
        TIMEOUT,
    )
    await alive(client)


async def test_inline_completion_middle_of_file_and_end(client: LanguageClient):
    open_doc(client)
    # Start of the file, inside a comment, and the very end.
    for pos in (t.Position(line=0, character=0), t.Position(line=2, character=4), t.Position(line=len(LINES) - 1, character=0)):
        result = await inline(client, pos)
        for item in items_of(result):
            if item.range is not None:
                assert in_doc(item.range.start, LINES) and in_doc(item.range.end, LINES)


# ---- completion (Helix) ---------------------------------------------------------------------------


async def completion_items(client: LanguageClient, pos: t.Position, uri: str = URI) -> list[t.CompletionItem]:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        result = await asyncio.wait_for(
            client.text_document_completion_async(
                t.CompletionParams(
                    text_document=t.TextDocumentIdentifier(uri=uri),
                    position=pos,
                    context=t.CompletionContext(trigger_kind=t.CompletionTriggerKind.Invoked),
                )
            ),
            TIMEOUT,
        )
        items = [] if result is None else (result if isinstance(result, list) else list(result.items))
        if items or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.5)


def line_prefix_utf16(line: str, character: int) -> str:
    return line.encode("utf-16-le")[: 2 * character].decode("utf-16-le")


async def test_completion(client: LanguageClient):
    open_doc(client)
    items = await completion_items(client, LET_POS)
    assert items, "the server returned no completion item"
    for item in items:
        edit = item.text_edit
        assert edit is not None, "items carry a textEdit with the whole insertion"
        new_text = edit.new_text
        rng = edit.range if isinstance(edit, t.TextEdit) else edit.insert
        assert item.label == new_text.split("\n")[0] or item.label.startswith(new_text.split("\n")[0].strip()[:1]), (
            item.label,
            new_text,
        )
        assert item.detail and "diffusion" in item.detail.lower(), item.detail
        assert rng.start.line == LET_POS.line and rng.end == LET_POS or rng.end.line >= LET_POS.line
        if item.filter_text is not None:
            # The line text from the edit's start to the cursor, so the client keeps the item as you type.
            assert item.filter_text.endswith(line_prefix_utf16(LINES[LET_LINE], LET_POS.character)[rng.start.character :].rstrip()[-1:] or "")


# ---- document sync with emoji ----------------------------------------------------------------------


def change(uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str):
    return t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[
            t.TextDocumentContentChangePartial(
                range=t.Range(start=t.Position(line=start[0], character=start[1]), end=t.Position(line=end[0], character=end[1])),
                text=text,
            )
        ],
    )


async def test_incremental_change_with_emoji(client: LanguageClient):
    """Edits after astral-plane characters use UTF-16 offsets; the server's copy must follow.

    Checked through completion's filterText (the line prefix the server sees) and the ranges it returns.
    """
    uri = "file:///work/demo/src/emoji.rs"
    text = 'fn main() {\n    let s = "🦀🦀";\n    \n}\n'
    open_doc(client, text, uri)
    # Insert after the two crabs (each 2 UTF-16 units): `"🦀🦀` ends at character 14+... compute.
    line1 = '    let s = "🦀🦀";'
    after_crabs = len('    let s = "'.encode("utf-16-le")) // 2 + 4
    client.text_document_did_change(change(uri, 2, (1, after_crabs), (1, after_crabs), "é🎉"))
    line1 = '    let s = "🦀🦀é🎉";'
    # Replace the blank line 2 with a statement that uses an emoji, then type more.
    client.text_document_did_change(change(uri, 3, (2, 0), (2, 4), "    let t = s.len(); // 👍 "))
    client.text_document_did_change(change(uri, 4, (2, 27), (2, 27), "ok"))
    line2 = "    let t = s.len(); // 👍 ok"
    # Delete the é (1 unit) between the crabs and the party popper.
    client.text_document_did_change(change(uri, 5, (1, after_crabs), (1, after_crabs + 1), ""))
    line1 = '    let s = "🦀🦀🎉";'
    lines = ["fn main() {", line1, line2, "}", ""]

    end2 = t.Position(line=2, character=len(line2.encode("utf-16-le")) // 2)
    items = await completion_items(client, end2, uri)
    assert items, "no completion after incremental edits"
    for item in items:
        edit = item.text_edit
        rng = edit.range if isinstance(edit, t.TextEdit) else edit.insert
        assert in_doc(rng.start, lines) and in_doc(rng.end, lines), rng
        assert rng.end == end2 or rng.end.line > 2, rng
        if item.filter_text is not None:
            prefix = line_prefix_utf16(line2, rng.start.character) if rng.start.line == 2 else ""
            seen = line_prefix_utf16(line2, end2.character)[len(prefix) :]
            assert seen.strip() == "" or item.filter_text.startswith(seen.lstrip()[:1]) or seen in item.filter_text or item.filter_text in line2, (
                item.filter_text,
                seen,
            )
    # And an inline completion right after the popper, mid-line.
    pos = t.Position(line=1, character=after_crabs + 2)
    for item in items_of(await inline(client, pos, uri)):
        if item.range is not None:
            assert in_doc(item.range.start, lines) and in_doc(item.range.end, lines), item.range


# ---- cancellation, bad input ----------------------------------------------------------------------


async def test_cancel_request(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)  # model loaded
    msg_id = f"cancel-{uuid.uuid4()}"
    fut = client.protocol.send_request_async(t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(LET_POS), msg_id=msg_id)
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=msg_id))
    try:
        result = await asyncio.wait_for(fut, TIMEOUT)
    except JsonRpcException as e:
        # RequestCancelled (-32800) or ContentModified / ServerCancelled.
        assert e.code in (-32800, -32801, -32802), e
    else:
        assert result is None or isinstance(result, (list, t.InlineCompletionList))
    # Many requests, each cancelled at once, then one that is kept: the server must not pile up work.
    futs = []
    for i in range(8):
        mid = f"burst-{i}-{uuid.uuid4()}"
        futs.append(client.protocol.send_request_async(t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(LET_POS), msg_id=mid))
        client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=mid))
    done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), TIMEOUT)
    for r in done:
        assert not isinstance(r, Exception) or (isinstance(r, JsonRpcException) and r.code in (-32800, -32801, -32802)), r
    await alive(client)


async def test_newer_edit_supersedes_request(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)
    fut = client.text_document_inline_completion_async(inline_params(LET_POS))
    client.text_document_did_change(change(URI, 2, (LET_LINE, LET_POS.character), (LET_LINE, LET_POS.character), "1"))
    try:
        await asyncio.wait_for(fut, TIMEOUT)
    except JsonRpcException as e:
        assert e.code in (-32800, -32801, -32802), e
    pos = t.Position(line=LET_LINE, character=LET_POS.character + 1)
    for item in items_of(await inline(client, pos)):
        if item.range is not None:
            assert item.range.start.line == LET_LINE


@pytest.mark.parametrize(
    "pos",
    [
        t.Position(line=10_000, character=0),
        t.Position(line=LET_LINE, character=10_000),
        t.Position(line=len(LINES), character=5),
        t.Position(line=12, character=len('    let s = "🦀'.encode("utf-16-le")) // 2 - 1),  # inside a surrogate pair
    ],
    ids=["line-past-end", "char-past-eol", "after-last-line", "mid-surrogate"],
)
async def test_bad_positions(client: LanguageClient, pos):
    open_doc(client)
    for request in (
        lambda: client.text_document_inline_completion_async(inline_params(pos)),
        lambda: client.text_document_completion_async(
            t.CompletionParams(text_document=t.TextDocumentIdentifier(uri=URI), position=pos)
        ),
    ):
        try:
            result = await asyncio.wait_for(request(), TIMEOUT)
        except JsonRpcException as e:
            assert e.code in (-32602, -32603, -32800, -32801, -32802), e  # an error is fine
        else:
            for item in items_of(result) if not isinstance(result, t.CompletionList) else result.items:
                rng = getattr(item, "range", None) or (item.text_edit.range if getattr(item, "text_edit", None) else None)
                if rng is not None:
                    assert in_doc(rng.start, LINES) and in_doc(rng.end, LINES), rng
    await alive(client)


async def test_unknown_document(client: LanguageClient):
    try:
        result = await inline(client, t.Position(line=0, character=0), "file:///nowhere/never-opened.rs")
    except JsonRpcException as e:
        assert e.code in (-32602, -32603, -32800, -32801, -32802), e
    else:
        assert not items_of(result)
    open_doc(client)
    await alive(client)


async def test_did_close_then_reopen(client: LanguageClient):
    open_doc(client)
    client.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=URI)))
    open_doc(client, RUST.replace("let n = ", "let n = 2 * "), version=1)
    await alive(client)


# ---- configuration and commands ------------------------------------------------------------------


async def test_did_change_configuration(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)
    client.workspace_did_change_configuration(
        t.DidChangeConfigurationParams(settings={"steps": 1, "candidates": 2, "maxSpanTokens": 4})
    )
    # Nested under the section name, as VS Code's configurationSection sync would send it.
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"diffusionLs": {"steps": 2}}))
    # A bad value must not kill the server.
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"steps": "many"}))
    items = await wait_items(client, LET_POS)
    assert len(items) <= 2
    await alive(client)


async def run_command(client, command: str, args: dict):
    client.applied_edits.clear()
    result = await asyncio.wait_for(
        client.workspace_execute_command_async(t.ExecuteCommandParams(command=command, arguments=[args])), TIMEOUT
    )
    # The edit request may arrive just after the response.
    for _ in range(50):
        if client.applied_edits:
            break
        await asyncio.sleep(0.1)
    return result


def edits_for(client, uri: str) -> list[t.TextEdit]:
    out: list[t.TextEdit] = []
    for p in client.applied_edits:
        edit = p.edit
        if edit.changes and uri in edit.changes:
            out += list(edit.changes[uri])
        for dc in edit.document_changes or []:
            if isinstance(dc, t.TextDocumentEdit) and dc.text_document.uri == uri:
                out += [e for e in dc.edits if isinstance(e, t.TextEdit)]
    return out


async def test_fill_selection_command(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)
    # Select the loop body `*m.entry(w).or_insert(0) += 1;` (line 6).
    line = LINES[6]
    sel = t.Range(
        start=t.Position(line=6, character=len(line) - len(line.lstrip())),
        end=t.Position(line=6, character=len(line)),
    )
    args = {"textDocument": {"uri": URI, "version": 1}, "range": sel, "position": sel.start}
    await run_command(client, find_command(client, "fill"), client.protocol._converter.unstructure(args))
    edits = edits_for(client, URI)
    assert edits, f"no workspace/applyEdit for {URI}: {client.applied_edits}"
    for e in edits:
        assert (e.range.start.line, e.range.start.character) >= (sel.start.line, sel.start.character), e.range
        assert (e.range.end.line, e.range.end.character) <= (sel.end.line, sel.end.character), e.range


async def test_rewrite_function_command(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)
    pos = t.Position(line=5, character=8)  # inside `count`
    args = {"textDocument": {"uri": URI, "version": 1}, "range": t.Range(start=pos, end=pos), "position": pos}
    await run_command(client, find_command(client, "rewrite"), client.protocol._converter.unstructure(args))
    edits = edits_for(client, URI)
    assert edits, f"no workspace/applyEdit for {URI}: {client.applied_edits}"
    for e in edits:
        # Inside `fn count … }` (lines 3..9).
        assert 3 <= e.range.start.line and e.range.end.line <= 9, e.range


async def test_code_actions(client: LanguageClient):
    if not client.init_result.capabilities.code_action_provider:
        pytest.skip("no codeActionProvider")
    open_doc(client)
    rng = t.Range(start=t.Position(line=6, character=8), end=t.Position(line=6, character=20))
    result = await asyncio.wait_for(
        client.text_document_code_action_async(
            t.CodeActionParams(
                text_document=t.TextDocumentIdentifier(uri=URI), range=rng, context=t.CodeActionContext(diagnostics=[])
            )
        ),
        TIMEOUT,
    )
    actions = result or []
    assert actions, "code actions for a selection"
    for a in actions:
        cmd = a.command if isinstance(a, t.CodeAction) else a
        if cmd is not None and isinstance(cmd, t.Command):
            assert cmd.command in commands(client), cmd


# ---- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_and_exit():
    client = await CONFIG.start()
    try:
        await asyncio.wait_for(client.initialize_session(init_params()), TIMEOUT)
        open_doc(client)
        result = await asyncio.wait_for(client.shutdown_async(None), TIMEOUT)
        assert result is None
        client.exit(None)
        code = await asyncio.wait_for(client._server.wait(), TIMEOUT)
        assert code == 0, f"exit code {code} after shutdown + exit"
    finally:
        await client.stop()
