#!/usr/bin/env python3
"""Build the Rust training corpus from the pinned crates in scripts/corpus/crates.txt.

    python3 scripts/corpus/build.py --out corpus/

Steps (details in scripts/corpus/README.md):
  1. Write scratch Cargo manifests under OUT/work/manifests/ depending on every
     listed crate with an exact `=version` pin (chunks of --chunk crates; a chunk
     that does not resolve is bisected until every part resolves), then one
     `cargo vendor --versioned-dirs` into OUT/work/vendor/.  The held-out
     evaluation crates are vendored separately into OUT/work/heldout-vendor/,
     only to fingerprint them; they never enter the corpus.
  2. Crate filters: held-out crates, versions not in the list, non-permissive
     licenses (SPDX expression parsed), generated FFI/binding crates.
  3. File filters (.rs only): vendored copies, > 200 KB, non-UTF-8, binding files,
     generated-file headers, data tables / long lines, near-empty files.
  4. Files that are near-copies of a held-out crate file are dropped.
  5. Exact dedupe (hash of normalized text) and near dedupe (MinHash over 5-token
     shingles, LSH, estimated Jaccard >= --near-threshold), first kept wins
     (crates in name order).
  6. Split by crate (crates in hash-of-name order until they hold ~2% of the bytes go
     to val, the rest to train) and
     write OUT/train.jsonl, OUT/val.jsonl ({"crate","path","text"} per line) and
     OUT/stats.json.

Needs: cargo, Python 3.11+, numpy (scripts/corpus/requirements.txt).
Re-running reuses OUT/work/vendor when crates.txt did not change (--revendor forces).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zlib
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# --------------------------------------------------------------------------- helpers


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)


def vkey(v):
    """Sort key for a semver version string (pre-releases sort before releases)."""
    main, _, pre = v.split("+")[0].partition("-")
    nums = []
    for x in main.split("."):
        try:
            nums.append(int(x))
        except ValueError:
            nums.append(0)
    return (tuple(nums), pre == "", pre)


def load_heldout(path=None):
    cands = [path] if path else [
        REPO / "shared/eval/heldout-crates.txt",
        REPO.parent / "shared/eval/heldout-crates.txt",
        Path("/work/shared/eval/heldout-crates.txt"),
    ]
    for p in cands:
        if p and Path(p).is_file():
            names = set()
            for line in Path(p).read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    names.add(line)
            return names
    raise SystemExit("held-out crate list not found; pass --heldout PATH")


def load_crate_list(path):
    crates = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, ver = line.split()
        crates.append((name, ver))
    return crates


# --------------------------------------------------------------------------- licenses

PERMISSIVE = {
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib",
    "Unlicense", "0BSD", "CC0-1.0", "BSL-1.0", "Unicode-3.0", "Unicode-DFS-2016",
}
PERMISSIVE_LOWER = {x.lower() for x in PERMISSIVE}
EXCEPTIONS = {"llvm-exception"}


def spdx_ok(expr):
    """True if the SPDX license expression allows use under a permissive license.

    Grammar: or := and ('OR' and)*; and := with ('AND' with)*;
    with := atom ('WITH' exception)?; atom := ID['+'] | '(' or ')'.
    Legacy `MIT/Apache-2.0` (slash) is read as OR.  Unknown syntax -> False.
    """
    if not expr:
        return False
    toks = re.findall(r"\(|\)|/|[A-Za-z0-9.+\-]+", expr)
    if "".join(toks) != re.sub(r"\s+", "", expr):
        return False  # stray characters
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def p_or():
        v = p_and()
        while peek() is not None and (peek().upper() == "OR" or peek() == "/"):
            take()
            v = p_and() or v  # evaluate both sides (consume tokens)
        return v

    def p_and():
        v = p_with()
        while peek() is not None and peek().upper() == "AND":
            take()
            w = p_with()
            v = v and w
        return v

    def p_with():
        v = p_atom()
        if peek() is not None and peek().upper() == "WITH":
            take()
            exc = take()
            v = v and exc.lower() in EXCEPTIONS
        return v

    def p_atom():
        t = take()
        if t == "(":
            v = p_or()
            if take() != ")":
                raise ValueError("unbalanced")
            return v
        if t in (")", "/") or t.upper() in ("AND", "OR", "WITH"):
            raise ValueError("unexpected " + t)
        return t.rstrip("+").lower() in PERMISSIVE_LOWER

    try:
        v = p_or()
        if pos != len(toks):
            return False
        return bool(v)
    except (ValueError, IndexError):
        return False


# --------------------------------------------------------------------------- crate / file filters

HELDOUT_RE = None  # set in main


def binding_crate(name):
    """Crates that are (almost) entirely generated FFI / platform bindings."""
    n = name.lower()
    return bool(
        n.endswith("-sys") or n.endswith("_sys") or "-sys-" in n
        or n.startswith("windows") or n.startswith("winapi") or n.startswith("wasi")
        or n in {"libc", "web-sys", "js-sys", "linux-raw-sys", "rustix-linux-raw-sys"}
        or n.startswith("objc2-") or n.startswith("core-foundation") or n.startswith("core-graphics")
        or n.startswith("icu_") and n.endswith("_data")
    )


VENDORED_DIRS = {"vendor", "vendored", "third_party", "third-party", "thirdparty", "target", ".git"}
BINDINGS_NAME_RE = re.compile(r"^(bindings|.*_bindings|bindings_.*)\.rs$", re.I)
GENERATED_NAME_RE = re.compile(r"generated", re.I)
GEN_RE = re.compile(
    r"@generated|do not (edit|modify)|auto-?generated|automatically generated|machine[- ]generated"
    r"|^\W*(this (file|code|module) (is|was|has been) )?(auto(matically)?[- ]?)?generated (by|from|with|using)\b"
    r"|^\W*this (file|code|module) (is|was|has been) (auto(matically)?[- ]?)?generated\b",
    re.I,
)
MAX_BYTES = 200_000

NUM_LIT = (r"(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?)"
           r"(?:_?(?:u8|u16|u32|u64|u128|usize|i8|i16|i32|i64|i128|isize|f32|f64))?")
CHAR_LIT = r"b?'(?:\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^'\\\n])'"
HEX_STR = r'b?"(?:[0-9a-fA-F ]|\\x[0-9a-fA-F]{2}|\\[0-7]{1,3})+"'
STR_LIT = r'b?"(?:[^"\\\n]|\\.)*"'
# literals that make up data tables: numbers, chars, hex/escaped-byte strings
DATA_LIT_RE = re.compile(rf"{CHAR_LIT}|{HEX_STR}|(?<![A-Za-z_]){NUM_LIT}")
STR_RE = re.compile(STR_LIT)
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

def header_generated(text):
    n = 0
    for line in text.splitlines()[:40]:
        s = line.strip()
        if not s:
            continue
        if s.startswith(("//", "/*", "*", "#")):
            if GEN_RE.search(s.lstrip("/!*# ")) or GEN_RE.search(s):
                return True
        else:
            n += 1
            if n > 5:  # past the header
                break
    return False


def data_table(text):
    """Files dominated by literal tables, or with very long lines.

    A line is a numeric data line if numeric/char/hex-string literals make up >= 50% of its
    non-space characters and at most 2 identifiers remain (e.g. `(0x41, 0x5a, Lu),`); a string
    data line holds string literals and no identifier at all (e.g. `"abstract", "as",`).
    A file (>= 10 code lines) is a table if > 50% of its code lines are numeric data lines or
    > 70% are data lines of either kind; also if a line exceeds 3000 chars or lines average > 150.
    """
    lines = text.split("\n")
    lens = [len(l) for l in lines if l.strip()]
    if not lens:
        return False
    if max(lens) > 3000 or sum(lens) / len(lens) > 150:
        return True
    code = num = strs = 0
    for l in lines:
        s = l.strip()
        if not s or s.startswith(("//", "/*", "*")):
            continue
        code += 1
        lits = DATA_LIT_RE.findall(s)
        if lits:
            nonspace = len(s) - s.count(" ") - s.count("\t")
            rem = STR_RE.sub(" ", DATA_LIT_RE.sub(" ", s))
            if sum(map(len, lits)) >= 0.5 * nonspace and len(IDENT_RE.findall(rem)) <= 2:
                num += 1
                continue
        if '"' in s and not IDENT_RE.search(STR_RE.sub(" ", s).replace("b ", " ")):
            strs += 1
    return code >= 10 and (num > 0.5 * code or num + strs > 0.7 * code)


PLAIN_COMMENT_RE = re.compile(
    r"'(?:[^'\\\n]|\\.)'|\"(?:[^\"\\]|\\.)*\"|(?<!/)//(?![/!]).*|/\*(?![*!])[\s\S]*?\*/")


def strip_plain_comments(text):
    """Drop non-doc comments (license headers etc.), keeping string and char literals (approximate)."""
    return PLAIN_COMMENT_RE.sub(lambda m: m.group(0) if m.group(0)[0] in "'\"" else " ", text)


def normalize(text):
    lines = [l.rstrip() for l in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


# --------------------------------------------------------------------------- MinHash

import numpy as np  # noqa: E402

TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9][A-Za-z0-9_.]*|\S")
SHINGLE = 5
HELD_K = 10  # longer shingles for the held-out check: boilerplate rarely matches
NPERM = 128
BANDS, ROWS = 32, 4
_tok_cache = {}
_rng = np.random.default_rng(20240611)
PERM_A = (_rng.integers(1, 2**63, NPERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1))
PERM_B = _rng.integers(0, 2**63, NPERM, dtype=np.uint64)
POW = np.array([0x9E3779B97F4A7C15 ** (i + 1) % 2**64 for i in range(max(SHINGLE, HELD_K))], dtype=np.uint64)


def _tid(t):
    v = _tok_cache.get(t)
    if v is None:
        v = zlib.crc32(t.encode("utf-8")) | (len(t) << 32)
        _tok_cache[t] = v
    return v


def token_ids(text):
    toks = TOKEN_RE.findall(text)
    return np.fromiter((_tid(t) for t in toks), dtype=np.uint64, count=len(toks))


def shingles(ids, k=SHINGLE):
    """Sorted unique uint64 hashes of k-token windows (tokens: identifiers, numbers, symbols)."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if n < k:
        ids = np.concatenate([ids, np.zeros(k - n, dtype=np.uint64)])
        n = k
    m = n - k + 1
    h = np.zeros(m, dtype=np.uint64)
    for i in range(k):
        h += ids[i:i + m] * POW[i]
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return np.unique(h)


