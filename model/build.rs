//! Embeds the default model (model/default/) when all of its files are present.

// Cargo reads a build script's instructions from its stdout.
#![allow(clippy::print_stdout)]

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
    println!("cargo:rustc-check-cfg=cfg(default_model)");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    println!("cargo:rerun-if-changed={}", dir.display());
    let complete = ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .all(|f| dir.join(f).exists());
    if complete {
        println!("cargo:rustc-cfg=default_model");
    }
}
