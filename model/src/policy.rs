//! Decoding policies: which masked positions a refinement step commits, and where a span may
//! end. A policy is a value the sampler takes; the server picks one per span kind and `eval`
//! picks one by name, so a new decoding experiment is a new value, not a flag.
//!
//! A policy spends the step budget at its [`Pace`]: evenly (a step commits at least its share
//! of the masked positions, `ceil(masked / steps left)`) or as the model is sure; the last step
//! commits all that remain. On top of it a policy orders the positions and may commit more (a
//! confidence threshold, Fast-dLLM).

/// How a position's confidence is measured (Dream's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceOrder {
    /// Probability of the chosen token ("maskgit_plus").
    MaxProb,
    /// Top-1 minus top-2 probability.
    Margin,
    /// Negative entropy of the position's distribution.
    NegEntropy,
}

/// The order in which masked positions are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOrder {
    /// The most confident positions anywhere in the span (MaskGIT, Dream, LLaDA).
    Confidence(ConfidenceOrder),
    /// The leftmost masked positions. A model trained autoregressively first predicts a
    /// position best from its committed left neighbour (a shifted model reads it directly).
    LeftToRight,
}

/// Where the end-of-infill token may be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRule {
    /// Only where every position before it is committed (or is committed in the same step),
    /// and never before a committed token. Without it, the padding ends of the tail are the
    /// most confident predictions, each committed end makes its left neighbour's end likelier,
    /// and the completion collapses from the right to a token or two.
    InOrder,
    /// Anywhere, by confidence.
    Free,
}

/// How a policy spends its step budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Every step commits at least its share of the masked positions (`ceil(masked / steps
    /// left)`).
    Even,
    /// A step commits what its order and threshold choose (at least one position); the last
    /// step commits whatever remains. Left to right, a share above one would commit positions
    /// predicted with their left neighbour still masked (`let mut` + ` =`: the name dropped).
    AsSure,
}

/// A decoding policy: a name and the rules it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodingPolicy {
    pub name: &'static str,
    pub order: CommitOrder,
    /// Also commit every eligible position at least this confident (for `LeftToRight`: the
    /// leading run of them).
    pub threshold: Option<f32>,
    pub ends: EndRule,
    /// Self-correction: committed tokens whose probability fell below this are masked again
    /// after a step (never at the last step).
    pub remask_below: Option<f32>,
    /// Mix a cache model of the context's own tokens into each position whose left
    /// neighbours are known, with at most this weight (ngram.rs).
    pub document_cache: Option<f32>,
    /// Left to right: a step predicts only this many leading masked positions (at least its
    /// share), since it commits no other; the output head and softmax skip the rest.
    pub lookahead: Option<usize>,
    pub pace: Pace,
    /// A step runs only the span rows whose token changed and those that predict its
    /// lookahead; the other rows keep the keys/values of the step that last ran them
    /// (Fast-dLLM's approximate cache; `spm_block` layout). Exact when false.
    pub reuse_span_kv: bool,
    /// A position the hook remasks before the candidate is final reopens every committed
    /// position after it too. Left to right they were predicted from it: remasking the blamed
    /// token alone left a hole that the model filled to fit both sides (`match cmp.patch {` +
    /// `return ver.patch != p`, the `{` remasked, became `match cmp.patch !=.patch != p`).
    pub reopen_after_remask: bool,
}

