"""The trainer's checks: samples, gradients, learning, resuming, export, parity fixtures, DDP."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from diffusion_train.data import EOS, FIM_PREFIX, FIM_SUFFIX, MASK, SPAN_KINDS, Builder, Corpus, collate, shifted_loss
from diffusion_train.export import export
from diffusion_train.fim_cases import KINDS, make_cases, parser
from diffusion_train.fixtures import convention
from diffusion_train.model import DiffusionLM, ModelConfig
from diffusion_train.train import main as train_main

TRAIN = Path(__file__).resolve().parent.parent
REPO = TRAIN.parent
FIXTURES = REPO / "model/tests/fixtures"
# The trainer's tokenizer (the default model's), as committed with the parity fixtures.
TOKENIZER = FIXTURES / "trainer-spm/tokenizer.json"


def rust_files(n=40, seed=0):
    """Small, varied Rust sources for the tests (the real corpus is not in the repository)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = rng.choice(["parse", "render", "count", "merge", "split_at"])
        body = "\n".join(f"    let v{j} = {name}_{j}(&x, {rng.randint(0, 99)});" for j in range(rng.randint(3, 12)))
        out.append(f"use std::fmt;\n\n/// Does {name}.\npub fn {name}_{i}(x: &[u8]) -> usize {{\n{body}\n    x.len()\n}}\n\n"
                   f"impl fmt::Display for T{i} {{\n    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {{\n"
                   f"        write!(f, \"{{}}\", self.0)\n    }}\n}}\n")
    return out


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(str(TOKENIZER))


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for split, seed in [("train", 0), ("val", 1)]:
        with open(d / f"{split}.jsonl", "w") as f:
            for i, t in enumerate(rust_files(60 if split == "train" else 10, seed)):
                f.write(json.dumps({"crate": f"c{i}", "path": "src/lib.rs", "text": t}) + "\n")
    return d


