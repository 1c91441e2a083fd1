//! diffusion-ls's own protocol: its commands' arguments and results, and the requests the tests
//! and editor plugins use (`diffusionLs/status`, `diffusionLs/debugDocument`). Each is a typed
//! struct, so what goes on the wire is written down once.

use serde::{Deserialize, Serialize};
use tower_lsp_server::ls_types::{Position, Range, Uri};

use crate::config::Settings;
use crate::service::DocumentView;

pub const ACCEPT_COMMAND: &str = "diffusion-ls.acceptCompletion";
pub const FILL_COMMAND: &str = "diffusion-ls.fillSelection";
pub const REWRITE_COMMAND: &str = "diffusion-ls.rewriteFunction";
/// `{uri, waitForSyntax?}` → [`DocumentView`]: the server's copy of a document.
pub const DEBUG_DOCUMENT: &str = "diffusionLs/debugDocument";
/// Waits for the model to load (or fail), then [`Status`].
pub const DEBUG_STATUS: &str = "diffusionLs/status";
/// Panics inside the handler when `DIFFUSION_LS_TEST_PANIC` is set (the tests check that a
/// panicking request leaves the server running); MethodNotFound otherwise.
pub const DEBUG_PANIC: &str = "diffusionLs/debugPanic";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebugDocumentParams {
    pub uri: Uri,
    #[serde(default)]
    pub wait_for_syntax: bool,
}

/// The answer to [`DEBUG_DOCUMENT`].
pub type DebugDocument = DocumentView;

/// The answer to [`DEBUG_STATUS`].
#[derive(Serialize)]
pub struct Status {
    pub ready: bool,
    /// The model's description, or why there is none (shown by the editor plugins).
    pub model: String,
    pub settings: Settings,
}

/// Arguments of [`FILL_COMMAND`].
#[derive(Serialize, Deserialize)]
pub struct FillArgs {
    pub uri: Uri,
    pub range: Range,
}

/// Arguments of [`REWRITE_COMMAND`].
#[derive(Serialize, Deserialize)]
pub struct RewriteArgs {
    pub uri: Uri,
    pub position: Position,
}

/// Arguments of [`ACCEPT_COMMAND`], which an inline item runs when the user accepts it (only
/// logged: what is missing is left out).
#[derive(Serialize, Deserialize, Debug)]
pub struct AcceptArgs {
    pub uri: Uri,
    #[serde(default)]
    pub version: Option<i32>,
    #[serde(default)]
    pub index: Option<usize>,
}

/// The result of a fill / rewrite command, sent after `workspace/applyEdit` came back.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct EditOutcome {
    pub applied: bool,
    /// Why nothing changed (for the user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl EditOutcome {
    pub fn applied(applied: bool) -> EditOutcome {
        EditOutcome {
            applied,
            reason: (!applied).then(|| "the client did not apply the edit".to_string()),
        }
    }

    pub fn not_applied(reason: String) -> EditOutcome {
        EditOutcome {
            applied: false,
            reason: Some(reason),
        }
    }
}
