#!/usr/bin/env bash
# Screenshot of diffusion-ls ghost text in VS Code (code-server in headless Chromium).
# Not run in CI: it installs code-server 4.100 (npm, Node 20), Debian's chromium and playwright-core
# into target/code-server/, which takes a few minutes and a few hundred MB.
#
#   editors/screenshot/run.sh [out.png]        (default editors/screenshot.png)
# Env: DIFFUSION_LS (default target/release/diffusion-ls), DIFFUSION_LS_MODEL (default the shipped
# model in model/default), PORT (default 8765).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/editors/screenshot.png}")"
WORK="$ROOT/target/code-server"
BIN="${DIFFUSION_LS:-$ROOT/target/release/diffusion-ls}"
MODEL="${DIFFUSION_LS_MODEL:-$ROOT/model/default}"
PORT="${PORT:-8765}"
mkdir -p "$WORK"
BIN="$(realpath "$BIN")"

# Debian packages: the browser, and what code-server's native modules build against (its npm
# postinstall compiles them; node-gyp takes Node's headers from /usr/include/node).
need=()
for p in chromium libkrb5-dev libxkbfile-dev libsecret-1-dev pkg-config ripgrep build-essential python3; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [[ ${#need[@]} -gt 0 ]]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
if [[ ! -x "$WORK/node_modules/.bin/code-server" ]]; then
  # @vscode/ripgrep's postinstall downloads rg from GitHub; give it Debian's from its cache instead.
  rgcache="$(node -p 'require("os").tmpdir()')/vscode-ripgrep-cache-1.15.11"
  mkdir -p "$rgcache" "$WORK/rg"
  cp "$(command -v rg)" "$WORK/rg/rg"
  tar czf "$rgcache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$WORK/rg" rg
  (cd "$WORK" && npm init -y >/dev/null &&
    npm_config_yes=true npm_config_unsafe_perm=true npm_config_nodedir=/usr \
      npm install --no-audit --no-fund --foreground-scripts code-server@4.100.3 playwright-core@1)
fi

# The extension, packaged and installed into a private extensions folder.
(cd "$ROOT/editors/vscode" && npm ci --no-audit --no-fund && npx vsce package --out "$WORK/diffusion-ls.vsix")
rm -rf "$WORK/user" "$WORK/ext" "$WORK/ws"
CS=("$WORK/node_modules/.bin/code-server" --config "$WORK/config.yaml" --user-data-dir "$WORK/user" --extensions-dir "$WORK/ext")
"${CS[@]}" --install-extension "$WORK/diffusion-ls.vsix"

# A small Rust project and the settings that point the extension at the binary and model.
mkdir -p "$WORK/ws/src" "$WORK/user/User"
cat > "$WORK/ws/Cargo.toml" <<'TOML'
[package]
name = "demo"
version = "0.1.0"
edition = "2021"
TOML
cat > "$WORK/ws/src/main.rs" <<'RS'
/// Sum of the squares of the even numbers.
fn sum_even_squares(xs: &[i64]) -> i64 {
    xs.iter().filter(|x| *x % 2 == 0).map(|x| x * x).sum()
}

fn main() {
    let total =
    println!("{total}");
}
RS
cat > "$WORK/user/User/settings.json" <<JSON
{
  "diffusionLs.serverPath": "$BIN",
  "diffusionLs.serverArgs": ["--model", "$MODEL"],
  "diffusionLs.steps": 4,
  "diffusionLs.maxSpanTokens": 16,
  "diffusionLs.debounceMs": 0,
  "diffusionLs.verify": false,
  "editor.inlineSuggest.enabled": true,
  "editor.quickSuggestions": { "other": false, "comments": false, "strings": false },
  "workbench.startupEditor": "none",
  "workbench.colorTheme": "Default Dark Modern",
  "security.workspace.trust.enabled": false,
  "git.enabled": false,
  "git.openRepositoryInParentFolders": "never",
  "telemetry.telemetryLevel": "off"
}
JSON

"${CS[@]}" --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry --disable-update-check \
  --disable-workspace-trust "$WORK/ws" >"$WORK/code-server.log" 2>&1 &
CS_PID=$!
trap 'kill "$CS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done

cd "$WORK"
cp "$ROOT/editors/screenshot/drive.mjs" "$WORK/drive.mjs"  # so it resolves playwright-core from $WORK
URL="http://127.0.0.1:$PORT/?folder=$WORK/ws" OUT="$WORK/screenshot.png" LINE=7 CHROMIUM="$(command -v chromium)" \
  node "$WORK/drive.mjs" && rc=0 || rc=$?
cp "$WORK/screenshot.png" "$OUT"
echo "screenshot: $OUT (after accepting and filling: $WORK/screenshot-after.png)"
exit $rc
