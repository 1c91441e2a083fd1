//! Model configuration read from a Hugging Face `config.json` (Qwen2 / Dream / LLaDA families).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Which position's hidden state predicts a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitsConvention {
    /// MDLM / LLaDA: the hidden state at i predicts token i.
    InPlace,
    /// Dream family (adapted from autoregressive weights): the hidden state at i-1 predicts token i.
    Shifted,
}

/// How an infill request is laid out and attended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InfillLayout {
    /// Dream / LLaDA: `prefix span suffix`, every position attends to every other.
    #[default]
    Bidirectional,
    /// An autoregressive model adapted to block diffusion: the context
    /// `<|fim_suffix|> suffix <|fim_prefix|> prefix` is causal, so its keys/values are an AR
    /// model's and stay exact across keystrokes; the span after it attends to all of the
    /// context and to the whole span.
    SpmBlock,
}

impl InfillLayout {
    /// Context positions the layout adds to prefix and suffix (the two sentinels of SPM).
    pub fn sentinel_tokens(self) -> usize {
        match self {
            InfillLayout::Bidirectional => 0,
            InfillLayout::SpmBlock => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InfillLayout::Bidirectional => "bidirectional",
            InfillLayout::SpmBlock => "spm_block",
        }
    }
}

/// Tensor naming scheme of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFamily {
    /// `model.layers.N.self_attn.q_proj.weight`, ...
    Qwen2,
    /// `model.transformer.blocks.N.q_proj.weight`, ... (LLaDA, OLMo-style).
    Llada,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2 does, LLaDA does not).
    pub qkv_bias: bool,
    pub logits: LogitsConvention,
    pub infill_layout: InfillLayout,
    pub family: WeightFamily,
    pub mask_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Sentinels of the SPM layout; the tokenizer falls back to `<|fim_prefix|>` / `<|fim_suffix|>`.
    pub fim_prefix_token_id: Option<u32>,
    pub fim_suffix_token_id: Option<u32>,
    /// `span_kinds` in config.json: the masked positions the trainer sized each of the server's
    /// span kinds to (`{"line": 24, "block": 64}`), the lengths the model learned to fill.
    /// Empty when absent; the names are the server's, this crate reads only the numbers.
    pub span_kinds: BTreeMap<String, usize>,
}

/// Largest `max_position_embeddings` accepted: positions are exact in f32 up to 2^24.
pub const MAX_POSITIONS: usize = 1 << 24;

/// The raw JSON: every field optional so that a missing one is reported by name.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    d_model: Option<usize>,
    intermediate_size: Option<usize>,
    mlp_hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    n_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    n_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    n_kv_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    max_sequence_length: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    tie_word_embeddings: Option<bool>,
    weight_tying: Option<bool>,
    include_bias: Option<bool>,
    diffusion_logits: Option<LogitsConvention>,
    infill_layout: Option<InfillLayout>,
    mask_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    fim_prefix_token_id: Option<serde_json::Value>,
    fim_suffix_token_id: Option<serde_json::Value>,
    span_kinds: Option<BTreeMap<String, usize>>,
}