impl DecodingPolicy {
    /// The fixed schedule by confidence, ends in order: the diffusion default.
    pub const PARALLEL: DecodingPolicy = DecodingPolicy {
        name: "parallel",
        order: CommitOrder::Confidence(ConfidenceOrder::MaxProb),
        threshold: None,
        ends: EndRule::InOrder,
        remask_below: None,
        document_cache: None,
        lookahead: None,
        pace: Pace::Even,
        reuse_span_kv: false,
        reopen_after_remask: false,
    };
    /// As `parallel`, plus every position at least 0.9 confident (Fast-dLLM's rule).
    pub const PARALLEL_THRESHOLD: DecodingPolicy = DecodingPolicy {
        name: "parallel-threshold",
        threshold: Some(0.9),
        ..Self::PARALLEL
    };
    /// `parallel` with ends committed anywhere (what `InOrder` prevents, kept to measure it).
    pub const FREE_ENDS: DecodingPolicy = DecodingPolicy {
        name: "free-ends",
        ends: EndRule::Free,
        ..Self::PARALLEL
    };
    /// Left to right, the step budget's share per step.
    pub const LEFT_TO_RIGHT: DecodingPolicy = DecodingPolicy {
        name: "left-to-right",
        order: CommitOrder::LeftToRight,
        threshold: None,
        ends: EndRule::InOrder,
        remask_below: None,
        document_cache: None,
        lookahead: None,
        pace: Pace::Even,
        reuse_span_kv: false,
        reopen_after_remask: false,
    };
    /// Left to right, and a step commits the leading positions while they are at least 0.9
    /// confident: fewer steps where the model is sure. A step looks 8 positions ahead, so it
    /// commits at most 8.
    pub const LEFT_TO_RIGHT_THRESHOLD: DecodingPolicy = DecodingPolicy {
        name: "left-to-right-threshold",
        threshold: Some(0.9),
        lookahead: Some(8),
        ..Self::LEFT_TO_RIGHT
    };

    /// `left-to-right-threshold` with the document's n-gram cache mixed in (weight ≤ 0.6; on
    /// the dev eval 0.6 did a little better than 0.3, MODEL.md), at the pace the model is
    /// sure: no position is committed blind before the last step.
    pub const LEFT_TO_RIGHT_CACHE: DecodingPolicy = DecodingPolicy {
        name: "left-to-right-cache",
        document_cache: Some(0.6),
        pace: Pace::AsSure,
        ..Self::LEFT_TO_RIGHT_THRESHOLD
    };

    /// `left-to-right-cache` whose steps run only the rows they change or predict from (the
    /// newly committed ones and the lookahead's), reusing the span's other keys/values.
    pub const LEFT_TO_RIGHT_REUSE: DecodingPolicy = DecodingPolicy {
        name: "left-to-right-reuse",
        reuse_span_kv: true,
        ..Self::LEFT_TO_RIGHT_CACHE
    };

    /// `left-to-right-reuse` that backs up on a remask: the positions after a remasked one are
    /// decoded again from it.
    pub const LEFT_TO_RIGHT_BACKTRACK: DecodingPolicy = DecodingPolicy {
        name: "left-to-right-backtrack",
        reopen_after_remask: true,
        ..Self::LEFT_TO_RIGHT_REUSE
    };

    pub const ALL: [DecodingPolicy; 8] = [
        Self::PARALLEL,
        Self::PARALLEL_THRESHOLD,
        Self::FREE_ENDS,
        Self::LEFT_TO_RIGHT,
        Self::LEFT_TO_RIGHT_THRESHOLD,
        Self::LEFT_TO_RIGHT_CACHE,
        Self::LEFT_TO_RIGHT_REUSE,
        Self::LEFT_TO_RIGHT_BACKTRACK,
    ];

    pub fn named(name: &str) -> Option<DecodingPolicy> {
        Self::ALL.into_iter().find(|p| p.name == name)
    }

