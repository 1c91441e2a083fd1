//! bf16 matrix products on Intel AMX tiles: the linear layers, the output head, and the
//! attention of long passes (the `spm_block` context pass, full bidirectional passes).
//!
//! On the dev machine (2-core Xeon with AMX) candle's f32 matmul reaches ~180 GFLOP/s on both
//! cores, while one core's AMX unit multiplies bf16 tiles at ~650 GFLOP/s (1,024×256×1,536,
//! measured): a completion's context pass is mostly these products. candle has no AMX path, so
//! this module is the smallest kernel that uses it: weights are packed once at load into the
//! tile layout ([`PackedBf16`]), a long pass packs each head's keys and values once
//! ([`PackedKv`]), activations and attention probabilities are rounded to bf16 16 rows at a
//! time, and products accumulate in f32 (softmax, norms and the residual stream stay f32).
//!
//! Where the CPU (or the OS, which must grant the tile state to the process) has no AMX,
//! [`available`] is false and the model keeps its f32 path: nothing here runs.
//!
//! The instructions go through `asm!` (AMX intrinsics are not stable Rust). Tile registers:
//! tmm0–3 accumulate a 16×64 block of the output, tmm4 holds 16 rows × 32 bf16 of the input,
//! tmm5–7 take turns holding 16 pairs of rows × 16 columns of the packed right operand.

// The one module with `unsafe`: the tile instructions and the permission syscall.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::kernels::MaskedSoftmax;

/// Input columns one tile product consumes (16 pairs of bf16).
const K_STEP: usize = 32;
/// Output columns of one block (four 16-column accumulator tiles).
const N_BLOCK: usize = 64;
/// Rows of one tile.
const ROWS: usize = 16;
/// Products with at least this many rows split their row blocks across threads.
const PARALLEL_ROWS: usize = 64;

/// Whether this process can run the AMX kernel: the CPU has AMX-TILE and AMX-BF16 and Linux
/// granted the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per
/// process). `DIFFUSION_LS_NO_AMX=1` turns it off (f32 everywhere).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os("DIFFUSION_LS_NO_AMX").is_none() && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // A safe call in recent Rust, `unsafe` in older (cpuid exists on every x86_64 CPU).
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl only changes which register state the kernel saves for this process.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// f32 → bf16, rounding to nearest even (NaN stays NaN). Branch-free, so that loops of it
/// vectorise.
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

/// A weight (in, out) rounded to bf16 and packed for the tiles: for each 16-column group, for
/// each pair of input rows, the 16 columns' two values side by side (the "VNNI" layout that
/// `tdpbf16ps` reads), so one tile load takes 16 row pairs × 16 columns.
pub struct PackedBf16 {
    k: usize,
    n: usize,
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Whether a (k, n) weight fits the kernel's blocking.
    pub fn fits(k: usize, n: usize) -> bool {
        k > 0 && n > 0 && k % K_STEP == 0 && n % N_BLOCK == 0
    }

    /// `w`: (k, n) row-major f32. Panics unless [`Self::fits`].
    pub fn pack(w: &[f32], k: usize, n: usize) -> Self {
        assert!(Self::fits(k, n) && w.len() == k * n);
        Self {
            k,
            n,
            data: pack_rows(w, k, n, n, k, n),
        }
    }

    /// `out[r] = x[r] · W (+ bias)` for the `m` rows of `x` (m, k); `out` is (m, n).
    /// Panics unless [`available`].
    pub fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        assert!(available(), "AMX tiles are not available to this process");
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        assert!(x.len() == m * k && out.len() == m * n);
        assert!(bias.is_none_or(|b| b.len() == n));
        let rows = |(xs, os): (&[f32], &mut [f32])| {
            let mut a = vec![0u16; ROWS * k];
            for (xb, ob) in xs.chunks(ROWS * k).zip(os.chunks_mut(ROWS * n)) {
                let r = xb.len() / k;
                round_slice(xb, &mut a);
                let block = Block {
                    a: a.as_ptr(),
                    a_stride: k,
                    b: self.data.as_ptr().cast(),
                    b_k: k,
                    out: ob.as_mut_ptr(),
                    out_stride: n,
                    rows: r,
                    k,
                    n,
                };
                // SAFETY: `available()` held (asserted above); `a` holds r rows of k
                // bf16, `ob` r rows of n f32; k and n fit the blocking (checked at pack).
                unsafe { tile_block(&block) };
                if let Some(bias) = bias {
                    for row in ob.chunks_mut(n) {
                        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                    }
                }
            }
        };
        if m >= PARALLEL_ROWS {
            // Whole row blocks to each task; each thread configures its own tiles.
            let per_task = m.div_ceil(ROWS * rayon::current_num_threads()).max(1) * ROWS;
            x.par_chunks(per_task * k)
                .zip(out.par_chunks_mut(per_task * n))
                .for_each(rows);
        } else {
            rows((x, out));
        }
    }
}

