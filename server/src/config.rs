//! User settings, read from `initializationOptions` and `workspace/didChangeConfiguration`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client's settings, as it sends them (camelCase JSON) and as `diffusionLs/status` reports
/// them back. Every field has a default, so `{}` (or nothing) is a valid configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// HF-format model folder; `None` loads the embedded default model.
    pub model: Option<PathBuf>,
    /// Refinement steps: the budget the decoding policy fills (a left-to-right policy with a
    /// confidence threshold takes fewer where the model is sure). 32 on the dev eval: a 64-token
    /// block needs no more, since the model runs on past the truth's end and the verifier cuts
    /// what the last step commits blind (64 steps: block and body latency 2x, EM/ES within
    /// noise, MODEL.md).
    pub steps: usize,
    /// Upper bound on masked positions for any request.
    pub max_span_tokens: usize,
    /// Candidates decoded together; each surviving one becomes an item. 3 on the dev eval:
    /// where the greedy candidate cannot be mended, another often can (stop 22, AMX: EM 9.6 →
    /// 10.8%, ES 34.9 → 40.8%, empty 22.9 → 7.1% against 1; p50 81 → 132 ms, MODEL.md); 1 is
    /// the fastest.
    pub candidates: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Prefix + suffix budget in tokens.
    pub context_tokens: usize,
    /// Check candidates with tree-sitter between steps.
    pub verify: bool,
    /// Wait this long for a newer request before starting the model.
    pub debounce_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            steps: 32,
            max_span_tokens: 256,
            candidates: 3,
            temperature: 0.0,
            context_tokens: 1024,
            verify: true,
            debounce_ms: 30,
        }
    }
}

/// Keys under which clients nest our settings in `didChangeConfiguration` payloads.
const SECTIONS: [&str; 3] = ["diffusion-ls", "diffusionLs", "diffusion_ls"];

impl Settings {
    /// Applies the keys present in `value` on top of `self`, leaving the others as they are.
    /// Accepts the settings object itself or one nested under a section name; unknown keys are
    /// ignored, a known key with a value of the wrong type is an error (and changes nothing).
    pub fn merged(&self, value: &Value) -> Result<Settings, serde_json::Error> {
        let incoming = SECTIONS.iter().find_map(|k| value.get(k)).unwrap_or(value);
        let Value::Object(incoming) = incoming else {
            return Ok(self.clone());
        };
        let mut current = serde_json::to_value(self)?;
        if let Value::Object(map) = &mut current {
            map.extend(incoming.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut s: Settings = serde_json::from_value(current)?;
        s.clamp();
        Ok(s)
    }

    fn clamp(&mut self) {
        self.steps = self.steps.clamp(1, 256);
        self.max_span_tokens = self.max_span_tokens.clamp(1, 2048);
        self.candidates = self.candidates.clamp(1, 16);
        self.temperature = if self.temperature.is_finite() {
            self.temperature.clamp(0.0, 4.0)
        } else {
            0.0
        };
        self.context_tokens = self.context_tokens.clamp(16, 16_384);
        self.debounce_ms = self.debounce_ms.min(5_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_partial_and_nested() {
        let s = Settings::default()
            .merged(&json!({"steps": 4, "verify": false}))
            .unwrap();
        assert_eq!((s.steps, s.verify, s.context_tokens), (4, false, 1024));
        let s = s
            .merged(&json!({"diffusion-ls": {"candidates": 3}}))
            .unwrap();
        assert_eq!((s.steps, s.candidates), (4, 3));
        assert!(s.merged(&json!({"steps": "many"})).is_err());
        assert_eq!(s.merged(&json!({"steps": 0})).unwrap().steps, 1);
        assert_eq!(s.merged(&Value::Null).unwrap(), s);
    }

    /// Every field goes out and comes back: a merge keeps what it is not given, whatever the
    /// field (no hand-written list of fields to forget one in).
    #[test]
    fn every_setting_survives_a_merge() {
        let all = json!({
            "model": "/models/m", "steps": 3, "maxSpanTokens": 7, "candidates": 2,
            "temperature": 0.5, "contextTokens": 99, "verify": false, "debounceMs": 5,
        });
        let s = Settings::default().merged(&all).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), all);
        let again = s.merged(&json!({"unknownKey": 1})).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), all);
    }
}
