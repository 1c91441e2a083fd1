//! A cache language model of the request's own context (Hellendoorn & Devanbu 2017, "Are deep
//! neural networks the best choice for modeling source code?"): identifiers and idioms repeat
//! within a file, so which token followed the same one or two tokens in the prefix and suffix
//! is a strong hint that a small model's distribution lacks. The sampler mixes it in where a
//! position's left neighbours are known.

use std::collections::HashMap;

/// Counts of the token that followed each one- and two-token history.
#[derive(Debug, Default)]
pub(crate) struct DocumentNgrams {
    after_one: HashMap<u32, HashMap<u32, u32>>,
    after_two: HashMap<(u32, u32), HashMap<u32, u32>>,
}

/// Histories seen this often weigh half the mixture's maximum.
const HALF_WEIGHT_COUNT: f32 = 2.0;

impl DocumentNgrams {
    /// Counts within each run of `texts` (prefix and suffix are not one text: nothing follows
    /// the prefix's last token there).
    pub fn new(texts: &[&[u32]]) -> Self {
        let mut ng = DocumentNgrams::default();
        for ids in texts {
            for w in ids.windows(2) {
                *ng.after_one
                    .entry(w[0])
                    .or_default()
                    .entry(w[1])
                    .or_default() += 1;
            }
            for w in ids.windows(3) {
                *ng.after_two
                    .entry((w[0], w[1]))
                    .or_default()
                    .entry(w[2])
                    .or_default() += 1;
            }
        }
        ng
    }

    /// The tokens that followed `history` (its last one or two tokens, the longest seen wins)
    /// with their counts, and the history's count.
    fn followers(&self, history: &[u32]) -> Option<(&HashMap<u32, u32>, u32)> {
        let n = history.len();
        let two = (n >= 2)
            .then(|| self.after_two.get(&(history[n - 2], history[n - 1])))
            .flatten();
        let counts = two.or_else(|| history.last().and_then(|t| self.after_one.get(t)))?;
        Some((counts, counts.values().sum()))
    }

    /// Mixes the cache's distribution after `history` into `probs`:
    /// `(1 - w) p + w q`, the weight `w` growing with the history's count up to `max_weight`.
    pub fn mix_into(&self, probs: &mut [f32], history: &[u32], max_weight: f32) {
        let Some((counts, total)) = self.followers(history) else {
            return;
        };
        let total = total as f32;
        let w = max_weight * total / (total + HALF_WEIGHT_COUNT);
        probs.iter_mut().for_each(|p| *p *= 1.0 - w);
        for (&t, &c) in counts {
            if let Some(p) = probs.get_mut(t as usize) {
                *p += w * c as f32 / total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_seen_history_predicts_and_the_mixture_stays_a_distribution() {
        // 5 6 7 ... 5 6 7 ... 9 6 8
        let ng = DocumentNgrams::new(&[&[5, 6, 7, 1, 5, 6, 7], &[9, 6, 8]]);
        let mut p = vec![0.25f32; 10];
        p.truncate(4);
        p.resize(10, 0.0);
        ng.mix_into(&mut p, &[5, 6], 0.5);
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        // After (5, 6) only 7 was seen, twice: weight 0.5 * 2/4.
        assert!((p[7] - 0.25).abs() < 1e-6, "{p:?}");
        // After 6 alone (history (4, 6) unseen): 7 twice and 8 once.
        let mut q = vec![0.1f32; 10];
        ng.mix_into(&mut q, &[4, 6], 0.5);
        assert!(q[7] > q[8] && q[8] > q[0]);
        // Nothing seen after 3: unchanged.
        let mut r = vec![0.1f32; 10];
        ng.mix_into(&mut r, &[3], 0.5);
        assert!(r.iter().all(|&x| x == 0.1));
        // Prefix and suffix are counted apart: 7 (end of the first) is not followed by 9.
        assert!(ng.followers(&[7]).is_some_and(|(c, _)| !c.contains_key(&9)));
    }
}