/// `dst[i] = bf16(src[i])`, the loop compiled for the CPU's best vector instructions (pulp).
fn round_slice(src: &[f32], dst: &mut [u16]) {
    struct Round<'a>(&'a [f32], &'a mut [u16]);
    impl pulp::WithSimd for Round<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            for (d, &x) in self.1.iter_mut().zip(self.0) {
                *d = to_bf16(x);
            }
        }
    }
    pulp::Arch::new().dispatch(Round(src, dst));
}

/// `scores[r][from + j] = q[r] · span_k[j]` in f32 for every query row r and span key j
/// (rows of `scores` are `scores.len() / rows` long), vectorised (pulp).
fn span_scores(q: &[f32], span_k: &[f32], hd: usize, scores: &mut [f32], from: usize) {
    struct Dots<'a>(&'a [f32], &'a [f32], usize, &'a mut [f32], usize);
    impl pulp::WithSimd for Dots<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            let Dots(q, span_k, hd, scores, from) = self;
            let stride = scores.len() / (q.len() / hd).max(1);
            for (row, qr) in scores.chunks_exact_mut(stride).zip(q.chunks_exact(hd)) {
                for (s, kr) in row[from..].iter_mut().zip(span_k.chunks_exact(hd)) {
                    // Sixteen lanes: a plain f32 sum would not vectorise (order of operations).
                    let mut lanes = [0f32; 16];
                    for (qc, kc) in qr.chunks(16).zip(kr.chunks(16)) {
                        for ((l, a), b) in lanes.iter_mut().zip(qc).zip(kc) {
                            *l += a * b;
                        }
                    }
                    *s = lanes.iter().sum();
                }
            }
        }
    }
    pulp::Arch::new().dispatch(Dots(q, span_k, hd, scores, from));
}

/// `out[r] += Σ_j scores[r][from + j] · span_v[j]` (rows of `scores` `stride` long, of `out`
/// `hd`): the span's share of the attention output, vectorised (pulp).
fn span_values(scores: &[f32], stride: usize, from: usize, span_v: &[f32], out: &mut [f32]) {
    struct Axpy<'a>(&'a [f32], usize, usize, &'a [f32], &'a mut [f32]);
    impl pulp::WithSimd for Axpy<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            let Axpy(scores, stride, from, span_v, out) = self;
            let rows = scores.len() / stride;
            let hd = out.len() / rows.max(1);
            for (orow, row) in out.chunks_exact_mut(hd).zip(scores.chunks_exact(stride)) {
                for (&p, vr) in row[from..].iter().zip(span_v.chunks_exact(hd)) {
                    orow.iter_mut().zip(vr).for_each(|(o, v)| *o += p * v);
                }
            }
        }
    }
    pulp::Arch::new().dispatch(Axpy(scores, stride, from, span_v, out));
}

