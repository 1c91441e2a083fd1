//! docs/model-api.md stays true: it names every item `lib.rs` re-exports, every `ModelError`
//! variant (and no variant that does not exist), and every field of the request and result
//! types the server builds and reads.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names in `pub use …::{…};` and `pub use …::Name;` items of `lib.rs`, and its `pub fn`s.
fn exported(lib: &str) -> Vec<String> {
    let mut names = Vec::new();
    // Items after `pub mod internals` are for the benches and tests, not the API.
    let public = lib.split("pub mod internals").next().unwrap();
    for item in public.split("pub use ").skip(1) {
        let item = &item[..item.find(';').unwrap()];
        let list = match item.find('{') {
            Some(i) => &item[i + 1..item.rfind('}').unwrap()],
            None => item.rsplit("::").next().unwrap(),
        };
        names.extend(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from),
        );
    }
    for f in public.split("pub fn ").skip(1) {
        names.push(f[..f.find('(').unwrap()].to_string());
    }
    names
}

/// The `pub` field names of `pub struct name` in `src`.
fn fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("pub struct {name}"))
        .unwrap_or_else(|| panic!("no struct {name}"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap()..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .map(|f| f.trim().to_string())
        .collect()
}

fn variants(error_rs: &str) -> Vec<String> {
    let body = &error_rs[error_rs.find("pub enum ModelError").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .map(str::trim)
        .filter(|l| l.chars().next().is_some_and(char::is_uppercase))
        .map(|l| l.split(['(', ' ', '{', ',']).next().unwrap().to_string())
        .collect()
}

#[test]
fn the_api_page_names_what_the_crate_exports() {
    let doc = read("../docs/model-api.md");
    let missing: Vec<String> = exported(&read("src/lib.rs"))
        .into_iter()
        .filter(|n| !doc.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/model-api.md does not name {missing:?}"
    );
}

#[test]
fn the_api_page_lists_the_error_variants_that_exist() {
    let doc = read("../docs/model-api.md");
    let real = variants(&read("src/error.rs"));
    assert!(real.len() >= 8, "{real:?}");
    let errors = &doc[doc.find("pub enum ModelError").unwrap()..];
    let errors = &errors[..errors.find("\n}").unwrap()];
    let listed: Vec<String> = errors
        .lines()
        .skip(1)
        .map(str::trim)
        .map(|l| l.split(['(', ' ', '{', ',']).next().unwrap().to_string())
        .collect();
    assert_eq!(listed, real, "the ModelError variants of docs/model-api.md");
}

#[test]
fn the_api_page_lists_every_field_of_the_request_and_result_types() {
    let doc = read("../docs/model-api.md");
    let sampler = read("src/sampler.rs");
    for ty in [
        "InfillRequest",
        "SamplerParams",
        "StepView",
        "InfillOutput",
        "Completion",
        "InfillStats",
    ] {
        let documented = &doc[doc
            .find(&format!("pub struct {ty}"))
            .unwrap_or_else(|| panic!("docs/model-api.md has no {ty}"))..];
        let documented = &documented[..documented.find("\n}").unwrap()];
        for f in fields(&sampler, ty) {
            assert!(
                documented.contains(&format!("{f}:")),
                "docs/model-api.md: {ty} lacks the field `{f}`"
            );
        }
    }
}
