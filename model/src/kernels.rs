//! Fused CPU kernels for the two elementwise hot spots of a pass, where candle's generic ops cost
//! more than the matmuls around them (perf on the 2-core dev machine: scalar `expf` was 23% of a
//! 1,024-token forward pass, zeroing and page faults of fresh buffers another 9%):
//! - [`MaskedSoftmax`]: attention scores → probabilities in place, with the 1/√d scale folded
//!   in and an optional causal limit per row (masked keys are never exponentiated);
//! - [`SwiGlu`]: `silu(gate) * up` from one fused gate/up projection.
//!
//! Both run f32 on contiguous storage only, and say so with an error otherwise (the model keeps
//! its weights and activations in f32). The exponential is a branch-free polynomial written so
//! that LLVM vectorises it; `pulp` compiles the loops for the best instruction set the CPU has
//! (AVX-512 here) and picks it at run time, without `unsafe`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Shape};
use rayon::prelude::*;

/// Rows of at least this many elements in all are split across threads.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// e^x for x ≤ 88, relative error < 5e-7 (tested; Cephes' expf): x = n·ln2 + r with
/// |r| ≤ ln2/2, a degree-7 polynomial for e^r, 2^n built from the exponent bits. Below -87.3
/// the result is the smallest normal float, not 0: callers that need exact zeros (masked keys,
/// -inf scores) skip the call.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5·2^23 trick: two adds, where `round`/`floor` may be libm calls.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // t's low mantissa bits hold n: integer arithmetic on the bits, since a saturating
    // `n as i32` does not vectorise.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
}

/// Softmax of `row[..visible]` of `scale * row`, in place; `row[visible..]` becomes 0.
#[inline(always)]
fn softmax_row(row: &mut [f32], visible: usize, scale: f32) {
    const LANES: usize = 16;
    let (live, hidden) = row.split_at_mut(visible.min(row.len()));
    hidden.iter_mut().for_each(|x| *x = 0.0);
    if live.is_empty() {
        return;
    }
    // Lane-wise max and sum: a plain fold over f32 would not vectorise (order of operations).
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = live.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = chunks.remainder().iter().fold(
        lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        |a, &b| a.max(b),
    );
    // A row of -inf scores (a padded query attending to nothing) stays finite: all zeros.
    if max == f32::NEG_INFINITY {
        live.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    let shift = max * scale;
    // -inf (a banned token, a masked key) is exactly 0, as with `f32::exp`.
    let e = |x: f32| {
        if x == f32::NEG_INFINITY {
            0.0
        } else {
            exp(x * scale - shift)
        }
    };
    let mut sums = [0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = e(*x);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = e(*x);
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

/// Row-wise softmax of attention scores (…, rows, keys), in place.
///
/// Row `r` belongs to query `r % queries` (queries of the heads that share a key/value head
/// are stacked: see `Transformer::attend`); with `causal_base = Some(b)` that query sees the
/// first `b + query + 1` keys, the rest get probability 0.
pub struct MaskedSoftmax {
    pub scale: f32,
    pub queries: usize,
    pub causal_base: Option<usize>,
}

/// Rows `first..` of the scores, as one `pulp` task: `with_simd` is inlined into a function
/// compiled for the CPU's instruction set, and the row loops with it.
struct SoftmaxRows<'a> {
    op: &'a MaskedSoftmax,
    chunk: &'a mut [f32],
    first: usize,
    keys: usize,
    /// Keys past this are padding: never visible (≤ `keys`).
    limit: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            op,
            chunk,
            first,
            keys,
            limit,
        } = self;
        for (i, row) in chunk.chunks_exact_mut(keys).enumerate() {
            softmax_row(row, op.visible(first + i, limit), op.scale);
        }
    }
}