/// Two bf16 values as one packed pair: `lo` (the even input row) in the low half, which is
/// the first in memory.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// The packed layout (pairs of bf16 as u32, see [`PackedBf16`]) of a row-major matrix `src`
/// of `rows` × `cols` (rows `stride` apart), zero-padded to (k, n), k and n multiples of 2 and
/// 16: 16 columns of two rows at a time, vectorised.
fn pack_rows(src: &[f32], rows: usize, cols: usize, stride: usize, k: usize, n: usize) -> Vec<u32> {
    struct Pack<'a> {
        src: &'a [f32],
        rows: usize,
        cols: usize,
        stride: usize,
        k: usize,
        data: &'a mut [u32],
    }
    impl pulp::WithSimd for Pack<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            let Pack {
                src,
                rows,
                cols,
                stride,
                k,
                data,
            } = self;
            const ZEROS: [f32; 16] = [0.0; 16];
            let row = |r: usize, c0: usize, len: usize| -> &[f32] {
                if r < rows && len > 0 {
                    &src[r * stride + c0..][..len]
                } else {
                    &ZEROS[..len]
                }
            };
            for (i, pairs) in data.chunks_exact_mut(16).enumerate() {
                let (group, p) = (i / (k / 2), i % (k / 2));
                let c0 = group * 16;
                let len = cols.saturating_sub(c0).min(16);
                let (lo, hi) = (row(2 * p, c0, len), row(2 * p + 1, c0, len));
                for ((d, &l), &h) in pairs.iter_mut().zip(lo).zip(hi) {
                    *d = pair(l, h);
                }
            }
        }
    }
    let mut data = vec![0u32; k * n / 2];
    pulp::Arch::new().dispatch(Pack {
        src,
        rows,
        cols,
        stride,
        k,
        data: &mut data,
    });
    data
}

/// One key/value head of attention, packed for the tiles: keys as the (head_dim, keys)
/// matrix Kᵀ and values as (keys, head_dim), both with the keys zero-padded to a multiple of
/// 64.
pub struct PackedKv {
    keys: usize,
    padded: usize,
    head_dim: usize,
    kt: Vec<u32>,
    v: Vec<u32>,
}

impl PackedKv {
    /// Whether heads of this size fit the kernel.
    pub fn fits(head_dim: usize) -> bool {
        head_dim > 0 && head_dim % N_BLOCK == 0
    }

    /// `k`, `v`: (keys, head_dim) row-major f32.
    pub fn pack(k: &[f32], v: &[f32], keys: usize, head_dim: usize) -> Self {
        assert!(k.len() == keys * head_dim);
        let kt: Vec<f32> = (0..head_dim * keys)
            .map(|i| k[(i % keys) * head_dim + i / keys])
            .collect();
        Self::pack_transposed(&kt, v, keys, head_dim)
    }

    /// [`Self::pack`] from the keys stored transposed, `kt` (head_dim, keys): row by row
    /// (a request's context, 12 heads of 1,000 keys: ~0.2 ms).
    pub fn pack_transposed(kt: &[f32], v: &[f32], keys: usize, head_dim: usize) -> Self {
        let hd = head_dim;
        assert!(Self::fits(hd) && kt.len() == keys * hd && v.len() == keys * hd);
        let padded = keys.div_ceil(N_BLOCK).max(1) * N_BLOCK;
        Self {
            keys,
            padded,
            head_dim: hd,
            kt: pack_rows(kt, hd, keys, keys, hd, padded),
            v: pack_rows(v, keys, hd, hd, padded, hd),
        }
    }

    /// Span rows attending to these (context) keys and to the span's own keys and values
    /// `span_k`, `span_v` (ls, head_dim), all visible, under one softmax: `q` (rows,
    /// head_dim) → `out`. The context part on the tiles, the span part (a few dozen keys) in
    /// f32. Panics unless [`available`].
    pub fn attend_with_span(
        &self,
        q: &[f32],
        span_k: &[f32],
        span_v: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        assert!(available(), "AMX tiles are not available to this process");
        let hd = self.head_dim;
        let ls = span_k.len() / hd;
        assert!(q.len() % hd == 0 && out.len() == q.len() && span_v.len() == span_k.len());
        let stride = self.padded + ls;
        let softmax = MaskedSoftmax {
            scale,
            queries: 1,
            causal_base: None,
        };
        let mut qb = vec![0u16; ROWS * hd];
        let mut scores = vec![0f32; ROWS * stride];
        let mut probs = vec![0u16; ROWS * self.padded];
        let k = self.keys.div_ceil(K_STEP).max(1) * K_STEP;
        for (qs, os) in q.chunks(ROWS * hd).zip(out.chunks_mut(ROWS * hd)) {
            let rows = qs.len() / hd;
            round_slice(qs, &mut qb);
            let scores = &mut scores[..rows * stride];
            let block = Block {
                a: qb.as_ptr(),
                a_stride: hd,
                b: self.kt.as_ptr().cast(),
                b_k: hd,
                out: scores.as_mut_ptr(),
                out_stride: stride,
                rows,
                k: hd,
                n: self.padded,
            };
            // SAFETY: `available()` (asserted above); qb holds rows × hd bf16, scores
            // rows × stride f32 (stride ≥ padded), kt the packed (hd, padded) keys.
            unsafe { tile_block(&block) };
            for row in scores.chunks_exact_mut(stride) {
                row[self.keys..self.padded].fill(f32::NEG_INFINITY);
            }
            span_scores(qs, span_k, hd, scores, self.padded);
            softmax.run_block(scores, stride, 0, stride);
            for (p, row) in probs
                .chunks_exact_mut(self.padded)
                .zip(scores.chunks_exact(stride))
            {
                round_slice(&row[..self.padded], p);
            }
            let block = Block {
                a: probs.as_ptr(),
                a_stride: self.padded,
                b: self.v.as_ptr().cast(),
                b_k: self.padded,
                out: os.as_mut_ptr(),
                out_stride: hd,
                rows,
                k,
                n: hd,
            };
            // SAFETY: as above; probs holds rows × padded bf16 (k ≤ padded), os rows × hd f32.
            unsafe { tile_block(&block) };
            span_values(scores, stride, self.padded, span_v, os);
        }
    }