def tiny_cfg(**kw):
    base = dict(vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base.update(kw)
    return ModelConfig(**base)


# ------------------------------------------------------------------ samples


def test_spm_block_sample_has_the_engine_layout(tok):
    b = Builder(tok, 192, random.Random(1))
    corpus = Corpus(rust_files())
    for _ in range(20):
        s = b.spm_block(corpus, 0.6, 1.0)
        ids, tg, w = s.ids, s.targets, s.weights
        assert len(ids) == len(tg) == len(w) == 192
        assert ids[0] == FIM_SUFFIX and FIM_PREFIX in ids
        c = ids.index(FIM_PREFIX) + 1
        while ids[c] != MASK and tg[c] == ids[c] and s.attn[c, c + 1] == 0:
            c += 1  # the prefix: causal rows
        # c is now the first block position: block rows see everything before them and the block
        assert s.attn[c, :c].all()
        assert not s.attn[c - 1, c:].any(), "the context never sees the middle"
        assert np.array_equal(s.attn[:c, :c], np.tril(np.ones((c, c), dtype=bool)))
        masked = [j for j in range(c, 192) if ids[j] == MASK]
        assert masked, "at least one masked position"
        for j in masked:
            assert w[j] == pytest.approx(1 / 0.6)
            assert tg[j] != MASK
        assert tg[c:].count(EOS) >= 1, "the middle ends with an end token"
        assert w[0] == 0.0


def test_psm_block_masks_only_the_middle(tok):
    b = Builder(tok, 160, random.Random(2))
    corpus = Corpus(rust_files())
    for _ in range(20):
        s = b.psm_block(corpus, 0.5)
        scored = [j for j, x in enumerate(s.weights) if x > 0]
        assert scored and all(s.ids[j] == MASK for j in scored)
        assert all(s.targets[j] == s.ids[j] for j in range(160) if s.ids[j] != MASK)
        real = [j for j in range(160) if s.attn[0, j]]
        assert len(real) == s.attn[real[-1]].sum(), "real positions see all real positions"


def test_fim_tokenizes_the_middle_apart_like_the_server(tok):
    b = Builder(tok, 256, random.Random(3))
    text = rust_files(1)[0]
    for _ in range(20):
        prefix, middle, suffix = b.split(text)
        assert 0 < len(middle) < b.max_block
        joined = tok.decode(prefix + middle + suffix)
        assert joined in text


# ------------------------------------------------------------------ gradients and learning


def test_gradients_match_finite_differences(tok):
    torch.manual_seed(0)
    m = DiffusionLM(tiny_cfg(vocab_size=64, hidden_size=16, intermediate_size=24, num_attention_heads=2,
                             num_key_value_heads=1)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = Builder(tok, 24, random.Random(4))
    samples = []
    for kind in range(3):
        ids = [random.Random(kind).randrange(5, 64) for _ in range(24)]
        s = b.ar(Corpus(rust_files()))
        s.ids, s.targets = list(ids), list(ids)
        if kind:  # masked positions, bidirectional or block attention
            for j in (5, 9, 17):
                s.ids[j] = MASK
            s.weights = [2.0 if j in (5, 9, 17) else 0.0 for j in range(24)]
            s.attn = np.ones((24, 24), dtype=bool) if kind == 1 else s.attn
        samples.append(s)
    batch = collate(samples)
    loss, _ = shifted_loss(m, batch)
    loss.backward()
    params = dict(m.named_parameters())
    rng = random.Random(5)
    for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.bias", "model.layers.1.mlp.down_proj.weight",
                 "model.layers.0.input_layernorm.weight", "model.norm.weight"]:
        p = params[name]
        flat = p.detach().view(-1)
        for _ in range(3):
            i = rng.randrange(flat.numel())
            if name.endswith("embed_tokens.weight"):
                i = (batch["ids"][0, 3].item()) * p.shape[1] + rng.randrange(p.shape[1])
            eps = 1e-6
            with torch.no_grad():
                flat[i] += eps
                up = shifted_loss(m, batch)[0].item()
                flat[i] -= 2 * eps
                down = shifted_loss(m, batch)[0].item()
                flat[i] += eps
            numeric = (up - down) / (2 * eps)
            analytic = p.grad.view(-1)[i].item()
            assert abs(numeric - analytic) <= 1e-6 + 1e-4 * abs(numeric), (name, i, numeric, analytic)


def test_learns_to_copy_through_block_attention():
    """The middle repeats the prefix: only attention from the block to the context can solve it."""
    torch.manual_seed(0)
    m = DiffusionLM(tiny_cfg(vocab_size=40, hidden_size=64, intermediate_size=128))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = random.Random(0)
    n = 6
    c = n + 2

    def batch(size):
        samples = []
        for _ in range(size):
            seq = [rng.randrange(5, 40) for _ in range(n)]
            ctx = [FIM_SUFFIX, FIM_PREFIX] + seq
            t = rng.uniform(0.3, 1.0)
            masked = [rng.random() < t for _ in range(n)]
            masked[rng.randrange(n)] = True
            ids = ctx + [MASK if mk else x for x, mk in zip(seq, masked)]
            attn = np.zeros((c + n, c + n), dtype=bool)
            attn[:c, :c] = np.tril(np.ones((c, c), dtype=bool))
            attn[c:] = True
            from diffusion_train.data import Sample
            samples.append(Sample(ids, ctx + seq, [0.0] * c + [1.0 if mk else 0.0 for mk in masked], attn, n))
        return collate(samples)

    for _ in range(300):
        loss, _ = shifted_loss(m, batch(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        b = batch(64)
        b["ids"][:, c:] = MASK
        b["weights"][:, c:] = 1.0
        _, metrics = shifted_loss(m, b)
    assert metrics["acc"] > 0.9, metrics


# ------------------------------------------------------------------ runs, resume, export


def run_args(corpus, out, *extra):
    return ["--corpus", str(corpus / "train.jsonl"), "--val", str(corpus / "val.jsonl"),
            "--tokenizer", str(TOKENIZER), "--preset", "tiny", "--recipe", "smoke", "--out", str(out),
            "--seq-len", "96", "--batch", "4", "--log-every", "2", "--val-every", "4", "--val-batches", "1",
            "--ckpt-every", "3", "--no-progress", *extra]


def test_resumed_run_equals_uninterrupted_run(corpus_files, tmp_path):
    step_tokens = 96 * 4
    train_main(run_args(corpus_files, tmp_path / "a", "--tokens", str(8 * step_tokens)))
    train_main(run_args(corpus_files, tmp_path / "b", "--tokens", str(5 * step_tokens)))
    train_main(run_args(corpus_files, tmp_path / "b", "--tokens", str(8 * step_tokens)))
    a = torch.load(tmp_path / "a/ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b/ckpt.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6)
    log = [json.loads(l) for l in open(tmp_path / "b/log.jsonl")]
    assert any("val" in r for r in log) and any("loss" in r for r in log)
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_bf16_compiled_run_trains_the_same_model(corpus_files, tmp_path):
    # The CPU speed settings (bf16 autocast, each layer compiled in place) change the arithmetic,
    # not the run: the checkpoint has the same names and the losses on the same batches agree.
    step_tokens = 96 * 4
    train_main(run_args(corpus_files, tmp_path / "f32", "--tokens", str(4 * step_tokens)))
    train_main(run_args(corpus_files, tmp_path / "fast", "--tokens", str(4 * step_tokens), "--bf16", "--compile"))
    a = torch.load(tmp_path / "f32/ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "fast/ckpt.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys() and b["state"]["step"] == 4
    losses = [[r["loss"] for r in map(json.loads, open(tmp_path / run / "log.jsonl")) if "loss" in r]
              for run in ("f32", "fast")]
    assert len(losses[0]) == len(losses[1]) == 2
    for x, y in zip(*losses):
        assert abs(x - y) < 0.02 * x, losses


def test_a_run_from_exported_weights_goes_on_with_the_data_stream(corpus_files, tmp_path):
    # Batches are a function of (seed, step): a start from an export must not replay step 0's.
    step_tokens = 96 * 4
    train_main(run_args(corpus_files, tmp_path / "a", "--tokens", str(6 * step_tokens),
                        "--export", str(tmp_path / "a-export")))
    train_main(run_args(corpus_files, tmp_path / "b", "--tokens", str(9 * step_tokens),
                        "--init-from", str(tmp_path / "a-export")))
    b = torch.load(tmp_path / "b/ckpt.pt", weights_only=False)
    assert b["state"]["step"] == 9 and b["state"]["warm_from"] == 6
    steps = [json.loads(l)["step"] for l in open(tmp_path / "b/log.jsonl")]
    assert min(steps) > 6


def test_export_is_the_folder_the_engine_loads(tmp_path):
    torch.manual_seed(1)
    m = DiffusionLM(tiny_cfg())
    files = export(m, tmp_path / "x", TOKENIZER, "spm", shard_mb=0.3)
    assert len(files) >= 2
    index = json.loads((tmp_path / "x/model.safetensors.index.json").read_text())
    cfg = json.loads((tmp_path / "x/config.json").read_text())
    assert cfg["infill_layout"] == "spm_block" and cfg["diffusion_logits"] == "shifted"
    assert cfg["tie_word_embeddings"] and cfg["mask_token_id"] == MASK and cfg["eos_token_id"] == EOS
    # The span kinds the server reads, as the one definition has them.
    assert cfg["span_kinds"] == SPAN_KINDS == {"line": 24, "block": 64}
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    assert set(state) == set(index["weight_map"]) == set(m.state_dict())
    assert "lm_head.weight" not in state
    assert all(t.dtype == torch.float16 for t in state.values())
    assert (tmp_path / "x/tokenizer.json").read_bytes() == TOKENIZER.read_bytes()


@pytest.mark.parametrize("name", ["trainer-inplace", "trainer-shifted", "trainer-spm"])
def test_model_reproduces_the_engine_parity_fixtures(name):
    """The committed fixtures (which the Rust engine must match) are still this model's logits."""
    folder = FIXTURES / name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["span_kinds"] == SPAN_KINDS, "the fixture's config.json is the trainer's export"
    ref = json.loads((folder / "reference.json").read_text())
    m = DiffusionLM(ModelConfig(**{k: cfg[k] for k in ModelConfig().to_dict()}))
    state = {}
    for f in sorted(folder.glob("model*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    m.load_state_dict(state)
    ids = torch.tensor(ref["input_ids"])
    mask = None
    if ref["layout"] == "spm_block":
        c, n = ref["context_len"], ids.shape[1]
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[:c, :c] = torch.tril(torch.ones(c, c, dtype=torch.bool))
        mask[c:] = True
        mask = mask[None].expand(ids.shape[0], n, n)
    with torch.no_grad():
        rows = convention(m(ids, mask), cfg["diffusion_logits"])
    torch.testing.assert_close(rows[..., :ref["cols"]], torch.tensor(ref["logits"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.logsumexp(rows, -1), torch.tensor(ref["logsumexp"]), rtol=0, atol=1e-4)


def test_data_parallel_two_processes_keep_replicas_equal(corpus_files, tmp_path):
    """torchrun with two CPU processes (gloo): the trainer checks that the replicas agree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TRAIN)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffusion_train.train", *run_args(corpus_files, tmp_path / "ddp", "--tokens", str(6 * 96 * 4 * 2),
                                                    "--threads", "1")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replicas agree: parameter checksum spread 0.000e+00 over 2 processes" in r.stderr
    state = torch.load(tmp_path / "ddp/ckpt.pt", weights_only=False)["state"]
    assert state["step"] == 6 and state["tokens"] == 6 * 96 * 4 * 2


def test_gpu_command_rehearses_on_cpu(corpus_files, tmp_path):
    """scripts/gpu-train.sh, the command prepared for the GPU machine, on CPU with a tiny model:
    it reads the xz corpus, trains, and brings back a sharded f16 export and the log."""
    import lzma
    xz = tmp_path / "train.jsonl.xz"
    with lzma.open(xz, "wt") as f:
        f.write((corpus_files / "train.jsonl").read_text())
    out = tmp_path / "back"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "PRESET": "tiny", "SEQ_LEN": "96",
           "BATCH": "4", "MINUTES": "5", "OUT": str(out), "RUN": str(tmp_path / "run"),
           "CORPUS": os.path.relpath(xz, REPO), "VAL": os.path.relpath(corpus_files / "val.jsonl", REPO),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(REPO / "scripts/gpu-train.sh"), "--tokens", str(4 * 96 * 4), "--shard-mb", "0.3",
                        "--tokenizer", str(TOKENIZER), "--log-every", "2"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    shards = sorted((out / "model").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model/model.safetensors.index.json").exists()
    assert max(f.stat().st_size for f in shards) < 16 * 2**20
    cfg = json.loads((out / "model/config.json").read_text())
    assert cfg["max_position_embeddings"] == 96 and cfg["torch_dtype"] == "float16"
    assert any("loss" in json.loads(l) for l in open(out / "log.jsonl"))


def test_curve_point_scores_each_kind_and_all(tmp_path):
    from diffusion_train.plot import append_point

    cases = [
        {"kind": "line", "em": True, "es": 1.0, "empty": False},
        {"kind": "line", "em": False, "es": 0.5, "empty": False},
        {"kind": "block", "em": False, "es": 0.0, "empty": True},
    ]
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps(c) + "\n" for c in cases))
    curve = tmp_path / "curve.jsonl"
    append_point(str(curve), "run", "1.5e6", str(ev))
    point = json.loads(curve.read_text())
    assert point["tokens"] == 1_500_000
    assert point["table"]["line"] == {"n": 2, "em": 0.5, "es": 0.75, "empty": 0.0}
    assert point["table"]["all"]["n"] == 3
    assert abs(point["table"]["all"]["empty"] - 1 / 3) < 1e-9
    # The plot takes that curve and another case set's "all" beside it.
    from diffusion_train.plot import plot_curve
    other = tmp_path / "other.jsonl"
    append_point(str(other), "run", "2e6", str(ev))
    plot_curve(str(tmp_path / "curve.png"), str(curve), str(other))
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_fim_cases_have_the_dev_kinds_and_windows_that_parse():
    files = [{"crate": f"c{i}", "path": "src/lib.rs", "text": t} for i, t in enumerate(rust_files(30))]
    files.append({"crate": "broken", "path": "src/lib.rs", "text": "fn f( {\n    let x = g(1, 2);\n}\n"})
    files.append({"crate": "blocks", "path": "src/lib.rs",
                  "text": "fn f(x: bool) -> u32 {\n    if x {\n        a();\n        b()\n    } else {\n        0\n    }\n}\n"})
    cases = make_cases(files, per_kind=6, seed=1)
    assert cases == make_cases(files, per_kind=6, seed=1)
    assert {c["kind"] for c in cases} == set(KINDS)
    tsp = parser()
    for c in cases:
        assert c["source"].split("/")[0] != "broken"
        whole = c["prefix"] + c["middle"] + c["suffix"]
        assert not tsp.parse(whole.encode()).root_node.has_error, c["id"]
        m = c["middle"]
        if c["kind"] in ("line", "expr"):
            assert "\n" not in m and m == m.strip()
        if c["kind"] == "span":
            assert 10 <= len(m.encode()) <= 80
        if c["kind"] in ("block", "body"):
            assert c["prefix"].endswith("{") and c["suffix"].startswith("}") and "\n" in m
        if c["kind"] == "line":
            assert c["prefix"].endswith(("    ", "\n")) and c["suffix"].startswith("\n")
