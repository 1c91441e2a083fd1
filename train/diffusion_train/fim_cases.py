"""Fill-in-the-middle cases, in the format of ../shared/eval/dev.jsonl, cut from the validation
crates (which the corpus build holds out of training, split by crate):

    python -m diffusion_train.fim_cases --val ../corpus/val.jsonl --out ../runs/val-fim.jsonl

The dev set has 48 cases a kind, so one case moves a kind by 2 points and a checkpoint's ES by
about as much as 10M tokens of training do; these cases, as many as asked, make the ship
decision less of a coin toss. Kinds as dev.jsonl defines them (shared/eval/README.md):

- `line`: one whole line inside a function, after its indentation (not a comment, not only
  closers);
- `expr`: the arguments of a call, or the value of a `let`, on one line;
- `span`: 10-80 bytes inside a function body, from the start of one token to the end of another;
- `block`: the inside of a block of 3-10 lines, braces included, that is not a function's body;
- `body`: the inside of the body of a function of 3-25 lines.

`prefix + middle + suffix` is a window of whole top-level items around the hole (about 12,000
bytes before it and 6,000 after, as dev.jsonl), so it parses as the file does; files with a
syntax error are skipped. The same corpus, count and seed give the same cases.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import tree_sitter
import tree_sitter_rust

KINDS = ("line", "expr", "span", "block", "body")
PREFIX_BYTES, SUFFIX_BYTES = 12_000, 6_000
# At most this many cases of one kind from one file, so that a few big files do not fill a kind.
PER_FILE = 2


def parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_rust.language()))


def nodes(root):
    stack = [root]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def inside(block) -> tuple[int, int]:
    """Bytes between a block's braces."""
    return block.start_byte + 1, block.end_byte - 1


def function_bodies(root):
    for n in nodes(root):
        if n.type == "function_item":
            body = n.child_by_field_name("body")
            if body is not None:
                yield n, body


def holes(src: bytes, root, rng: random.Random) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of every hole of every kind in one parsed file."""
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
    bodies = list(function_bodies(root))
    body_ids = {b.id for _, b in bodies}
    starts = line_starts(src)
    for fn, body in bodies:
        lines = fn.end_point.row - fn.start_point.row + 1
        if 3 <= lines <= 25:
            out["body"].append(inside(body))
        # Lines strictly between the body's braces.
        first, last = body.start_point.row + 1, body.end_point.row - 1
        for row in range(first, last + 1):
            a, b = starts[row], starts[row + 1] - 1 if row + 1 < len(starts) else len(src)
            text = src[a:b]
            content = text.lstrip(b" \t")
            stripped = content.rstrip()
            if not stripped or stripped.startswith(b"//") or all(c in b")]};," for c in stripped):
                continue
            start = a + len(text) - len(content)
            out["line"].append((start, start + len(stripped)))
        leaves = [n for n in nodes(body) if n.child_count == 0 and n.end_byte > n.start_byte]
        leaves = leaves[1:-1]  # not the body's own braces
        for _ in range(2):
            if not leaves:
                break
            i = rng.randrange(len(leaves))
            ends = [m.end_byte for m in leaves[i:] if 10 <= m.end_byte - leaves[i].start_byte <= 80]
            if ends:
                out["span"].append((leaves[i].start_byte, rng.choice(ends)))
    for n in nodes(root):
        if n.type == "block" and n.id not in body_ids:
            rows = n.end_point.row - n.start_point.row + 1
            if 3 <= rows <= 10:
                out["block"].append(inside(n))
        elif n.type == "arguments" and n.start_point.row == n.end_point.row and n.named_child_count:
            out["expr"].append(inside(n))
        elif n.type == "let_declaration":
            value = n.child_by_field_name("value")
            if value is not None and value.start_point.row == value.end_point.row:
                out["expr"].append((value.start_byte, value.end_byte))
    in_fn = [(fn.start_byte, fn.end_byte) for fn, _ in bodies]
    out["expr"] = [h for h in out["expr"] if any(a <= h[0] and h[1] <= b for a, b in in_fn)]
    return out


def line_starts(src: bytes) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, c in enumerate(src) if c == 0x0A)
    return starts


def window(root, start: int, end: int) -> tuple[int, int]:
    """Whole top-level items around [start, end): back to ~12,000 bytes before, ~6,000 after."""
    items = [(c.start_byte, c.end_byte) for c in root.children]
    first = next(i for i, (a, b) in enumerate(items) if b > start)
    last = max(i for i, (a, b) in enumerate(items) if a < end)
    while first > 0 and start - items[first - 1][0] <= PREFIX_BYTES:
        first -= 1
    while last + 1 < len(items) and items[last + 1][1] - end <= SUFFIX_BYTES:
        last += 1
    return items[first][0], items[last][1]


def cases_of_file(crate: str, path: str, text: str, rng: random.Random, tsp) -> dict[str, list[dict]]:
    src = text.encode()
    tree = tsp.parse(src)
    if tree.root_node.has_error:
        return {}
    out: dict[str, list[dict]] = {}
    for kind, found in holes(src, tree.root_node, rng).items():
        rng.shuffle(found)
        for a, b in found[:PER_FILE]:
            if b <= a:
                continue
            lo, hi = window(tree.root_node, a, b)
            try:
                prefix, middle, suffix = (src[lo:a].decode(), src[a:b].decode(), src[b:hi].decode())
            except UnicodeDecodeError:
                continue
            if not middle.strip():
                continue
            out.setdefault(kind, []).append({
                "id": f"{crate}/{path}:{a}-{b}:{kind}", "lang": "rust", "kind": kind,
                "source": f"{crate}/{path}", "prefix": prefix, "middle": middle, "suffix": suffix,
            })
    return out


def make_cases(files: list[dict], per_kind: int, seed: int) -> list[dict]:
    """`per_kind` cases of each kind (fewer where the files have fewer), files in random order."""
    rng = random.Random(seed)
    order = list(range(len(files)))
    rng.shuffle(order)
    tsp = parser()
    picked: dict[str, list[dict]] = {k: [] for k in KINDS}
    for i in order:
        if all(len(v) >= per_kind for v in picked.values()):
            break
        f = files[i]
        file_rng = random.Random(f"{seed}:{f['crate']}/{f['path']}")
        for kind, cases in cases_of_file(f["crate"], f["path"], f["text"], file_rng, tsp).items():
            room = per_kind - len(picked[kind])
            picked[kind].extend(cases[:max(0, room)])
    return [c for k in KINDS for c in picked[k]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", default=str(Path(__file__).resolve().parents[2] / "corpus/val.jsonl"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-kind", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    files = [json.loads(l) for l in open(args.val)]
    cases = make_cases(files, args.per_kind, args.seed)
    with open(args.out, "w") as f:
        for c in cases:
            f.write(json.dumps(c) + "\n")
    counts = {k: sum(c["kind"] == k for c in cases) for k in KINDS}
    crates = len({c["source"].split("/")[0] for c in cases})
    print(f"{len(cases)} cases from {crates} crates: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