    /// The names `named` knows, for error messages and `--help`.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.name).collect()
    }

    /// How a proposal's confidence is measured (left to right: the chosen token's probability,
    /// which the threshold compares).
    pub(crate) fn confidence_order(&self) -> ConfidenceOrder {
        match self.order {
            CommitOrder::Confidence(order) => order,
            CommitOrder::LeftToRight => ConfidenceOrder::MaxProb,
        }
    }

    /// Whether the end token may be proposed at span position `j` when the last committed
    /// token before any end stands at `last_token`: under `InOrder`, never before it (an end
    /// there would drop it).
    pub(crate) fn allows_end_at(&self, j: usize, last_token: Option<usize>) -> bool {
        self.ends == EndRule::Free || last_token.is_none_or(|l| l < j)
    }

    /// How many of the `masked` positions (before the first committed end, left to right) a
    /// step must predict under a left-to-right lookahead: the leading ones it may commit.
    /// `None`: every span position (committed ones too, whose confidence self-correction
    /// reads). `steps_left` counts this step (1: the last, which commits everything).
    pub(crate) fn predicted(&self, masked: usize, steps_left: usize) -> Option<usize> {
        match (self.order, self.lookahead) {
            (CommitOrder::LeftToRight, Some(k))
                if steps_left > 1 && masked > 0 && self.remask_below.is_none() =>
            {
                Some(masked.min(k.max(self.share(masked, steps_left))))
            }
            _ => None,
        }
    }

    /// The fewest positions a step that is not the last commits.
    fn share(&self, masked: usize, steps_left: usize) -> usize {
        match self.pace {
            Pace::Even => masked.div_ceil(steps_left.max(1)),
            Pace::AsSure => 1,
        }
    }

    /// Which of a step's proposals are committed, as indices into `proposals`: the leading
    /// [`Self::predicted`] of the `masked` positions. `steps_left` counts this step (1: the
    /// last, which commits everything).
    pub(crate) fn select(
        &self,
        proposals: &[Proposal],
        masked: usize,
        steps_left: usize,
    ) -> Vec<usize> {
        let m = proposals.len();
        if steps_left <= 1 || m == 0 {
            return (0..m).collect();
        }
        let share = self.share(masked, steps_left).min(m);
        let confident = |p: &Proposal| self.threshold.is_some_and(|t| p.confidence >= t);
        match self.order {
            CommitOrder::LeftToRight => {
                // The leading run of confident positions, at least the first: a position
                // after an unsure one was predicted with that one masked. Committed together,
                // the leading positions keep every end in order.
                let run = proposals.iter().take_while(|p| confident(p)).count();
                (0..share.max(run).max(1)).collect()
            }
            CommitOrder::Confidence(_) => {
                // An end after the first masked position would leave a hole before it.
                let eligible: Vec<usize> = (0..m)
                    .filter(|&i| i == 0 || self.ends == EndRule::Free || !proposals[i].is_end)
                    .collect();
                let above = eligible
                    .iter()
                    .filter(|&&i| confident(&proposals[i]))
                    .count();
                let k = share.max(above).clamp(1, eligible.len());
                let mut ranked = eligible;
                ranked
                    .sort_by(|&a, &b| proposals[b].confidence.total_cmp(&proposals[a].confidence));
                ranked.truncate(k);
                ranked
            }
        }
    }
}

/// One masked position's prediction in a step.
#[derive(Debug, Clone)]
pub(crate) struct Proposal {
    pub position: usize,
    pub token: u32,
    pub confidence: f32,
    pub logp: f32,
    pub is_end: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposals(conf: &[f32], ends: &[usize]) -> Vec<Proposal> {
        conf.iter()
            .enumerate()
            .map(|(i, &c)| Proposal {
                position: i,
                token: 7,
                confidence: c,
                logp: c.ln(),
                is_end: ends.contains(&i),
            })
            .collect()
    }

    #[test]
    fn every_name_is_found_again() {
        for p in DecodingPolicy::ALL {
            assert_eq!(DecodingPolicy::named(p.name), Some(p.clone()));
        }
        assert_eq!(DecodingPolicy::named("no-such-policy"), None);
    }

    #[test]
    fn the_last_step_commits_everything() {
        let ps = proposals(&[0.1, 0.2, 0.3], &[2]);
        for p in DecodingPolicy::ALL {
            assert_eq!(p.select(&ps, ps.len(), 1), vec![0, 1, 2], "{}", p.name);
        }
    }

