//! Conversions between the service's plain types and LSP's: positions in the negotiated
//! encoding, completion answers as inline and menu items, edits as workspace edits, the
//! capabilities, and the service's errors as JSON-RPC errors.

use std::collections::HashMap;

use ropey::Rope;
use tower_lsp_server::jsonrpc;
use tower_lsp_server::ls_types::*;

use super::ext::{self, AcceptArgs, FillArgs, RewriteArgs};
use crate::context::line_around;
use crate::document::TextChange;
use crate::finish::is_closing;
use crate::position::{self, Encoding, LineCol};
use crate::service::{self, Actions, Completed};

pub fn line_col(p: Position) -> LineCol {
    LineCol::new(p.line, p.character)
}

pub fn position(rope: &Rope, byte: usize, enc: Encoding) -> Position {
    let p = position::from_byte(rope, byte, enc);
    Position::new(p.line, p.col)
}

pub fn range(rope: &Rope, bytes: std::ops::Range<usize>, enc: Encoding) -> Range {
    Range::new(
        position(rope, bytes.start, enc),
        position(rope, bytes.end, enc),
    )
}

pub fn text_changes(changes: Vec<TextDocumentContentChangeEvent>) -> Vec<TextChange> {
    changes
        .into_iter()
        .map(|c| TextChange {
            range: c.range.map(|r| (line_col(r.start), line_col(r.end))),
            text: c.text,
        })
        .collect()
}

pub fn encoding_kind(enc: Encoding) -> PositionEncodingKind {
    match enc {
        Encoding::Utf8 => PositionEncodingKind::UTF8,
        Encoding::Utf16 => PositionEncodingKind::UTF16,
        Encoding::Utf32 => PositionEncodingKind::UTF32,
    }
}

/// Tabby's rule: when the rest of the line is only closing characters, an item replaces them
/// (re-typing them at its end), so the editor can show it as an extension of the line. The end
/// of the range, and the text the item ends with.
fn closers_after(rope: &Rope, byte: usize) -> (usize, String) {
    let (_, rest) = line_around(rope, byte);
    if !rest.is_empty() && rest.chars().all(|c| is_closing(c) || c == ' ' || c == '\t') {
        (byte + rest.len(), rest)
    } else {
        (byte, String::new())
    }
}

pub fn inline_completions(uri: &Uri, done: &Completed, enc: Encoding) -> InlineCompletionResponse {
    let rope = &done.snapshot.rope;
    let (end, rest) = closers_after(rope, done.cursor);
    let range = range(rope, done.cursor..end, enc);
    let items = done
        .answer
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| InlineCompletionItem {
            insert_text: format!("{}{rest}", item.text),
            filter_text: None,
            range: Some(range),
            command: Some(Command {
                title: "Accept diffusion completion".into(),
                command: ext::ACCEPT_COMMAND.into(),
                arguments: Some(vec![to_value(&AcceptArgs {
                    uri: uri.clone(),
                    version: Some(done.snapshot.version),
                    index: Some(index),
                })]),
            }),
            insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
        })
        .collect();
    InlineCompletionResponse::List(InlineCompletionList { items })
}

/// Menu items replace the line from its start, so that the client's filter (the line before
/// the cursor) keeps them while the user types.
pub fn menu_completions(done: &Completed, enc: Encoding) -> CompletionResponse {
    let rope = &done.snapshot.rope;
    let (line_prefix, _) = line_around(rope, done.cursor);
    let line_start = done.cursor - line_prefix.len();
    let (end, rest) = closers_after(rope, done.cursor);
    let range = range(rope, line_start..end, enc);
    let items = done
        .answer
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| CompletionItem {
            label: item
                .text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string(),
            kind: Some(CompletionItemKind::TEXT),
            detail: Some("diffusion completion".into()),
            filter_text: Some(line_prefix.clone()),
            sort_text: Some(format!("{i:04}")),
            preselect: Some(i == 0),
            insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
            text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                range,
                new_text: format!("{line_prefix}{}{rest}", item.text),
            })),
            ..Default::default()
        })
        .collect();
    // Incomplete: the answer depends on the exact prefix, so the client must ask again.
    CompletionResponse::List(CompletionList {
        is_incomplete: true,
        items,
    })
}