    /// `out (rows, head_dim) = softmax(q · Kᵀ) · V` for stacked query rows `q (rows, head_dim)`,
    /// the mask, scale and row order as `softmax` says ([`MaskedSoftmax`]). Scores and
    /// probabilities of one 16-row block at a time; bf16 operands, f32 accumulation and softmax.
    /// Panics unless [`available`].
    #[cfg(test)]
    pub fn attend(&self, q: &[f32], softmax: &MaskedSoftmax, out: &mut [f32]) {
        self.attend_from(q, softmax, 0, out)
    }

    /// [`Self::attend`] for the stacked rows `first..` (whole 16-row blocks from `first`).
    fn attend_from(&self, q: &[f32], softmax: &MaskedSoftmax, first: usize, out: &mut [f32]) {
        assert!(available(), "AMX tiles are not available to this process");
        let hd = self.head_dim;
        assert!(q.len() % hd == 0 && out.len() == q.len());
        let mut qb = vec![0u16; ROWS * hd];
        let mut scores = vec![0f32; ROWS * self.padded];
        let mut probs = vec![0u16; ROWS * self.padded];
        for (b, (qs, os)) in q
            .chunks(ROWS * hd)
            .zip(out.chunks_mut(ROWS * hd))
            .enumerate()
        {
            let (first, rows) = (first + b * ROWS, qs.len() / hd);
            round_slice(qs, &mut qb);
            let visible = (first..first + rows)
                .map(|r| softmax.visible(r, self.keys))
                .max()
                .unwrap_or(0);
            // Keys this block reads: whole 64-key groups for the scores, 32 for the values.
            let n = visible.div_ceil(N_BLOCK).max(1) * N_BLOCK;
            let k = visible.div_ceil(K_STEP).max(1) * K_STEP;
            let scores = &mut scores[..rows * n];
            let block = Block {
                a: qb.as_ptr(),
                a_stride: hd,
                b: self.kt.as_ptr().cast(),
                b_k: hd,
                out: scores.as_mut_ptr(),
                out_stride: n,
                rows,
                k: hd,
                n,
            };
            // SAFETY: `available()` (asserted above); qb holds rows × hd bf16, scores
            // rows × n f32, kt the packed (hd, padded) keys with n ≤ padded.
            unsafe { tile_block(&block) };
            softmax.run_block(scores, n, first, self.keys);
            round_slice(scores, &mut probs);
            let block = Block {
                a: probs.as_ptr(),
                a_stride: n,
                b: self.v.as_ptr().cast(),
                b_k: self.padded,
                out: os.as_mut_ptr(),
                out_stride: hd,
                rows,
                k,
                n: hd,
            };
            // SAFETY: as above; probs holds rows × n bf16 (k ≤ n), os rows × hd f32, v the
            // packed (padded, hd) values with k ≤ padded.
            unsafe { tile_block(&block) };
        }
    }
}