def minhash(sh):
    if len(sh) == 0:
        return np.full(NPERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    sig = np.full(NPERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    for s in range(0, len(sh), 4096):
        blk = sh[s:s + 4096]
        v = blk[:, None] * PERM_A[None, :] + PERM_B[None, :]
        np.minimum(sig, v.min(axis=0), out=sig)
    return sig


# --------------------------------------------------------------------------- vendoring


def cargo(args, cwd=None, check=True):
    r = subprocess.run(["cargo", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"cargo {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def write_manifest(d, name, deps):
    d.mkdir(parents=True, exist_ok=True)
    (d / "src").mkdir(exist_ok=True)
    (d / "src" / "lib.rs").write_text("")
    lines = [f'[package]\nname = "{name}"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n',
             "# its own workspace root (the out dir may sit inside another workspace)\n[workspace]\n",
             "[dependencies]"]
    seen = Counter()
    for n, v in deps:
        seen[n] += 1
        if seen[n] == 1:
            lines.append(f'{n} = "{v}"')
        else:  # a second version of the same name: rename the dependency key
            lines.append(f'{n}-v{seen[n]} = {{ package = "{n}", version = "{v}" }}')
    (d / "Cargo.toml").write_text("\n".join(lines) + "\n")
    lock = d / "Cargo.lock"
    if lock.exists():
        lock.unlink()


def resolve_groups(crates, mdir, chunk):
    """Write manifests pinning `crates`; bisect chunks that do not resolve. Returns (dirs, unresolvable)."""
    dirs, failed = [], []
    counter = [0]

    def attempt(group):
        d = mdir / f"m{counter[0]:03d}"
        counter[0] += 1
        write_manifest(d, f"corpus-scratch-{d.name}", [(n, f"={v}") for n, v in group])
        r = cargo(["generate-lockfile", "--manifest-path", str(d / "Cargo.toml")], check=False)
        if r.returncode == 0:
            dirs.append(d)
            return
        shutil.rmtree(d)
        if len(group) == 1:
            log(f"cannot resolve {group[0][0]} {group[0][1]} alone: {r.stderr.strip().splitlines()[-1:]}")
            failed.append(group[0])
            return
        mid = len(group) // 2
        attempt(group[:mid])
        attempt(group[mid:])

    # several versions of one name go to different chunks
    by_round = defaultdict(list)
    seen = Counter()
    for n, v in crates:
        by_round[seen[n]].append((n, v))
        seen[n] += 1
    for r in sorted(by_round):
        lst = by_round[r]
        for i in range(0, len(lst), chunk):
            attempt(lst[i:i + chunk])
    return dirs, failed


def vendor(manifest_dirs, dest):
    if dest.exists():
        shutil.rmtree(dest)
    args = ["vendor", "--versioned-dirs", "--manifest-path", str(manifest_dirs[0] / "Cargo.toml")]
    for d in manifest_dirs[1:]:
        args += ["-s", str(d / "Cargo.toml")]
    args.append(str(dest))
    cargo(args)


def do_vendor(crates, heldout, work, chunk, force):
    stamp = work / "vendor.stamp"
    key = hashlib.sha256(repr((crates, sorted(heldout), chunk)).encode()).hexdigest()
    if not force and stamp.exists() and stamp.read_text() == key and (work / "vendor").is_dir():
        log("vendor dirs up to date, reusing", work / "vendor")
        return json.loads((work / "unresolvable.json").read_text())
    mdir = work / "manifests"
    if mdir.exists():
        shutil.rmtree(mdir)
    log(f"resolving {len(crates)} pinned crates in chunks of {chunk}")
    dirs, failed = resolve_groups(crates, mdir, chunk)
    log(f"{len(dirs)} manifests resolve; {len(failed)} crates unresolvable; running cargo vendor")
    vendor(dirs, work / "vendor")
    # held-out crates: vendored separately, used ONLY for fingerprints
    hdir = work / "heldout-manifest"
    if hdir.exists():
        shutil.rmtree(hdir)
    write_manifest(hdir, "corpus-heldout-fingerprints", [(n, "*") for n in sorted(heldout)])
    cargo(["generate-lockfile", "--manifest-path", str(hdir / "Cargo.toml")])
    vendor([hdir], work / "heldout-vendor")
    (work / "unresolvable.json").write_text(json.dumps(failed))
    stamp.write_text(key)
    return failed


# --------------------------------------------------------------------------- main


def read_crate_dir(d):
    try:
        meta = tomllib.loads((d / "Cargo.toml").read_text(encoding="utf-8"))
        pkg = meta["package"]
        return pkg["name"], str(pkg["version"]), pkg.get("license")
    except Exception:
        return None


def iter_rs(root):
    for dp, dns, fns in os.walk(root):
        dns[:] = sorted(x for x in dns if not os.path.islink(os.path.join(dp, x)))
        for fn in sorted(fns):
            if fn.endswith(".rs"):
                p = Path(dp) / fn
                if not p.is_symlink() and p.is_file():
                    yield p


def split_hash(name):
    return hashlib.sha256(("split:" + name).encode()).hexdigest()


def choose_val(per_crate, frac):
    """Validation crates: walk crates in the order of a hash of their name and take them until
    they hold `frac` of all kept bytes, skipping crates bigger than a quarter of that budget (so the
    val split is many crates, not one big one).  Deterministic for a given crate list."""
    total = sum(nb for _, nb in per_crate.values())
    target = frac * total
    val, vb = set(), 0
    for cid in sorted(per_crate, key=lambda c: split_hash(c.split("@")[0])):
        if vb >= target:
            break
        nb = per_crate[cid][1]
        if nb > 0.25 * target:
            continue
        val.add(cid)
        vb += nb
    return val


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="corpus", help="output dir (default corpus/)")
    ap.add_argument("--crates", default=str(HERE / "crates.txt"))
    ap.add_argument("--heldout", default=None, help="held-out crate list (default: shared/eval/heldout-crates.txt)")
    ap.add_argument("--chunk", type=int, default=64, help="crates per scratch manifest")
    ap.add_argument("--val-frac", type=float, default=0.02, help="share of kept bytes in the val crates")
    ap.add_argument("--near-threshold", type=float, default=0.8, help="MinHash Jaccard for near-duplicates")
    ap.add_argument("--revendor", action="store_true", help="re-run cargo vendor even if up to date")
    args = ap.parse_args()

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    heldout = load_heldout(args.heldout)
    listed = load_crate_list(args.crates)
    listed_clean = [(n, v) for n, v in listed if n not in heldout]
    if len(listed_clean) != len(listed):
        log("ignoring held-out crates in the list:", sorted({n for n, _ in listed if n in heldout}))
    failed = do_vendor(listed_clean, heldout, work, args.chunk, args.revendor)

    # newest listed version per name
    listed_best = {}
    for n, v in listed_clean:
        if n not in listed_best or vkey(v) > vkey(listed_best[n]):
            listed_best[n] = v

    crate_drop = Counter()
    crate_detail = {}
    file_drop = Counter()
    file_drop_bytes = Counter()
    heldout_dirs = []
    candidates = []  # (crate_id, name, dir)

    vdirs = sorted((work / "vendor").iterdir())
    log(f"{len(vdirs)} vendored crate dirs")
    for d in vdirs:
        info = read_crate_dir(d)
        if info is None:
            crate_drop["unreadable_manifest"] += 1
            crate_detail[d.name] = {"dropped": "unreadable_manifest"}
            continue
        name, ver, lic = info
        cid = f"{name}@{ver}"
        reason = None
        if name in heldout:
            reason = "heldout"
            heldout_dirs.append((cid, d))
        elif name not in listed_best:
            reason = "not_listed"
        elif ver != listed_best[name]:
            reason = "older_or_unlisted_version"
        elif not spdx_ok(lic):
            reason = "license"
        elif binding_crate(name):
            reason = "generated_bindings_crate"
        if reason:
            crate_drop[reason] += 1
            crate_detail[cid] = {"dropped": reason, "license": lic}
            continue
        candidates.append((cid, name, d))
        crate_detail[cid] = {"license": lic}
    hv = work / "heldout-vendor"
    if hv.is_dir():
        for d in sorted(hv.iterdir()):
            info = read_crate_dir(d)
            if info and info[0] in heldout:
                heldout_dirs.append((f"{info[0]}@{info[1]}", d))
    missing = sorted(set(listed_best) - {c[1] for c in candidates} - {k.split("@")[0] for k in crate_detail})
    if missing:
        crate_drop["not_vendored"] += len(missing)
        for n in missing:
            crate_detail[f"{n}@{listed_best[n]}"] = {"dropped": "not_vendored"}

    # ---- held-out fingerprints
    log(f"fingerprinting held-out crates: {sorted({c for c, _ in heldout_dirs})}")
    h_files = []  # (cid/path, shingle array)
    seen_h = set()
    for cid, d in heldout_dirs:
        for p in iter_rs(d):
            try:
                t = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
            nt = normalize(t)
            hh = hashlib.sha256(nt.encode()).digest()
            if hh in seen_h:
                continue
            seen_h.add(hh)
            h_files.append((f"{cid}/{p.relative_to(d)}", shingles(token_ids(strip_plain_comments(nt)), HELD_K)))
    h_index = defaultdict(list)
    for i, (_, sh) in enumerate(h_files):
        for x in sh.tolist():
            h_index[x].append(i)
    h_all = np.array(sorted(h_index), dtype=np.uint64)
    h_size = [len(sh) for _, sh in h_files]
    log(f"{len(h_files)} held-out files, {len(h_all)} shingles")

    # ---- file filters
    kept = []  # dicts
    n_seen = 0
    bytes_seen = 0
    exact_seen = {}
    lsh = [dict() for _ in range(BANDS)]
    sigs = []
    heldout_hits = []
    near_examples = []
    dropped_files = []
    for ci, (cid, name, d) in enumerate(candidates):
        if ci % 50 == 0:
            log(f"crate {ci}/{len(candidates)} {cid}: kept {len(kept)} files so far")
        for p in iter_rs(d):
            rel = p.relative_to(d).as_posix()
            size = p.stat().st_size
            n_seen += 1
            bytes_seen += size

            def drop(reason):
                file_drop[reason] += 1
                file_drop_bytes[reason] += size
                dropped_files.append({"file": f"{cid}/{rel}", "reason": reason, "bytes": size})

            parts = rel.split("/")[:-1]
            if any(x.lower() in VENDORED_DIRS for x in parts):
                drop("vendored_copy"); continue
            if size > MAX_BYTES:
                drop("too_large"); continue
            if BINDINGS_NAME_RE.match(p.name):
                drop("bindings_file"); continue
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                drop("non_utf8"); continue
            if text.startswith("\ufeff"):
                text = text[1:]
            text = text.replace("\r\n", "\n")
            if "\x00" in text:
                drop("non_utf8"); continue
            if GENERATED_NAME_RE.search(p.name) or header_generated(text):
                drop("generated"); continue
            if data_table(text):
                drop("data_table"); continue
            nt = normalize(text)
            if len(re.sub(r"\s", "", nt)) < 32:
                drop("near_empty"); continue
            ids = token_ids(nt)
            sh = shingles(ids)
            # held-out near copy?
            if len(h_all):
                shh = shingles(token_ids(strip_plain_comments(nt)), HELD_K)
                inter = shh[np.isin(shh, h_all, assume_unique=True)]
                if len(inter):
                    frac = len(inter) / max(1, len(shh))
                    cnt = Counter()
                    for x in inter.tolist():
                        for i in h_index[x]:
                            cnt[i] += 1
                    best_i, best_c = max(cnt.items(), key=lambda kv: kv[1] / h_size[kv[0]])
                    contain = best_c / h_size[best_i]
                    if (frac >= 0.5 and len(shh) >= 10) or (h_size[best_i] >= 30 and contain >= 0.6):
                        heldout_hits.append({"file": f"{cid}/{rel}", "frac_of_file": round(frac, 3),
                                             "heldout_file": h_files[best_i][0],
                                             "containment": round(contain, 3)})
                        drop("heldout_near_copy"); continue
            hx = hashlib.sha256(nt.encode()).digest()
            if hx in exact_seen:
                drop("exact_duplicate"); continue
            exact_seen[hx] = f"{cid}/{rel}"
            sig = minhash(sh)
            cands = set()
            keys = []
            for b in range(BANDS):
                k = sig[b * ROWS:(b + 1) * ROWS].tobytes()
                keys.append(k)
                for j in lsh[b].get(k, ()):
                    cands.add(j)
                    if len(cands) >= 200:
                        break
            dup = None
            for j in sorted(cands):
                if np.mean(sigs[j] == sig) >= args.near_threshold:
                    dup = j
                    break
            if dup is not None:
                if len(near_examples) < 200:
                    near_examples.append([f"{cid}/{rel}", kept[dup]["crate"] + "/" + kept[dup]["path"]])
                drop("near_duplicate"); continue
            idx = len(kept)
            sigs.append(sig)
            for b, k in enumerate(keys):
                lsh[b].setdefault(k, []).append(idx)
            kept.append({"crate": cid, "path": rel, "text": text})

    # ---- split and write
    per_crate = defaultdict(lambda: [0, 0])
    for r in kept:
        per_crate[r["crate"]][0] += 1
        per_crate[r["crate"]][1] += len(r["text"].encode())
    for cid, name, d in candidates:
        if cid not in per_crate:
            crate_drop["no_files_left"] += 1
            crate_detail[cid]["dropped"] = "no_files_left"
    splits = {"train": {"crates": 0, "files": 0, "bytes": 0}, "val": {"crates": 0, "files": 0, "bytes": 0}}
    val_crates = []
    split_of = {}
    val_set = choose_val(per_crate, args.val_frac)
    for cid, (nf, nb) in sorted(per_crate.items()):
        s = "val" if cid in val_set else "train"
        split_of[cid] = s
        splits[s]["crates"] += 1
        splits[s]["files"] += nf
        splits[s]["bytes"] += nb
        crate_detail[cid].update({"split": s, "files": nf, "bytes": nb})
        if s == "val":
            val_crates.append(cid)
    for s in splits:
        splits[s]["MB"] = round(splits[s]["bytes"] / 1e6, 2)
    fh = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8") for s in splits}
    for r in kept:
        fh[split_of[r["crate"]]].write(json.dumps(r, ensure_ascii=False) + "\n")
    for f in fh.values():
        f.close()

    stats = {
        "crates": {
            "listed": len(listed),
            "vendored_dirs": len(vdirs),
            "unresolvable": [f"{n}@{v}" for n, v in failed],
            "kept": len(per_crate),
            "dropped": dict(crate_drop.most_common()),
        },
        "files": {
            "rs_seen_in_candidate_crates": n_seen,
            "rs_bytes_seen": bytes_seen,
            "kept": len(kept),
            "kept_bytes": sum(v[1] for v in per_crate.values()),
            "dropped": dict(file_drop.most_common()),
            "dropped_bytes": dict(file_drop_bytes.most_common()),
        },
        "splits": splits,
        "val_crates": val_crates,
        "heldout_fingerprints": {"crates": sorted({c for c, _ in heldout_dirs}), "files": len(h_files)},
        "heldout_near_copies": heldout_hits,
        "near_duplicate_examples": near_examples[:50],
        "params": {"max_bytes": MAX_BYTES, "shingle_tokens": SHINGLE, "heldout_shingle_tokens": HELD_K, "minhash_perms": NPERM,
                   "lsh_bands": BANDS, "lsh_rows": ROWS, "near_threshold": args.near_threshold,
                   "val_frac": args.val_frac, "permissive_licenses": sorted(PERMISSIVE),
                   "license_exceptions": sorted(EXCEPTIONS)},
        "crate_detail": crate_detail,
    }
    with open(out / "dropped.jsonl", "w", encoding="utf-8") as f:
        for r in dropped_files:
            f.write(json.dumps(r) + "\n")
    (out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    log("splits:", json.dumps(splits))
    log("crates dropped:", dict(crate_drop), "files dropped:", dict(file_drop))


if __name__ == "__main__":
    main()