impl MaskedSoftmax {
    fn run(&self, data: &mut [f32], keys: usize) {
        let rows = |chunk: &mut [f32], first: usize| {
            pulp::Arch::new().dispatch(SoftmaxRows {
                op: self,
                chunk,
                first,
                keys,
                limit: keys,
            })
        };
        if data.len() < PARALLEL_ELEMENTS || keys == 0 {
            rows(data, 0);
        } else {
            // Whole rows per task; a few tasks per thread balance the causal triangle.
            let per_task = (PARALLEL_ELEMENTS / keys).max(1);
            data.par_chunks_mut(per_task * keys)
                .enumerate()
                .for_each(|(t, chunk)| rows(chunk, t * per_task));
        }
    }
}

impl MaskedSoftmax {
    /// The rows of one block of stacked query rows, the first being row `first`, on the
    /// calling thread: each row is `stride` long, of which only the first `keys` are keys (the
    /// rest is padding, set to 0).
    pub(crate) fn run_block(&self, data: &mut [f32], stride: usize, first: usize, keys: usize) {
        pulp::Arch::new().dispatch(SoftmaxRows {
            op: self,
            chunk: data,
            first,
            keys: stride,
            limit: keys,
        })
    }

    /// How many keys row `row` of the stacked query rows sees, of `keys`.
    pub(crate) fn visible(&self, row: usize, keys: usize) -> usize {
        match self.causal_base {
            Some(b) => (b + row % self.queries.max(1) + 1).min(keys),
            None => keys,
        }
    }
}

/// One row's softmax of `scale * row`, in place (the sampler's distributions over the
/// vocabulary).
pub(crate) fn softmax_in_place(row: &mut [f32], scale: f32) {
    struct Row<'a>(&'a mut [f32], f32);
    impl pulp::WithSimd for Row<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            let n = self.0.len();
            softmax_row(self.0, n, self.1);
        }
    }
    pulp::Arch::new().dispatch(Row(row, scale));
}

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only, got {:?}", storage.dtype())
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(&data[start..end])
}

impl InplaceOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let keys = layout.dims().last().copied().unwrap_or(0);
        let dtype = storage.dtype();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("masked-softmax: f32 only, got {dtype:?}")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("masked-softmax: scores must be contiguous")
        };
        self.run(&mut data[start..end], keys);
        Ok(())
    }
}

/// `silu(x[.., :f]) * x[.., f:]` for the fused gate/up projection (…, 2f) → (…, f).
pub struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "swiglu")?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("swiglu: a scalar has no gate and up halves")
        };
        if *last % 2 != 0 {
            candle_core::bail!("swiglu: odd last dim {last}")
        }
        let f = *last / 2;
        *last = f;
        let mut out = vec![0f32; src.len() / 2];
        let rows =
            |src: &[f32], dst: &mut [f32]| pulp::Arch::new().dispatch(SwiGluRows { src, dst, f });
        if f == 0 {
            return Ok((CpuStorage::F32(out), Shape::from(dims)));
        }
        if src.len() < PARALLEL_ELEMENTS {
            rows(src, &mut out);
        } else {
            let per_task = (PARALLEL_ELEMENTS / (2 * f)).max(1);
            src.par_chunks(per_task * 2 * f)
                .zip(out.par_chunks_mut(per_task * f))
                .for_each(|(s, d)| rows(s, d));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Rows of [`SwiGlu`] as one `pulp` task (see [`SoftmaxRows`]).
/// [`SwiGlu`] on raw rows, on the calling thread: `src` (rows, 2f) → `dst` (rows, f).
pub(crate) fn swiglu_rows(src: &[f32], dst: &mut [f32], f: usize) {
    pulp::Arch::new().dispatch(SwiGluRows { src, dst, f })
}

/// RMSNorm of each row of `x` (rows of `w.len()`) into `out`: `x / √(mean(x²) + eps) · w`, as
/// `candle_nn::ops::rms_norm`, on the calling thread.
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    struct Rows<'a>(&'a [f32], &'a [f32], f32, &'a mut [f32]);
    impl pulp::WithSimd for Rows<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            let Rows(x, w, eps, out) = self;
            let d = w.len();
            for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                // Lane-wise sums: a plain f32 fold would not vectorise.
                let mut lanes = [0f32; 16];
                for c in row.chunks(16) {
                    for (l, &v) in lanes.iter_mut().zip(c) {
                        *l += v * v;
                    }
                }
                let mean = lanes.iter().sum::<f32>() / d as f32;
                let inv = 1.0 / (mean + eps).sqrt();
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                    *o = v * inv * g;
                }
            }
        }
    }
    pulp::Arch::new().dispatch(Rows(x, w, eps, out))
}