/// Grouped-query attention as a candle op on (q, k, v): q (B, KVH, rows, hd) with the query
/// heads that share a key/value head stacked in its rows, k and v (B, KVH, keys, hd); the
/// result is laid out like q. Mask and scale as `softmax` says.
pub struct Attention {
    pub softmax: MaskedSoftmax,
}

/// Query rows per task: 8 tile blocks.
const ROWS_PER_TASK: usize = 8 * ROWS;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("amx: {what} must be contiguous f32"),
    }
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "amx-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, kvh, rows, hd) = ql.shape().dims4()?;
        let (kb, kkvh, keys, khd) = kl.shape().dims4()?;
        if (kb, kkvh, khd) != (b, kvh, hd) || vl.shape() != kl.shape() || !PackedKv::fits(hd) {
            candle_core::bail!(
                "amx-attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let (q, k, v) = (
            f32_slice(qs, ql, "q")?,
            f32_slice(ks, kl, "k")?,
            f32_slice(vs, vl, "v")?,
        );
        let heads: Vec<PackedKv> = (0..b * kvh)
            .into_par_iter()
            .map(|i| {
                let at = i * keys * hd..(i + 1) * keys * hd;
                PackedKv::pack(&k[at.clone()], &v[at], keys, hd)
            })
            .collect();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(rows * hd)
            .zip(q.par_chunks(rows * hd))
            .zip(&heads)
            .flat_map(|((o, q), kv)| {
                o.par_chunks_mut(ROWS_PER_TASK * hd)
                    .zip(q.par_chunks(ROWS_PER_TASK * hd))
                    .enumerate()
                    .map(move |(t, (o, q))| (kv, t * ROWS_PER_TASK, q, o))
            })
            .for_each(|(kv, first, q, o)| kv.attend_from(q, &self.softmax, first, o));
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// Span rows over a packed context every candidate shares and their own span, as a candle op
/// on (q, span k, span v): q (B, KVH, rows, hd) with the query heads of a KV head stacked in
/// its rows, span k and v (B, KVH, ls, hd); `context` holds one [`PackedKv`] per KV head. On
/// the calling thread (a span step is too small to share).
pub struct SpanAttention<'a> {
    pub context: &'a [PackedKv],
    pub scale: f32,
}

impl candle_core::CustomOp3 for SpanAttention<'_> {
    fn name(&self) -> &'static str {
        "amx-span-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, kvh, rows, hd) = ql.shape().dims4()?;
        let (kb, kkvh, ls, khd) = kl.shape().dims4()?;
        let fits = self.context.len() == kvh && self.context.iter().all(|c| c.head_dim == hd);
        if (kb, kkvh, khd) != (b, kvh, hd) || vl.shape() != kl.shape() || !fits {
            candle_core::bail!(
                "amx-span-attention: q {:?}, span k {:?}, v {:?}, {} context heads",
                ql.shape(),
                kl.shape(),
                vl.shape(),
                self.context.len()
            );
        }
        let (q, k, v) = (
            f32_slice(qs, ql, "q")?,
            f32_slice(ks, kl, "span k")?,
            f32_slice(vs, vl, "span v")?,
        );
        let mut out = vec![0f32; q.len()];
        for (i, o) in out.chunks_mut(rows * hd).enumerate() {
            let ctx = &self.context[i % kvh];
            let own = i * ls * hd..(i + 1) * ls * hd;
            let q = &q[i * rows * hd..(i + 1) * rows * hd];
            ctx.attend_with_span(q, &k[own.clone()], &v[own], self.scale, o);
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// The 64-byte tile configuration (palette 1): tiles 0–3 are `rows`×16 f32, tile 4 `rows`×32
/// bf16, tiles 5–7 16×32 bf16.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(rows: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row
            c[48 + t] = if t <= 4 { rows as u8 } else { ROWS as u8 };
        }
        Self(c)
    }
}

/// Where one block's operands lie: `a` is `rows` × `k` bf16 with rows `a_stride` elements
/// apart; `b` is packed ([`PackedBf16`]'s layout) for `b_k` input rows, of which the first `k`
/// are used; `out` is `rows` × `n` f32 with rows `out_stride` elements apart.
struct Block {
    a: *const u16,
    a_stride: usize,
    b: *const u16,
    b_k: usize,
    out: *mut f32,
    out_stride: usize,
    rows: usize,
    k: usize,
    n: usize,
}

