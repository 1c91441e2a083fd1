"""Export a trained model as the Hugging Face folder the Rust engine loads (`--model DIR`, and
the embedded default in model/default/): config.json, tokenizer.json, safetensors (f16 unless
asked otherwise), sharded with an index when the tensors exceed `shard_mb`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .data import EOS, FIM_PREFIX, FIM_SUFFIX, MASK, SPAN_KINDS
from .model import DiffusionLM

# How the engine lays out an infill request for each training layout (model/src/config.rs).
ENGINE_LAYOUT = {"psm": "bidirectional", "spm": "spm_block"}


def hf_config(model: DiffusionLM, layout: str, logits: str = "shifted", max_positions: int | None = None,
              torch_dtype: str = "float16") -> dict:
    c = model.cfg
    return {
        "architectures": ["DiffusionQwen2"],
        "model_type": "qwen2",
        "diffusion_logits": logits,
        "infill_layout": ENGINE_LAYOUT[layout],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "max_position_embeddings": max_positions or c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "sliding_window": None,
        "eos_token_id": EOS,
        "pad_token_id": EOS,
        "mask_token_id": MASK,
        "fim_prefix_token_id": FIM_PREFIX,
        "fim_suffix_token_id": FIM_SUFFIX,
        "torch_dtype": torch_dtype,
        "span_kinds": dict(SPAN_KINDS),
    }


def export(model: DiffusionLM, out: str | Path, tokenizer: str | Path, layout: str, *,
           dtype: torch.dtype = torch.float16, shard_mb: float = 0, logits: str = "shifted",
           max_positions: int | None = None, extra: dict | None = None) -> list[Path]:
    """Writes the folder; returns the safetensors files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    cfg = hf_config(model, layout, logits, max_positions, name)
    if extra:
        cfg.update(extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if Path(tokenizer).resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    limit = shard_mb * 1e6
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if limit <= 0 or total <= limit:
        path = out / "model.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        return [path]
    shards: list[dict] = [{}]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    paths, weight_map = [], {}
    for i, shard in enumerate(shards):
        path = out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        paths.append(path)
        weight_map.update({k: path.name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def main(argv=None):
    """python -m diffusion_train.export RUN_DIR OUT_DIR [--max-positions N]: a run's checkpoint as an engine folder."""
    import argparse

    from .model import ModelConfig
    from .recipes import RECIPES

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--tokenizer", default=None, help="default: the run's")
    ap.add_argument("--max-positions", type=int, default=None, help="default: the run's sequence length")
    ap.add_argument("--shard-mb", type=float, default=0)
    args = ap.parse_args(argv)
    run = Path(args.run)
    ck = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    run_args = json.loads((run / "args.json").read_text())
    model = DiffusionLM(ModelConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    recipe = RECIPES[run_args["recipe"]]
    tokenizer = args.tokenizer or str((run / run_args["tokenizer"]) if not Path(run_args["tokenizer"]).is_absolute()
                                      else run_args["tokenizer"])
    files = export(model, args.out, tokenizer, recipe.layout, shard_mb=args.shard_mb,
                   max_positions=args.max_positions or run_args["seq_len"],
                   extra={"training": {"tokens": ck["state"]["tokens"], "recipe": recipe.name,
                                       "seq_len": run_args["seq_len"]}})
    print(f"exported {args.out}: {', '.join(f.name for f in files)} ({ck['state']['tokens']:,} tokens)")


if __name__ == "__main__":
    main()
