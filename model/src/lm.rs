//! `DiffusionLm`: a loaded checkpoint (config, transformer, tokenizer) and its infilling entry point.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::sampler::{self, ContextCache, InfillOutput, InfillRequest, StepHook};
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;
use crate::weights::TensorStore;

/// How a loaded model multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere: the reference the parity tests hold to 1e-4.
    F32,
    /// bf16 products on AMX tiles for the linear layers, the output head and the attention of
    /// long passes, and fused span steps, where this process has AMX (`crate::amx`); f32
    /// elsewhere. Same dev-set exact match as f32, 2.2x faster completions (p50) on the AMX
    /// dev machine.
    #[default]
    Fastest,
}

/// The transformer of a checkpoint at `precision`.
fn transformer(
    cfg: &Config,
    store: &TensorStore,
    device: &Device,
    precision: Precision,
) -> Result<Transformer> {
    let mut model = Transformer::new(cfg, store, device)?;
    if precision == Precision::Fastest {
        model.use_amx()?;
    }
    Ok(model)
}

pub struct DiffusionLm {
    model: Transformer,
    tokenizer: Tokenizer,
    name: String,
}

impl DiffusionLm {
    /// A Hugging Face-format folder: config.json, tokenizer.json, and model.safetensors or a
    /// sharded model.safetensors.index.json.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        Self::load_dir_with(dir, Precision::default())
    }

    /// [`Self::load_dir`] at a chosen [`Precision`].
    pub fn load_dir_with(dir: &Path, precision: Precision) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a model folder"),
            });
        }
        let device = Device::Cpu;
        let cfg = Config::from_file(&dir.join("config.json"))?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), &cfg)?;
        let store = TensorStore::load_dir(dir, &device)?;
        let model = transformer(&cfg, &store, &device, precision)?;
        Ok(Self {
            model,
            tokenizer,
            name: dir.display().to_string(),
        })
    }

    /// The model compiled into the binary (model/default/), loaded with zero configuration.
    pub fn load_default() -> Result<Self> {
        Self::load_default_with(Precision::default())
    }

    /// [`Self::load_default`] at a chosen [`Precision`].
    pub fn load_default_with(precision: Precision) -> Result<Self> {
        #[cfg(default_model)]
        {
            let origin = PathBuf::from("<embedded>/model/default");
            let cfg = Config::from_json(
                include_str!("../default/config.json"),
                &origin.join("config.json"),
            )?;
            let tokenizer = Tokenizer::from_bytes(
                include_bytes!("../default/tokenizer.json"),
                &origin.join("tokenizer.json"),
                &cfg,
            )?;
            let device = Device::Cpu;
            let store = TensorStore::from_bytes(
                include_bytes!("../default/model.safetensors"),
                &origin.join("model.safetensors"),
                &device,
            )?;
            let model = transformer(&cfg, &store, &device, precision)?;
            Ok(Self {
                model,
                tokenizer,
                name: "default".into(),
            })
        }
        #[cfg(not(default_model))]
        {
            let _ = precision;
            Err(ModelError::Io {
                path: PathBuf::from("model/default"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "this build embeds no default model",
                ),
            })
        }
    }

    pub fn from_parts(model: Transformer, tokenizer: Tokenizer, name: &str) -> Self {
        Self {
            model,
            tokenizer,
            name: name.into(),
        }
    }

    pub fn describe(&self) -> String {
        let cfg = self.model.config();
        format!(
            "{} ({:.1}M params, {} layers, width {}, vocab {}, {} infill, {})",
            self.name,
            cfg.num_params() as f64 / 1e6,
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.infill_layout.name(),
            if self.model.uses_amx() {
                "bf16 on AMX"
            } else {
                "f32"
            }
        )
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    pub fn transformer(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    /// Fill `span_len` masked positions between prefix and suffix. Blocking and CPU-heavy.
    pub fn infill(&self, req: &InfillRequest, hook: &mut dyn StepHook) -> Result<InfillOutput> {
        sampler::infill(&self.model, &self.tokenizer, req, hook)
    }

    /// [`Self::infill`] reusing the context keys/values of the previous request on the same
    /// document when only the text near the cursor changed (see [`ContextCache`]).
    pub fn infill_with_cache(
        &self,
        req: &InfillRequest,
        hook: &mut dyn StepHook,
        cache: &mut ContextCache,
    ) -> Result<InfillOutput> {
        sampler::infill_cached(&self.model, &self.tokenizer, req, hook, Some(cache))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<DiffusionLm>();
}