/// `out = a · b` for one block of ≤ 16 rows.
///
/// # Safety
/// AMX is available to this process and the pointers hold what [`Block`] says; 1 ≤ rows ≤ 16,
/// k % 32 == 0, n % 64 == 0, k ≤ b_k.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_block(blk: &Block) {
    use std::arch::asm;
    debug_assert!((1..=ROWS).contains(&blk.rows) && blk.k % K_STEP == 0 && blk.n % N_BLOCK == 0);
    let config = TileConfig::new(blk.rows);
    let a_stride = blk.a_stride * 2;
    let b_stride = 64usize;
    let c_stride = blk.out_stride * 4;
    // Bytes between the same row pair of consecutive 16-column groups.
    let group_bytes = (blk.b_k / 2) * 64;
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    for col in (0..blk.n).step_by(N_BLOCK) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let b_block = blk.b.add((col / 16) * (blk.b_k / 2) * 32) as *const u8;
        for kk in (0..blk.k).step_by(K_STEP) {
            let a_tile = blk.a.add(kk);
            let b0 = b_block.add((kk / 2) * 64);
            asm!(
                "tileloadd tmm4, [{a} + {sa}]",
                "tileloadd tmm5, [{b} + {sb}]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "add {b}, {g}",
                "tileloadd tmm6, [{b} + {sb}]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "add {b}, {g}",
                "tileloadd tmm7, [{b} + {sb}]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "add {b}, {g}",
                "tileloadd tmm5, [{b} + {sb}]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                a = in(reg) a_tile,
                sa = in(reg) a_stride,
                b = inout(reg) b0 => _,
                sb = in(reg) b_stride,
                g = in(reg) group_bytes,
                options(nostack, readonly),
            );
        }
        let c = blk.out.add(col);
        asm!(
            "tilestored [{c} + {sc}], tmm0",
            "add {c}, 64",
            "tilestored [{c} + {sc}], tmm1",
            "add {c}, 64",
            "tilestored [{c} + {sc}], tmm2",
            "add {c}, 64",
            "tilestored [{c} + {sc}], tmm3",
            c = inout(reg) c => _,
            sc = in(reg) c_stride,
            options(nostack),
        );
    }
    asm!("tilerelease", options(nostack, nomem));
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_block(_: &Block) {
    unreachable!("AMX is x86_64 only: available() is false here")
}

/// `x (…, k) → (…, n)` through a packed weight (and bias), as a candle op.
pub struct PackedLinear<'a> {
    pub weight: &'a PackedBf16,
    pub bias: Option<&'a [f32]>,
}

