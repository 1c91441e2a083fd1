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


# Custom requests of diffusion-ls (server/src/lsp.rs), for tests and debugging.
STATUS = "diffusionLs/status"  # waits for the model, then {ready, model}
DEBUG_DOCUMENT = "diffusionLs/debugDocument"  # {uri} -> {version, text}


def plain(value):
    """pygls returns results of custom requests as namedtuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def wait_model(client: LanguageClient) -> dict:
    status = plain(await asyncio.wait_for(client.protocol.send_request_async(STATUS, None), TIMEOUT))
    assert status.get("ready"), f"the model did not load: {status}"
    return status


async def server_text(client: LanguageClient, uri: str) -> dict:
    return plain(await asyncio.wait_for(client.protocol.send_request_async(DEBUG_DOCUMENT, {"uri": uri}), TIMEOUT))


@pytest_lsp.fixture(config=CONFIG)
async def client(lsp_client: LanguageClient):
    lsp_client.init_result = await lsp_client.initialize_session(init_params())  # type: ignore[attr-defined]
    await wait_model(lsp_client)
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


async def raw_request(client: LanguageClient, method: str, params) -> object:
    """A request whose result is left as plain JSON: lsprotocol structures `(Command | CodeAction)[]`
    wrongly (a CodeAction becomes a Command whose `command` is the stringified object)."""
    msg_id = f"raw-{uuid.uuid4()}"
    fut = send_now(client, method, params, msg_id)
    client.protocol._result_types.pop(msg_id, None)
    return plain(await asyncio.wait_for(fut, TIMEOUT))


def send_now(client: LanguageClient, method: str, params, msg_id: str) -> asyncio.Future:
    """Sends a request at once (pytest-lsp's send_request_async only sends when awaited) and
    returns an awaitable for its result."""
    return asyncio.wrap_future(client.protocol.send_request(method, params, msg_id=msg_id))


async def code_actions(client: LanguageClient, rng: t.Range) -> list[dict]:
    params = t.CodeActionParams(
        text_document=t.TextDocumentIdentifier(uri=URI), range=rng, context=t.CodeActionContext(diagnostics=[])
    )
    return (await raw_request(client, t.TEXT_DOCUMENT_CODE_ACTION, params)) or []


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
    """Inline completion items at `pos` (the fixture already waited for the model to load)."""
    return items_of(await inline(client, pos, uri))


async def test_inline_completion(client: LanguageClient):
    open_doc(client)
    items = await wait_items(client, LET_POS)
    assert items, "the server returned no inline completion"
    for item in items:
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        assert isinstance(text, str) and text, item
        # Nothing after the cursor on that line: the item inserts at the cursor.
        assert item.range == t.Range(start=LET_POS, end=LET_POS), item.range
        # Accepting runs a command the server lists in executeCommandProvider.
        assert item.command is not None and item.command.command in commands(client), item.command


async def test_inline_completion_accept_command(client: LanguageClient):
    open_doc(client)
    items = await wait_items(client, LET_POS)
    with_cmd = [i for i in items if i.command is not None]
    assert with_cmd, "items carry no accept command"
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
    params = t.CompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        position=pos,
        context=t.CompletionContext(trigger_kind=t.CompletionTriggerKind.Invoked),
    )
    result = await asyncio.wait_for(client.text_document_completion_async(params), TIMEOUT)
    return [] if result is None else (result if isinstance(result, list) else list(result.items))


async def test_completion(client: LanguageClient):
    """Helix-style items: label = first line, textEdit from the line start with the whole insertion,
    filterText = the line prefix (so the menu keeps the item while typing), detail says diffusion."""
    open_doc(client)
    items = await completion_items(client, LET_POS)
    assert items, "the server returned no completion item"
    prefix = LINES[LET_LINE]
    for item in items:
        edit = item.text_edit
        assert edit is not None, "items carry a textEdit with the whole insertion"
        rng = edit.range if isinstance(edit, t.TextEdit) else edit.insert
        assert rng.start == t.Position(line=LET_LINE, character=0), rng
        assert rng.end == LET_POS, rng  # nothing after the cursor on that line
        assert edit.new_text.startswith(prefix), edit.new_text
        inserted = edit.new_text[len(prefix):]
        assert inserted, "an empty completion"
        first = next((line.strip() for line in inserted.split("\n") if line.strip()), "")
        assert item.label == first, (item.label, inserted)
        assert item.filter_text == prefix, item.filter_text
        assert item.detail and "diffusion" in item.detail.lower(), item.detail
        assert item.insert_text_format in (None, t.InsertTextFormat.PlainText)


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
    """Incremental edits around astral-plane characters, in UTF-16 offsets (each 🦀 is 2 units):
    the server's copy (diffusionLs/debugDocument) must match the client's, and ranges it returns
    must fall inside the document."""
    uri = "file:///work/demo/src/emoji.rs"
    text = 'fn main() {\n    let s = "🦀🦀";\n    \n}\n'
    open_doc(client, text, uri)

    def u16(s: str) -> int:
        return len(s.encode("utf-16-le")) // 2

    after_crabs = u16('    let s = "🦀🦀')
    edits = [
        ((1, after_crabs), (1, after_crabs), "é🎉"),  # -> "🦀🦀é🎉"
        ((2, 0), (2, 4), "    let t = s.len(); // 👍 "),  # replace the blank line
        ((2, u16("    let t = s.len(); // 👍 ")), (2, u16("    let t = s.len(); // 👍 ")), "ok"),
        ((1, after_crabs), (1, after_crabs + 1), ""),  # delete the é
        ((0, 3), (0, 7), "🚀ain"),  # replace "main" across ASCII with an emoji
        ((3, 1), (3, 1), "\n// 👋🏽 wave\n"),  # multi-line insert after the closing brace
    ]
    expected = text
    for version, (start, end, new) in enumerate(edits, start=2):
        client.text_document_did_change(change(uri, version, start, end, new))
        expected = apply_utf16(expected, start, end, new)
    assert "🦀🦀🎉" in expected and "🚀ain" in expected
    doc = await server_text(client, uri)
    assert doc["text"] == expected
    assert doc["version"] == 1 + len(edits)

    lines = expected.split("\n")
    end2 = t.Position(line=2, character=u16(lines[2]))
    # Whether the model writes anything after this comment is its own business; every range
    # it returns must fall inside the edited document.
    items = await completion_items(client, end2, uri)
    for item in items:
        edit = item.text_edit
        rng = edit.range if isinstance(edit, t.TextEdit) else edit.insert
        assert rng.start == t.Position(line=2, character=0) and rng.end == end2, rng
        assert item.filter_text == lines[2]
        assert edit.new_text.startswith(lines[2])
    # Inline completion right after the party popper, mid-line: the range covers `";` (closing chars).
    pos = t.Position(line=1, character=u16('    let s = "🦀🦀🎉'))
    for item in items_of(await inline(client, pos, uri)):
        assert item.range is not None and item.range.start == pos, item.range
        assert in_doc(item.range.end, lines), item.range
        assert item.range.end.line == 1


def apply_utf16(text: str, start: tuple[int, int], end: tuple[int, int], new: str) -> str:
    lines = text.split("\n")

    def offset(line: int, character: int) -> int:
        before = sum(len(x) + 1 for x in lines[:line])
        units, i = 0, 0
        s = lines[line]
        while units < character:
            units += 2 if ord(s[i]) > 0xFFFF else 1
            i += 1
        return before + i

    a, b = offset(*start), offset(*end)
    return text[:a] + new + text[b:]


async def test_utf8_position_encoding_edits():
    """With UTF-8 negotiated, positions are byte offsets: edits after emoji land where they should."""
    client = await CONFIG.start()
    try:
        result = await asyncio.wait_for(
            client.initialize_session(init_params([t.PositionEncodingKind.Utf8, t.PositionEncodingKind.Utf16])), TIMEOUT
        )
        assert result.capabilities.position_encoding == t.PositionEncodingKind.Utf8
        await wait_model(client)
        uri = "file:///work/demo/src/utf8.rs"
        text = 'fn f() -> &\'static str {\n    "🦀é"\n}\n'
        open_doc(client, text, uri)
        after = len('    "🦀é'.encode())  # bytes: 4 + 1 + 4 + 2
        client.text_document_did_change(change(uri, 2, (1, after), (1, after), " 🎉"))
        client.text_document_did_change(change(uri, 3, (1, len('    "'.encode())), (1, len('    "🦀'.encode())), "crab"))
        doc = await server_text(client, uri)
        assert doc["text"] == 'fn f() -> &\'static str {\n    "crabé 🎉"\n}\n', doc
        pos = t.Position(line=1, character=len('    "crabé 🎉'.encode()))
        # The model may write nothing inside this string; every range it returns is in bytes.
        items = items_of(await inline(client, pos, uri))
        for item in items:
            assert item.range.start == pos, item.range
            # The rest of the line (`"`) is closing characters: the item replaces it, to the line end in bytes.
            assert item.range.end == t.Position(line=1, character=len('    "crabé 🎉"'.encode())), item.range
        await client.shutdown_session()
    finally:
        await client.stop()


# ---- cancellation, bad input ----------------------------------------------------------------------


async def test_cancel_request(client: LanguageClient):
    """$/cancelRequest answers the request with RequestCancelled; the server keeps working."""
    open_doc(client)
    # A long debounce keeps the request waiting inside the server when the cancel arrives.
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"debounceMs": 1000}))
    pos = t.Position(line=4, character=len(LINES[4]))  # not the position of any earlier answer
    msg_id = f"cancel-{uuid.uuid4()}"
    t0 = asyncio.get_running_loop().time()
    fut = send_now(client, t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(pos), msg_id)
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(fut, TIMEOUT)
    assert err.value.code == -32800, err.value  # RequestCancelled
    assert asyncio.get_running_loop().time() - t0 < 1.0, "the cancelled request still waited out its debounce"

    # A burst on several documents, each cancelled at once: every one ends, none hangs.
    futs = []
    for i in range(6):
        uri = f"file:///work/demo/src/burst{i}.rs"
        open_doc(client, RUST, uri)
        mid = f"burst-{i}-{uuid.uuid4()}"
        futs.append(send_now(client, t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(LET_POS, uri), mid))
        client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=mid))
    done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), TIMEOUT)
    for r in done:
        assert isinstance(r, JsonRpcException) and r.code == -32800, r

    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"debounceMs": 0}))
    await alive(client)


async def test_newer_edit_supersedes_request(client: LanguageClient):
    """An edit while a completion waits makes the server drop it (no items for a stale text),
    and a newer request for the same document supersedes an older one."""
    open_doc(client)
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"debounceMs": 1000}))
    pos = t.Position(line=4, character=len(LINES[4]))
    t0 = asyncio.get_running_loop().time()
    fut = send_now(client, t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(pos), f"stale-{uuid.uuid4()}")
    client.text_document_did_change(change(URI, 2, (LET_LINE, LET_POS.character), (LET_LINE, LET_POS.character), "1"))
    try:
        result = await asyncio.wait_for(fut, TIMEOUT)
    except JsonRpcException as e:
        assert e.code in (-32800, -32801, -32802), e
    else:
        assert not items_of(result), "items computed for a text that has changed"
    waited = asyncio.get_running_loop().time() - t0
    # The server answers a superseded request only after its debounce sleep (it checks the
    # cancel token after sleeping); the editor has moved on by then, so only a bound here.
    assert waited < 1.0 + TIMEOUT / 2, waited

    # Two requests in a row: the first is superseded by the second, which answers.
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"debounceMs": 300}))
    newer = t.Position(line=LET_LINE, character=LET_POS.character + 1)
    first = send_now(client, t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(pos), f"old-{uuid.uuid4()}")
    second = send_now(client, t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(newer), f"new-{uuid.uuid4()}")
    r1, r2 = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), TIMEOUT)
    assert isinstance(r1, JsonRpcException) or not items_of(r1), r1
    assert not isinstance(r2, Exception), r2
    for item in items_of(r2):
        assert item.range.start == newer, item.range
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"debounceMs": 0}))


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
    args = {"uri": URI, "range": sel}
    result = await run_command(client, find_command(client, "fill"), client.protocol._converter.unstructure(args))
    print("fill result:", result)
    edits = edits_for(client, URI)
    assert edits, f"no workspace/applyEdit for {URI}: {client.applied_edits}"
    for e in edits:
        assert (e.range.start.line, e.range.start.character) >= (sel.start.line, sel.start.character), e.range
        assert (e.range.end.line, e.range.end.character) <= (sel.end.line, sel.end.character), e.range


async def test_rewrite_function_command(client: LanguageClient):
    open_doc(client)
    await wait_items(client, LET_POS)
    pos = t.Position(line=5, character=8)  # inside `count`
    args = {"uri": URI, "position": pos}
    result = await run_command(client, find_command(client, "rewrite"), client.protocol._converter.unstructure(args))
    print("rewrite result:", result)
    edits = edits_for(client, URI)
    assert edits, f"no workspace/applyEdit for {URI}: {client.applied_edits}"
    for e in edits:
        # Inside `fn count … }` (lines 3..9).
        assert 3 <= e.range.start.line and e.range.end.line <= 9, e.range


async def test_code_actions(client: LanguageClient):
    if not client.init_result.capabilities.code_action_provider:
        pytest.skip("no codeActionProvider")
    open_doc(client)
    # A selection inside `count`: both Fill selection and Rewrite function are offered.
    actions = await code_actions(client, t.Range(start=t.Position(line=6, character=8), end=t.Position(line=6, character=20)))
    titles = [a["title"] for a in actions]
    assert any("fill" in x.lower() for x in titles) and any("rewrite" in x.lower() for x in titles), titles
    for a in actions:
        cmd = a.get("command") if "title" in a and isinstance(a.get("command"), dict) else a
        assert cmd["command"] in commands(client), cmd
        assert isinstance(cmd.get("arguments"), list) and cmd["arguments"][0]["uri"] == URI, cmd
    # An empty range outside any function: no fill (nothing selected), no rewrite (no function).
    actions = await code_actions(client, t.Range(start=t.Position(line=0, character=0), end=t.Position(line=0, character=0)))
    assert actions == [], actions


async def test_code_action_command_round_trip(client: LanguageClient):
    """A code action's command, executed as an editor would, ends in workspace/applyEdit."""
    open_doc(client)
    line = LINES[6]
    rng = t.Range(start=t.Position(line=6, character=8), end=t.Position(line=6, character=len(line)))
    actions = await code_actions(client, rng)
    fill = [a["command"] for a in actions if isinstance(a.get("command"), dict) and "fill" in a["command"]["command"].lower()]
    assert fill, actions
    cmd = fill[0]
    client.applied_edits.clear()
    await asyncio.wait_for(
        client.workspace_execute_command_async(t.ExecuteCommandParams(command=cmd["command"], arguments=cmd["arguments"])),
        TIMEOUT,
    )
    for _ in range(50):
        if client.applied_edits:
            break
        await asyncio.sleep(0.1)
    edits = edits_for(client, URI)
    assert edits, "no workspace/applyEdit from the code action's command"
    for e in edits:
        assert e.range.start.line == 6 and e.range.end.line == 6, e.range


@pytest.mark.parametrize(
    "command, args",
    [
        ("fill", {"uri": URI, "range": {"start": {"line": 6, "character": 8}, "end": {"line": 6, "character": 8}}}),
        ("fill", {"uri": URI}),
        ("fill", "not an object"),
        ("rewrite", {"uri": URI, "position": {"line": 99, "character": 0}}),
        ("rewrite", {"uri": "file:///work/demo/src/unknown.rs", "position": {"line": 0, "character": 0}}),
        ("no-such-command", {}),
    ],
    ids=["empty-selection", "missing-range", "bad-type", "position-past-end", "unknown-document", "unknown-command"],
)
async def test_bad_command_arguments(client: LanguageClient, command, args):
    open_doc(client)
    name = "diffusion-ls.noSuchCommand" if command == "no-such-command" else find_command(client, command)
    client.applied_edits.clear()
    try:
        result = await asyncio.wait_for(
            client.workspace_execute_command_async(t.ExecuteCommandParams(command=name, arguments=[args])), TIMEOUT
        )
    except JsonRpcException as e:
        assert e.code in (-32602, -32603), e
    else:
        # Not an error: then it must not have edited anything.
        assert not (isinstance(result, dict) and result.get("applied")), result
        assert not client.applied_edits
    await alive(client)


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
