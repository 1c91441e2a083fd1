//! The tokenizer of a checkpoint and the ids of its special tokens (mask, end-of-infill, and the
//! SPM sentinels).

use std::path::Path;
use std::sync::OnceLock;

use crate::config::{Config, InfillLayout};
use crate::error::{ModelError, Result};

/// Special token ids the sampler needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The token every not-yet-decoded position holds.
    pub mask: u32,
    /// Ends an infill: it and everything after it are dropped (pad / EOS).
    pub end: u32,
    /// Both SPM sentinels, when the model has them; always `Some` for an `spm_block` model.
    pub fim: Option<FimTokens>,
}

/// The sentinels that open the suffix and the prefix in the `spm_block` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
}

const MASK_NAMES: &[&str] = &["<|mask|>", "<|mdm_mask|>", "<mask>", "[MASK]", "<|MASK|>"];
const END_NAMES: &[&str] = &[
    "<|endoftext|>",
    "<|eot_id|>",
    "</s>",
    "<pad>",
    "[PAD]",
    "<|pad|>",
];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    /// Each id's decoded text, built on first use (token healing).
    texts: OnceLock<Vec<String>>,
    /// Added tokens marked special, sorted.
    added_special: Vec<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path, cfg: &Config) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes, path, cfg)
    }

    pub fn from_bytes(bytes: &[u8], path: &Path, cfg: &Config) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let by_name = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let missing = |what: &str| {
            ModelError::Tokenizer {
            path: path.to_owned(),
            reason: format!("no {what} token: set `{what}_token_id` in config.json or add one of the usual names"),
        }
        };
        let mask = cfg
            .mask_token_id
            .or_else(|| by_name(MASK_NAMES))
            .ok_or_else(|| missing("mask"))?;
        let end = cfg
            .pad_token_id
            .or(cfg.eos_token_id)
            .or_else(|| by_name(END_NAMES))
            .ok_or_else(|| missing("pad"))?;
        // An id past the embedding table would fail in the middle of a request instead.
        if let Some(max) = inner.get_vocab(true).values().max() {
            if *max as usize >= cfg.vocab_size {
                return Err(ModelError::Tokenizer {
                    path: path.to_owned(),
                    reason: format!(
                        "token id {max} is past the model's vocab_size {} (a tokenizer of \
                         another model?)",
                        cfg.vocab_size
                    ),
                });
            }
        }
        let fim_prefix = cfg
            .fim_prefix_token_id
            .or_else(|| inner.token_to_id("<|fim_prefix|>"));
        let fim_suffix = cfg
            .fim_suffix_token_id
            .or_else(|| inner.token_to_id("<|fim_suffix|>"));
        let fim = match (fim_prefix, fim_suffix) {
            (Some(prefix), Some(suffix)) => Some(FimTokens { prefix, suffix }),
            _ => None,
        };
        if cfg.infill_layout == InfillLayout::SpmBlock && fim.is_none() {
            let what = if fim_prefix.is_none() {
                "fim_prefix"
            } else {
                "fim_suffix"
            };
            return Err(ModelError::Tokenizer {
                path: path.to_owned(),
                reason: format!(
                    "infill_layout spm_block needs a {what} token: set `{what}_token_id` in \
                     config.json or add `<|{what}|>` to the tokenizer"
                ),
            });
        }
        let sentinels = fim
            .iter()
            .flat_map(|f| [("fim_prefix", f.prefix), ("fim_suffix", f.suffix)]);
        for (what, id) in [("mask", mask), ("pad", end)].into_iter().chain(sentinels) {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::Tokenizer {
                    path: path.to_owned(),
                    reason: format!(
                        "{what} token id {id} is outside the model's vocab_size {}",
                        cfg.vocab_size
                    ),
                });
            }
        }
        let mut added_special: Vec<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        added_special.sort_unstable();
        Ok(Self {
            inner,
            special: SpecialTokens { mask, end, fim },
            texts: OnceLock::new(),
            added_special,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenize(format!("tokenizing failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenize(format!("detokenizing failed: {e}")))
    }

    /// The decoded text of every id, in id order (computed once).
    pub fn token_texts(&self) -> &[String] {
        self.texts.get_or_init(|| {
            (0..self.vocab_size() as u32)
                .map(|id| self.inner.decode(&[id], false).unwrap_or_default())
                .collect()
        })
    }

    /// A special token: mask, end of infill, a FIM sentinel, or an added token marked special.
    pub fn is_special(&self, id: u32) -> bool {
        let s = self.special;
        id == s.mask
            || id == s.end
            || s.fim.is_some_and(|f| id == f.prefix || id == f.suffix)
            || self.added_special.binary_search(&id).is_ok()
    }

    /// The special tokens a span may never hold: all but the end of infill (a sentinel in a
    /// completion would be inserted as its text, `<|fim_prefix|>`).
    pub fn never_in_span(&self) -> Vec<u32> {
        let s = self.special;
        let mut ids: Vec<u32> = [s.mask]
            .into_iter()
            .chain(s.fim.into_iter().flat_map(|f| [f.prefix, f.suffix]))
            .chain(self.added_special.iter().copied())
            .filter(|&id| id != s.end)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