impl CustomOp1 for PackedLinear<'_> {
    fn name(&self) -> &'static str {
        "amx-bf16-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (k, n) = (self.weight.k, self.weight.n);
        let dims = l.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("amx-bf16-linear: input {dims:?}, weight in-features {k}");
        }
        let x = match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("amx-bf16-linear: contiguous f32 input only"),
        };
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        self.weight.matmul(x, self.bias, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty dims") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn from_bf16(h: u16) -> f32 {
        f32::from_bits(u32::from(h) << 16)
    }

    /// True, and says so, where the kernel cannot run here.
    fn skipped_without_amx() -> bool {
        if !available() {
            eprintln!("skipped: this CPU or kernel gives the process no AMX");
        }
        !available()
    }

    fn round(x: f32) -> f64 {
        f64::from(from_bf16(to_bf16(x)))
    }

    /// softmax(scale · q·kᵀ)·v in f64 over the first `keys` keys, `key(j, d)` and `val(j, d)`
    /// giving key j's component d; `q` is one query row of `hd`.
    fn reference_row(
        q: &[f32],
        key: impl Fn(usize, usize) -> f64,
        val: impl Fn(usize, usize) -> f64,
        keys: usize,
        scale: f64,
    ) -> Vec<f64> {
        let hd = q.len();
        let scores: Vec<f64> = (0..keys)
            .map(|j| (0..hd).map(|d| round(q[d]) * key(j, d)).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| (0..keys).map(|j| e[j] / sum * val(j, d)).sum())
            .collect()
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// Every row count from 1 to 40 (whole blocks, a tail, the threaded path at 64+), against
    /// the same product of the bf16-rounded inputs in f32.
    #[test]
    fn matches_the_rounded_product() {
        if skipped_without_amx() {
            return;
        }
        let (k, n) = (96, 128);
        let w = values(k * n, 1);
        let bias = values(n, 2);
        let packed = PackedBf16::pack(&w, k, n);
        for m in (1..=40).chain([64, 100]) {
            let x = values(m * k, 3 + m as u64);
            let mut out = vec![f32::NAN; m * n];
            packed.matmul(&x, Some(&bias), &mut out);
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k)
                        .map(|i| {
                            from_bf16(to_bf16(x[r * k + i])) * from_bf16(to_bf16(w[i * n + c]))
                        })
                        .sum::<f32>()
                        + bias[c];
                    let got = out[r * n + c];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "m {m} row {r} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Causal rows (two heads' queries stacked, the last 40 of 70 keys) and full rows, against
    /// attention computed in f64 from the same bf16-rounded inputs.
    #[test]
    fn attention_matches_the_reference() {
        if skipped_without_amx() {
            return;
        }
        let (keys, hd) = (70, 64);
        let k = values(keys * hd, 11);
        let v = values(keys * hd, 12);
        let kv = PackedKv::pack(&k, &v, keys, hd);
        for (queries, causal_base) in [(40, Some(keys - 40)), (5, None), (1, Some(keys - 1))] {
            let rows = 2 * queries;
            let q: Vec<f32> = values(rows * hd, 13).iter().map(|x| x * 4.0).collect();
            let softmax = MaskedSoftmax {
                scale: 0.125,
                queries,
                causal_base,
            };
            let mut out = vec![f32::NAN; rows * hd];
            kv.attend(&q, &softmax, &mut out);
            for (r, (qr, got)) in q.chunks(hd).zip(out.chunks(hd)).enumerate() {
                let want = reference_row(
                    qr,
                    |j, d| round(k[j * hd + d]),
                    |j, d| round(v[j * hd + d]),
                    softmax.visible(r, keys),
                    0.125,
                );
                for (d, (&g, w)) in got.iter().zip(want).enumerate() {
                    let g = f64::from(g);
                    assert!(
                        (g - w).abs() < 4e-3,
                        "queries {queries} row {r} dim {d}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Span rows over a packed context (70 keys, stored transposed) and 5 span keys of their
    /// own, against one f64 softmax over all 75.
    #[test]
    fn span_attention_matches_the_reference() {
        if skipped_without_amx() {
            return;
        }
        let (keys, ls, hd, rows) = (70, 5, 64, 20);
        let k = values(keys * hd, 21);
        let v = values(keys * hd, 22);
        let kt: Vec<f32> = (0..hd * keys)
            .map(|i| k[(i % keys) * hd + i / keys])
            .collect();
        let ctx = PackedKv::pack_transposed(&kt, &v, keys, hd);
        let (sk, sv) = (values(ls * hd, 23), values(ls * hd, 24));
        let q: Vec<f32> = values(rows * hd, 25).iter().map(|x| x * 4.0).collect();
        let mut out = vec![f32::NAN; rows * hd];
        ctx.attend_with_span(&q, &sk, &sv, 0.125, &mut out);
        for (r, (qr, got)) in q.chunks(hd).zip(out.chunks(hd)).enumerate() {
            let want = reference_row(
                qr,
                |j, d| {
                    if j < keys {
                        round(k[j * hd + d])
                    } else {
                        f64::from(sk[(j - keys) * hd + d])
                    }
                },
                |j, d| {
                    if j < keys {
                        round(v[j * hd + d])
                    } else {
                        f64::from(sv[(j - keys) * hd + d])
                    }
                },
                keys + ls,
                0.125,
            );
            for (d, (&g, w)) in got.iter().zip(want).enumerate() {
                let g = f64::from(g);
                assert!((g - w).abs() < 4e-3, "row {r} dim {d}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn fits_only_whole_blocks() {
        assert!(PackedBf16::fits(256, 1536));
        assert!(!PackedBf16::fits(250, 1536));
        assert!(!PackedBf16::fits(256, 96));
    }
}