/// One text edit of a document version, in the form the client can take.
pub fn workspace_edit(
    uri: &Uri,
    version: i32,
    edit: TextEdit,
    document_changes: bool,
) -> WorkspaceEdit {
    if document_changes {
        WorkspaceEdit {
            document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                text_document: OptionalVersionedTextDocumentIdentifier {
                    uri: uri.clone(),
                    version: Some(version),
                },
                edits: vec![OneOf::Left(edit)],
            }])),
            ..Default::default()
        }
    } else {
        WorkspaceEdit {
            changes: Some(HashMap::from([(uri.clone(), vec![edit])])),
            ..Default::default()
        }
    }
}

pub fn code_actions(uri: &Uri, range: Range, actions: Actions) -> CodeActionResponse {
    let action = |title: &str, command: &str, arguments: serde_json::Value| {
        CodeActionOrCommand::CodeAction(CodeAction {
            title: title.into(),
            kind: Some(CodeActionKind::REFACTOR_REWRITE),
            command: Some(Command {
                title: title.into(),
                command: command.into(),
                arguments: Some(vec![arguments]),
            }),
            ..Default::default()
        })
    };
    let mut out = Vec::new();
    if actions.fill {
        let args = to_value(&FillArgs {
            uri: uri.clone(),
            range,
        });
        out.push(action(
            "Fill selection (diffusion)",
            ext::FILL_COMMAND,
            args,
        ));
    }
    if actions.rewrite {
        let args = to_value(&RewriteArgs {
            uri: uri.clone(),
            position: range.start,
        });
        out.push(action(
            "Rewrite function (diffusion)",
            ext::REWRITE_COMMAND,
            args,
        ));
    }
    out
}

pub fn capabilities(enc: Encoding) -> ServerCapabilities {
    ServerCapabilities {
        position_encoding: Some(encoding_kind(enc)),
        text_document_sync: Some(TextDocumentSyncCapability::Options(
            TextDocumentSyncOptions {
                open_close: Some(true),
                change: Some(TextDocumentSyncKind::INCREMENTAL),
                ..Default::default()
            },
        )),
        completion_provider: Some(CompletionOptions::default()),
        inline_completion_provider: Some(OneOf::Left(true)),
        code_action_provider: Some(CodeActionProviderCapability::Options(CodeActionOptions {
            code_action_kinds: Some(vec![CodeActionKind::REFACTOR_REWRITE]),
            ..Default::default()
        })),
        execute_command_provider: Some(ExecuteCommandOptions {
            commands: vec![
                ext::ACCEPT_COMMAND.into(),
                ext::FILL_COMMAND.into(),
                ext::REWRITE_COMMAND.into(),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Our own types always serialise; `Null` would only hide a bug, never crash the server.
fn to_value(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

pub fn invalid_params(message: impl std::fmt::Display) -> jsonrpc::Error {
    jsonrpc::Error::invalid_params(message.to_string())
}

/// LSP's codes for each way a request goes wrong. Work stopped by a newer edit or a newer
/// request answers ContentModified (rust-analyzer's convention: the client asks again, and
/// shows nothing); work stopped by shutdown answers RequestCancelled.
impl From<service::Error> for jsonrpc::Error {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        let code = match &e {
            E::UnknownDocument(_) | E::Position(_) | E::Plan(_) | E::EmptySelection => {
                return invalid_params(e)
            }
            E::Modified | E::Superseded => jsonrpc::ErrorCode::ContentModified,
            E::ShuttingDown => jsonrpc::ErrorCode::RequestCancelled,
            E::Engine(_) | E::Model(_) => jsonrpc::ErrorCode::InternalError,
        };
        jsonrpc::Error {
            code,
            message: e.to_string().into(),
            data: None,
        }
    }
}