struct SwiGluRows<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    f: usize,
}

impl pulp::WithSimd for SwiGluRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self { src, dst, f } = self;
        for (row, o) in src.chunks_exact(2 * f).zip(dst.chunks_exact_mut(f)) {
            let (gate, up) = row.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_matches_std_across_the_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    fn reference_softmax(row: &[f32], visible: usize, scale: f32) -> Vec<f32> {
        let max = row[..visible]
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b * scale));
        let e: Vec<f32> = row[..visible]
            .iter()
            .map(|&x| (x * scale - max).exp())
            .collect();
        let sum: f32 = e.iter().sum();
        let mut out: Vec<f32> = e.iter().map(|x| x / sum).collect();
        out.resize(row.len(), 0.0);
        out
    }

    #[test]
    fn masked_softmax_matches_the_reference_with_and_without_a_causal_limit() {
        // 2 heads × 3 queries stacked = 6 rows of 37 keys (not a multiple of the lane count),
        // and a large case that takes the parallel path.
        for (rows, keys, queries) in [(6usize, 37usize, 3usize), (64, 1030, 32)] {
            let v: Vec<f32> = (0..rows * keys)
                .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 17.0)
                .collect();
            for causal_base in [None, Some(keys - queries)] {
                let t = Tensor::from_vec(v.clone(), (rows, keys), &Device::Cpu).unwrap();
                let op = MaskedSoftmax {
                    scale: 0.125,
                    queries,
                    causal_base,
                };
                t.inplace_op1(&op).unwrap();
                let got: Vec<Vec<f32>> = t.to_vec2().unwrap();
                for (r, row) in got.iter().enumerate() {
                    let visible = causal_base.map_or(keys, |b| b + r % queries + 1);
                    let want = reference_softmax(&v[r * keys..(r + 1) * keys], visible, 0.125);
                    for (a, b) in row.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-6, "row {r}: {a} vs {b}");
                    }
                    assert!(row[visible..].iter().all(|&x| x == 0.0));
                }
            }
        }
    }

    #[test]
    fn a_row_of_minus_infinity_gives_zeros_not_nan() {
        let t = Tensor::from_vec(vec![f32::NEG_INFINITY; 8], (1, 8), &Device::Cpu).unwrap();
        t.inplace_op1(&MaskedSoftmax {
            scale: 1.0,
            queries: 1,
            causal_base: None,
        })
        .unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap()[0], vec![0.0; 8]);
    }

    #[test]
    fn a_banned_token_gets_exactly_zero_and_the_rest_renormalises() {
        let mut row = vec![1.0, f32::NEG_INFINITY, 2.0, 0.5];
        softmax_in_place(&mut row, 1.0);
        assert_eq!(row[1], 0.0);
        let want = reference_softmax(&[1.0, 2.0, 0.5], 3, 1.0);
        for (a, b) in [row[0], row[2], row[3]].iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        for (rows, f) in [(3usize, 5usize), (40, 768)] {
            let v: Vec<f32> = (0..rows * 2 * f)
                .map(|i| ((i * 31) % 97) as f32 * 0.21 - 10.0)
                .collect();
            let x = Tensor::from_vec(v, (rows, 2 * f), &Device::Cpu).unwrap();
            let got = x.apply_op1_no_bwd(&SwiGlu).unwrap();
            let gate = x.narrow(1, 0, f).unwrap();
            let up = x.narrow(1, f, f).unwrap();
            let want = (gate.silu().unwrap() * up).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }
}
