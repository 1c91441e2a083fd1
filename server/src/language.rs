//! Registry of tree-sitter grammars, chosen by LSP languageId or file extension.
//!
//! Adding a language is one entry in [`GRAMMARS`] plus its grammar crate.

use tree_sitter::Language;

/// What the server needs to know about one language.
pub struct Grammar {
    pub name: &'static str,
    /// LSP `languageId`s that select this grammar.
    pub language_ids: &'static [&'static str],
    /// File extensions (without the dot), for the CLI and eval.
    pub extensions: &'static [&'static str],
    language: fn() -> Language,
    /// Node kinds whose `body` field holds a `{ ... }` body that "Rewrite function" may replace.
    pub function_kinds: &'static [&'static str],
}

impl Grammar {
    pub fn language(&self) -> Language {
        (self.language)()
    }

    pub fn parser(&self) -> tree_sitter::Parser {
        let mut parser = tree_sitter::Parser::new();
        // Only fails on an ABI mismatch between the grammar and the library: a build problem.
        parser
            .set_language(&self.language())
            .expect("tree-sitter grammar ABI matches the tree-sitter library");
        parser
    }
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn rust() -> Language {
    tree_sitter_rust::LANGUAGE.into()
}

pub static GRAMMARS: &[Grammar] = &[Grammar {
    name: "rust",
    language_ids: &["rust"],
    extensions: &["rs"],
    language: rust,
    function_kinds: &["function_item", "closure_expression"],
}];

pub fn by_language_id(id: &str) -> Option<&'static Grammar> {
    GRAMMARS.iter().find(|g| g.language_ids.contains(&id))
}

pub fn by_path(path: &std::path::Path) -> Option<&'static Grammar> {
    let ext = path.extension()?.to_str()?;
    GRAMMARS.iter().find(|g| g.extensions.contains(&ext))
}