/// Token ids may be a number, null, or (for eos) a list; take the first.
fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|n| n as u32),
        _ => None,
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_owned(),
            field: "(json)".into(),
            reason: e.to_string(),
        })?;
        let missing = |field: &str| ModelError::Config {
            path: path.to_owned(),
            field: field.into(),
            reason: "missing".into(),
        };
        let arch = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let lower = arch.to_ascii_lowercase();
        let model_type = raw
            .model_type
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (family, default_logits) = if lower.contains("llada") || model_type == "llada" {
            (WeightFamily::Llada, LogitsConvention::InPlace)
        } else if lower.contains("dream") || model_type == "dream" {
            (WeightFamily::Qwen2, LogitsConvention::Shifted)
        } else if lower.contains("qwen2") || model_type == "qwen2" || lower.contains("diffusion") {
            (WeightFamily::Qwen2, LogitsConvention::InPlace)
        } else {
            return Err(ModelError::UnknownArchitecture {
                path: path.to_owned(),
                found: if arch.is_empty() {
                    "(none)".into()
                } else {
                    arch
                },
            });
        };
        let hidden_size = raw
            .hidden_size
            .or(raw.d_model)
            .ok_or_else(|| missing("hidden_size"))?;
        let num_attention_heads = raw
            .num_attention_heads
            .or(raw.n_heads)
            .ok_or_else(|| missing("num_attention_heads"))?;
        let cfg = Config {
            vocab_size: raw.vocab_size.ok_or_else(|| missing("vocab_size"))?,
            hidden_size,
            intermediate_size: raw
                .intermediate_size
                .or(raw.mlp_hidden_size)
                .ok_or_else(|| missing("intermediate_size"))?,
            num_hidden_layers: raw
                .num_hidden_layers
                .or(raw.n_layers)
                .ok_or_else(|| missing("num_hidden_layers"))?,
            num_attention_heads,
            num_key_value_heads: raw
                .num_key_value_heads
                .or(raw.n_kv_heads)
                .unwrap_or(num_attention_heads),
            max_position_embeddings: raw
                .max_position_embeddings
                .or(raw.max_sequence_length)
                .unwrap_or(4096),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            tie_word_embeddings: raw
                .tie_word_embeddings
                .or(raw.weight_tying)
                .unwrap_or(false),
            qkv_bias: raw.include_bias.unwrap_or(family == WeightFamily::Qwen2),
            // An AR-first model predicts the next token at every position.
            logits: raw.diffusion_logits.unwrap_or(match raw.infill_layout {
                Some(InfillLayout::SpmBlock) => LogitsConvention::Shifted,
                _ => default_logits,
            }),
            infill_layout: raw.infill_layout.unwrap_or_default(),
            family,
            mask_token_id: token_id(&raw.mask_token_id),
            pad_token_id: token_id(&raw.pad_token_id),
            eos_token_id: token_id(&raw.eos_token_id),
            fim_prefix_token_id: token_id(&raw.fim_prefix_token_id),
            fim_suffix_token_id: token_id(&raw.fim_suffix_token_id),
            span_kinds: raw.span_kinds.unwrap_or_default(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(ModelError::Config {
                path: path.to_owned(),
                field: field.into(),
                reason,
            })
        };
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(
                "num_attention_heads",
                format!("must divide hidden_size {}", self.hidden_size),
            );
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "must divide num_attention_heads {}",
                    self.num_attention_heads
                ),
            );
        }
        if self.infill_layout == InfillLayout::SpmBlock && self.logits != LogitsConvention::Shifted
        {
            return bad(
                "diffusion_logits",
                "infill_layout spm_block needs shifted logits (the context's last position \
                 predicts the first span token)"
                    .into(),
            );
        }
        if self.head_dim() % 2 != 0 {
            return bad("hidden_size", "head dimension must be even for RoPE".into());
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        // A length past the model's positions is the server's to clamp (it shares them with
        // the context); an empty span is no span.
        if let Some((kind, _)) = self.span_kinds.iter().find(|(_, &n)| n == 0) {
            return bad("span_kinds", format!("`{kind}`: 0 positions"));
        }
        // RoPE angles are computed from f32 positions, which stop being whole numbers past
        // 2^24; a span and its context need at least two positions.
        if !(2..=MAX_POSITIONS).contains(&self.max_position_embeddings) {
            return bad(
                "max_position_embeddings",
                format!(
                    "{} is outside 2..={MAX_POSITIONS}",
                    self.max_position_embeddings
                ),
            );
        }
        Ok(())
    }

    /// A model of our default family: bidirectional Qwen2 with tied embeddings, q/k/v biases,
    /// in-place logits, RoPE θ 10,000, `<|endoftext|>` = 0 (end/pad) and `<|mask|>` = 1.
    pub fn default_family(
        vocab_size: usize,
        hidden_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
        max_positions: usize,
    ) -> Self {
        Config {
            vocab_size,
            hidden_size,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            max_position_embeddings: max_positions,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            qkv_bias: true,
            logits: LogitsConvention::InPlace,
            infill_layout: InfillLayout::Bidirectional,
            family: WeightFamily::Qwen2,
            mask_token_id: Some(1),
            pad_token_id: Some(0),
            eos_token_id: Some(0),
            fim_prefix_token_id: None,
            fim_suffix_token_id: None,
            span_kinds: BTreeMap::new(),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parameter count (embeddings included).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim();
        let bias = if self.qkv_bias { d + 2 * kv } else { 0 };
        let layer = d * d * 2 + 2 * d * kv + bias + 3 * d * self.intermediate_size + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_nulls_and_names_missing_fields() {
        let p = Path::new("config.json");
        let ok = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "sliding_window":null,"eos_token_id":[3,4],"pad_token_id":null}"#;
        let cfg = Config::from_json(ok, p).unwrap();
        assert_eq!(cfg.num_key_value_heads, 2);
        assert_eq!(cfg.eos_token_id, Some(3));
        assert_eq!(cfg.pad_token_id, None);
        let err = Config::from_json(
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("hidden_size") && err.contains("config.json"),
            "{err}"
        );
        let err = Config::from_json(r#"{"architectures":["GPT2LMHeadModel"]}"#, p).unwrap_err();
        assert!(matches!(err, ModelError::UnknownArchitecture { .. }));
        let err =
            Config::from_json(r#"{"architectures":["DreamModel"], "vocab_size": "#, p).unwrap_err();
        assert!(err.to_string().contains("(json)"));
    }

    #[test]
    fn reads_span_kinds_and_checks_their_lengths() {
        let p = Path::new("config.json");
        let with = |kinds: &str| {
            let text = format!(
                r#"{{"architectures":["DiffusionQwen2"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
                "max_position_embeddings":128{kinds}}}"#
            );
            Config::from_json(&text, p)
        };
        assert!(with("").unwrap().span_kinds.is_empty());
        let cfg = with(r#","span_kinds":{"line":24,"block":64}"#).unwrap();
        assert_eq!(
            cfg.span_kinds,
            BTreeMap::from([("block".to_string(), 64), ("line".to_string(), 24)])
        );
        let err = with(r#","span_kinds":{"block":0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("span_kinds") && err.contains("block"), "{err}");
        assert!(with(r#","span_kinds":{"line":"long"}"#).is_err());
    }

    #[test]
    fn dream_defaults_to_shifted_logits() {
        let json = r#"{"architectures":["DreamModel"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let cfg = Config::from_json(json, Path::new("c.json")).unwrap();
        assert_eq!(cfg.logits, LogitsConvention::Shifted);
        assert_eq!(cfg.infill_layout, InfillLayout::Bidirectional);
    }

    #[test]
    fn reads_the_infill_layout_and_its_sentinels() {
        let json = r#"{"architectures":["DiffusionQwen2"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "infill_layout":"spm_block","fim_prefix_token_id":2,"fim_suffix_token_id":3}"#;
        let cfg = Config::from_json(json, Path::new("c.json")).unwrap();
        assert_eq!(cfg.infill_layout, InfillLayout::SpmBlock);
        assert_eq!(
            (cfg.fim_prefix_token_id, cfg.fim_suffix_token_id),
            (Some(2), Some(3))
        );
        assert_eq!(cfg.logits, LogitsConvention::Shifted);
        let bad = json.replace("spm_block", "psm");
        let err = Config::from_json(&bad, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("psm"), "{err}");
        let in_place = json.replace(
            r#""infill_layout""#,
            r#""diffusion_logits":"in_place","infill_layout""#,
        );
        let err = Config::from_json(&in_place, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("diffusion_logits"), "{err}");
    }
}
