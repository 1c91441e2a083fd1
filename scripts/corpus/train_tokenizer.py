#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of the default model on the corpus.

    python3 scripts/corpus/train_tokenizer.py --train corpus/train.jsonl --val corpus/val.jsonl \
        --out model/default/tokenizer.json

Byte-level BPE (Python `tokenizers`, version pinned in requirements.txt), vocab 8192 in all:
ids 0 `<|endoftext|>` (end of infill / pad / eos), 1 `<|mask|>`, 2-4 the fill-in-the-middle
sentinels `<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>`, then the 256 byte symbols, then
merges. Pre-tokenizer: a code-aware split (identifiers stay whole, `_` included: GPT-2's regex
cut them at every `_`, and `_` was 6.1% of all tokens), then ByteLevel without its own regex;
ByteLevel decoder, no normalizer, no post-processor. Trains on all train files (or, with --sample-mb N, a
deterministic ~N MB sample of whole files; all 226 MB take ~90 s on one core), then reloads the
saved file, reports bytes/token on the val files and checks that decode(encode(x)) == x on
--roundtrip val files (files with non-ASCII text first, so all of those are included).
Exits non-zero if a round trip fails.
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
import tokenizers

SPECIALS = ["<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]

# Pieces BPE may not merge across: an identifier or keyword (letters, digits, `_`) with at most
# one leading space, a number, a lifetime/char quote, a run of punctuation, whitespace runs
# (a newline with the next line's indentation stays one piece, as in GPT-2's regex).
SPLIT = (r" ?[\p{L}_][\p{L}\p{N}_]*| ?\p{N}[\p{L}\p{N}_]*| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def sample_texts(path, sample_mb):
    """Deterministic sample of whole files: files ordered by a hash of crate/path, taken until sample_mb."""
    rows = [(hashlib.sha256(f"{r['crate']}/{r['path']}".encode()).digest(), r["text"]) for r in read_jsonl(path)]
    total = sum(len(t.encode()) for _, t in rows)
    if sample_mb <= 0 or total <= sample_mb * 1e6:
        return [t for _, t in rows], total
    rows.sort(key=lambda x: x[0])
    out, n = [], 0
    for _, t in rows:
        if n >= sample_mb * 1e6:
            break
        out.append(t)
        n += len(t.encode())
    return out, n


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="corpus/train.jsonl")
    ap.add_argument("--val", default="corpus/val.jsonl")
    ap.add_argument("--out", default="model/default/tokenizer.json")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=0, help="learn merges from a ~N MB sample of train files (default 0: all of train)")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--roundtrip", type=int, default=200, help="val files checked for decode(encode(x)) == x")
    ap.add_argument("--report", default=None, help="also write the report as JSON here")
    args = ap.parse_args()

    t0 = time.time()
    texts, nbytes = sample_texts(args.train, args.sample_mb)
    print(f"training on {len(texts)} files, {nbytes / 1e6:.1f} MB (tokenizers {tokenizers.__version__})", file=sys.stderr)
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        min_frequency=args.min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    del texts
    assert tok.token_to_id("<|endoftext|>") == 0, "special token <|endoftext|> must be id 0"
    for i, name in enumerate(SPECIALS):
        assert tok.token_to_id(name) == i, f"special token {name} must be id {i}"
    assert tok.get_vocab_size() == args.vocab, f"vocab {tok.get_vocab_size()} != {args.vocab}"
    assert tok.normalizer is None and tok.post_processor is None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"trained in {time.time() - t0:.0f}s, saved {args.out}", file=sys.stderr)

    # reload from disk: everything below tests the saved file
    tok = Tokenizer.from_file(args.out)
    val = list(read_jsonl(args.val))
    val_texts = [r["text"] for r in val]
    encs = tok.encode_batch(val_texts, add_special_tokens=False)
    vbytes = sum(len(t.encode()) for t in val_texts)
    vtoks = sum(len(e.ids) for e in encs)

    # round trip: all non-ASCII val files first, then the others, up to --roundtrip files
    order = sorted(range(len(val)), key=lambda i: (val_texts[i].isascii(), hashlib.sha256(
        f"{val[i]['crate']}/{val[i]['path']}".encode()).digest()))
    checked = order[: args.roundtrip]
    fails = []
    for i in checked:
        dec = tok.decode(encs[i].ids, skip_special_tokens=False)
        if dec != val_texts[i]:
            fails.append(f"{val[i]['crate']}/{val[i]['path']}")
    non_ascii = sum(1 for i in checked if not val_texts[i].isascii())
    # a few extra strings: unicode, tabs, CRLF, special-looking text
    extra = ["fn main() {\n\tprintln!(\"héllo wörld — ✓ 日本語 🦀\");\r\n}\n", "   \n\n  x", "",
             "let s = \"\\u{1F980}\"; // ½ ≠ ∞", "a<|mask|>b"]
    extra_fail = [s for s in extra if tok.decode(tok.encode(s, add_special_tokens=False).ids,
                                                 skip_special_tokens=False) != s]
    report = {
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": tok.get_vocab_size(),
        "specials": {s: tok.token_to_id(s) for s in SPECIALS},
        "train_sample_bytes": nbytes,
        "val_files": len(val),
        "val_bytes": vbytes,
        "val_tokens": vtoks,
        "val_bytes_per_token": round(vbytes / max(1, vtoks), 4),
        "val_underscore_token_share": round(sum(e.tokens.count("_") for e in encs) / max(1, vtoks), 4),
        "roundtrip_files": len(checked),
        "roundtrip_non_ascii_files": non_ascii,
        "roundtrip_failures": fails,
        "roundtrip_extra_failures": extra_fail,
    }
    print(json.dumps(report, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    if fails or extra_fail:
        sys.exit(1)


if __name__ == "__main__":
    main()
