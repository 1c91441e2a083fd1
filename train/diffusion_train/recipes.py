"""Training recipes as values: which samples a run draws at each point of its token budget.

A recipe is a list of phases; a phase lasts a number of tokens and draws each sample from a
mix of objectives (names of `data.Builder` methods, with their options). The learning rate is
warm-up, then constant, then (if the recipe says so) a linear decay to 10% over the last
`decay` share of its tokens (warmup-stable-decay: a constant run can branch and decay anywhere).

The recipe A/B of MODEL.md gives each recipe the same token budget (2.5M: what the 2-core machine
could do in one session beside the builds). `trunk` is the shared autoregressive start of the
AR-first recipes; they branch from its checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

M = 1_000_000


@dataclass(frozen=True)
class Phase:
    tokens: int | None  # None: open-ended (the long run)
    mix: dict[str, float]
    ar_weight: float = 1.0  # weight of the context's autoregressive loss in `spm_block`


@dataclass(frozen=True)
class Recipe:
    name: str
    layout: str  # "spm" or "psm": how the exported model is read at inference
    phases: tuple[Phase, ...]
    decay: float = 0.0  # share of the total tokens over which the learning rate decays
    notes: str = ""

    @property
    def total(self) -> int | None:
        if any(p.tokens is None for p in self.phases):
            return None
        return sum(p.tokens for p in self.phases)

    def phase_at(self, tokens: int) -> Phase:
        end = 0
        for p in self.phases:
            if p.tokens is None:
                return p
            end += p.tokens
            if tokens < end:
                return p
        return self.phases[-1]


TRUNK = Phase(2 * M, {"ar": 0.5, "spm_fim": 0.5})
ADAPT = M // 2
MDLM_MIX = {"mdlm_window": 0.65, "psm_block": 0.35}
BLOCK_MIX = {"spm_block": 0.7, "spm_fim": 0.15, "ar": 0.15}

RECIPES = {r.name: r for r in [
    Recipe("mdlm", "psm", (Phase(TRUNK.tokens + ADAPT, MDLM_MIX),), decay=0.1,
           notes="(a) masked diffusion with shifted logits from scratch, Dream layout"),
    Recipe("trunk", "spm", (TRUNK,),
           notes="shared start of (b) and (c): autoregressive, half the samples FIM in SPM order"),
    Recipe("ar_then_mdlm", "psm", (TRUNK, Phase(ADAPT, MDLM_MIX)), decay=0.1,
           notes="(b) AR first, then bidirectional masked diffusion (Dream / DiffuCoder adaptation)"),
    Recipe("ar_then_block", "spm", (TRUNK, Phase(ADAPT, BLOCK_MIX)), decay=0.1,
           notes="(c) AR-FIM first, then block diffusion over the middle, the context causal"),
    Recipe("ar_then_block_only", "spm", (TRUNK, Phase(ADAPT, {"spm_block": 1.0}, ar_weight=0.0)), decay=0.1,
           notes="(d) as (c), but the adaptation drops every autoregressive loss: the middle's denoising alone"),
    # The long run: the winner's last phase, open-ended, at constant learning rate.
    Recipe("long_block", "spm", (Phase(None, BLOCK_MIX),),
           notes="the long run of the chosen recipe (c), resumed across sessions"),
    # Tests and the CPU rehearsal of the GPU command: every objective, tiny budget.
    Recipe("smoke", "spm", (Phase(None, {"ar": 0.25, "spm_fim": 0.25, "spm_block": 0.5}),)),
]}


def lr_at(step: int, tokens: int, recipe: Recipe, lr: float, warmup: int, *, warm_from: int = 0,
          decay_end: int | None = None, decay_tokens: int = 0) -> float:
    """Warm-up over `warmup` steps from `warm_from` (a branch warms up again), constant, then a
    linear decay to 10%: over the recipe's last `decay` share, or over the `decay_tokens`
    before `decay_end` (a cool-down of an open-ended run before an export)."""
    scale = min(1.0, (step - warm_from + 1) / max(1, warmup))
    start = end = None
    if decay_end and decay_tokens:
        start, end = decay_end - decay_tokens, decay_end
    elif recipe.decay > 0 and recipe.total:
        start, end = recipe.total * (1 - recipe.decay), recipe.total
    if start is not None and tokens > start:
        scale *= 1.0 - 0.9 * min(1.0, (tokens - start) / max(1, end - start))
    return lr * scale


def describe() -> list[dict]:
    return [{"name": r.name, "layout": r.layout, "tokens": r.total, "notes": r.notes} for r in RECIPES.values()]


__all__ = ["Phase", "Recipe", "RECIPES", "lr_at", "describe"]