    #[test]
    fn parallel_commits_its_share_by_confidence_and_no_end_out_of_order() {
        let ps = proposals(&[0.2, 0.5, 0.99, 0.4], &[2]);
        // Share of 4 masked over 2 steps: 2. The end at 2 is the most confident, but position
        // 0 is still masked.
        assert_eq!(
            DecodingPolicy::PARALLEL.select(&ps, ps.len(), 2),
            vec![1, 3]
        );
        assert_eq!(
            DecodingPolicy::FREE_ENDS.select(&ps, ps.len(), 2),
            vec![2, 1]
        );
    }

    #[test]
    fn a_threshold_commits_more_than_the_share() {
        let ps = proposals(&[0.95, 0.2, 0.97, 0.93, 0.1], &[]);
        assert_eq!(DecodingPolicy::PARALLEL.select(&ps, ps.len(), 5), vec![2]);
        assert_eq!(
            DecodingPolicy::PARALLEL_THRESHOLD.select(&ps, ps.len(), 5),
            vec![2, 0, 3]
        );
    }

    #[test]
    fn a_lookahead_predicts_the_leading_positions_and_at_least_the_share() {
        let ltr = DecodingPolicy::LEFT_TO_RIGHT_THRESHOLD;
        assert_eq!(ltr.lookahead, Some(8));
        assert_eq!(ltr.predicted(20, 10), Some(8));
        assert_eq!(ltr.predicted(5, 10), Some(5));
        // A share above the lookahead; the last step commits everything.
        assert_eq!(ltr.predicted(40, 2), Some(20));
        assert_eq!(ltr.predicted(20, 1), None);
        for p in [DecodingPolicy::PARALLEL, DecodingPolicy::LEFT_TO_RIGHT] {
            assert_eq!(p.predicted(20, 10), None, "{}", p.name);
        }
        // The run of confident positions stops where the prediction does; the share counts
        // every masked position.
        let ps = proposals(&[0.93, 0.99, 0.99], &[]);
        assert_eq!(ltr.select(&ps, 3, 4), vec![0, 1, 2]);
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT.select(&ps[..1], 20, 10),
            vec![0]
        );
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT.select(&ps, 20, 8),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn as_sure_a_step_commits_no_blind_share() {
        let ps = proposals(&[0.3, 0.2, 0.1, 0.1], &[]);
        let sure = DecodingPolicy::LEFT_TO_RIGHT_CACHE;
        assert_eq!(sure.pace, Pace::AsSure);
        // Four masked over two steps: an even pace commits two, the second predicted with the
        // first masked; as sure, one. The last step commits everything either way.
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT_THRESHOLD.select(&ps, 4, 2),
            vec![0, 1]
        );
        assert_eq!(sure.select(&ps, 4, 2), vec![0]);
        assert_eq!(sure.select(&ps, 4, 1), vec![0, 1, 2, 3]);
        assert_eq!(sure.predicted(40, 2), Some(8));
    }

    #[test]
    fn left_to_right_commits_the_leading_run() {
        let ps = proposals(&[0.3, 0.99, 0.99, 0.2], &[]);
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT.select(&ps, ps.len(), 4),
            vec![0]
        );
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT.select(&ps, ps.len(), 2),
            vec![0, 1]
        );
        // After an unsure first position nothing else: what follows it was predicted with
        // it masked.
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT_THRESHOLD.select(&ps, ps.len(), 4),
            vec![0]
        );
        // The leading run of confident positions, up to the first that is not.
        let ps = proposals(&[0.95, 0.99, 0.5, 0.99], &[1]);
        assert_eq!(
            DecodingPolicy::LEFT_TO_RIGHT_THRESHOLD.select(&ps, ps.len(), 4),
            vec![0, 1]
        );
    }
}
