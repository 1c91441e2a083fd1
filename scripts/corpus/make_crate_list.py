#!/usr/bin/env python3
"""Regenerate scripts/corpus/crates.txt from the seed manifests.

Not needed to build the corpus: crates.txt is committed and pinned. Run this only
to refresh the list (it resolves the newest versions on crates.io *now*):

    python3 scripts/corpus/make_crate_list.py [--out scripts/corpus/crates.txt]

Each file in scripts/corpus/seeds/ is a `[dependencies]` table of popular crates
(about 64 direct dependencies each). Each seed is resolved with
`cargo generate-lockfile` in a scratch directory; the union of the resolved
registry packages, newest version per crate name, minus the held-out evaluation
crates (/work/shared/eval/heldout-crates.txt or shared/eval/heldout-crates.txt),
is written as `name version` lines.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build import load_heldout, vkey  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "crates.txt"))
    ap.add_argument("--heldout", default=None, help="held-out crate list (default: auto-detect)")
    args = ap.parse_args()
    heldout = load_heldout(args.heldout)
    best = {}
    seeds = sorted((HERE / "seeds").glob("*.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            d = Path(tmp) / seed.stem
            (d / "src").mkdir(parents=True)
            (d / "src" / "lib.rs").write_text("")
            (d / "Cargo.toml").write_text(
                f'[package]\nname = "{seed.stem}"\nversion = "0.0.0"\nedition = "2021"\n'
                'publish = false\n\n[workspace]\n\n' + seed.read_text())
            subprocess.run(["cargo", "generate-lockfile", "--manifest-path", str(d / "Cargo.toml")], check=True)
            lock = tomllib.loads((d / "Cargo.lock").read_text())
            for p in lock["package"]:
                if "source" not in p:
                    continue
                n, v = p["name"], p["version"]
                if n not in best or vkey(v) > vkey(best[n]):
                    best[n] = v
    names = sorted(n for n in best if n not in heldout)
    with open(args.out, "w") as f:
        f.write("# Crates of the training corpus: `name version`, one per line (see README.md).\n")
        f.write(f"# Resolved from {', '.join('seeds/' + s.name for s in seeds)}: newest version per name,\n")
        f.write("# held-out evaluation crates removed. Regenerate with make_crate_list.py.\n")
        for n in names:
            f.write(f"{n} {best[n]}\n")
    print(f"wrote {len(names)} crates to {args.out} (dropped held-out: {sorted(set(best) & heldout)})")


if __name__ == "__main__":
    main()
