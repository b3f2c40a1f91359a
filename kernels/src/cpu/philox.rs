//! Philox4x32-10 sixteen counters at a time, so that generating A and B keeps up with the VNNI GEMM: one
//! AVX-512 pass (or two AVX2 halves) runs the ten rounds for 16 calls, where the scalar definition
//! (`cpc_common::synthetic::philox4x32_10`) runs them once per call.
//!
//! The lanes differ only in the counter's first two words (group and row); the matrix id, stream and key
//! are shared. The results are bit-identical to the scalar definition on every path (unit tests here, and
//! every conformance vector through the backend).

use super::Kernel;
use cpc_common::synthetic::{KeyMaterial, philox4x32_10};

/// Calls per batch.
pub(crate) const LANES: usize = 16;

/// Philox multipliers and Weyl increments (Random123), as in `cpc_common::synthetic`.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Which instruction set runs a batch. A value is only made by [`Path::for_kernel`], which checked that
/// this CPU has it, so holding one is the proof the `unsafe` calls below rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path(Isa);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    /// The instruction set that goes with a GEMM kernel (AVX-512 with AVX-512 VNNI, AVX2 with AVX2 and
    /// AVX-VNNI, scalar with scalar), so that forcing a kernel measures a host with only that much; scalar
    /// when this CPU cannot run the kernel.
    pub(crate) fn for_kernel(kernel: Kernel) -> Self {
        if !kernel.is_available() {
            return Self(Isa::Scalar);
        }
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => Self(Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::AvxVnni => Self(Isa::Avx2),
            _ => Self(Isa::Scalar),
        }
    }

    /// Philox4x32-10 of the 16 counters `(c0[i], c1[i], matrix_id, stream)` under the key material's key:
    /// `out[w][i]` is word w of call i.
    #[inline]
    pub(crate) fn run(
        self,
        km: &KeyMaterial,
        matrix_id: u32,
        c0: [u32; LANES],
        c1: [u32; LANES],
    ) -> [[u32; LANES]; 4] {
        match self.0 {
            Isa::Scalar => scalar(km, matrix_id, c0, c1),
            // SAFETY: `Path::for_kernel` made this value only after `Kernel::is_available` confirmed AVX2.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2(km, matrix_id, c0, c1) },
            // SAFETY: `Path::for_kernel` made this value only after `Kernel::is_available` confirmed
            // AVX-512F (and BW, VNNI).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512(km, matrix_id, c0, c1) },
        }
    }

    /// The 16 `i8` groups `(row, first_group + i)` of matrix `matrix_id`, for `i < LANES`, written as
    /// `out[16 i .. 16 i + 16]` (a whole row segment of 256 columns).
    #[inline]
    pub(crate) fn row_groups(
        self,
        km: &KeyMaterial,
        matrix_id: u32,
        row: u32,
        first_group: u32,
        out: &mut [i8; 16 * LANES],
    ) {
        let c0 = std::array::from_fn(|i| first_group.wrapping_add(i as u32));
        let words = self.run(km, matrix_id, c0, [row; LANES]);
        for (i, call) in out.as_chunks_mut::<16>().0.iter_mut().enumerate() {
            for (w, bytes) in call.as_chunks_mut::<4>().0.iter_mut().enumerate() {
                *bytes = words[w][i].to_le_bytes().map(|b| b as i8);
            }
        }
    }
}

fn scalar(
    km: &KeyMaterial,
    matrix_id: u32,
    c0: [u32; LANES],
    c1: [u32; LANES],
) -> [[u32; LANES]; 4] {
    let mut out = [[0; LANES]; 4];
    for i in 0..LANES {
        let words = philox4x32_10([c0[i], c1[i], matrix_id, km.stream], km.key);
        for (w, word) in words.into_iter().enumerate() {
            out[w][i] = word;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2(km: &KeyMaterial, matrix_id: u32, c0: [u32; LANES], c1: [u32; LANES]) -> [[u32; LANES]; 4] {
    use std::arch::x86_64::{
        __m256i, _mm256_blend_epi32, _mm256_loadu_si256, _mm256_mul_epu32, _mm256_set1_epi32,
        _mm256_slli_epi64, _mm256_srli_epi64, _mm256_storeu_si256, _mm256_xor_si256,
    };
    /// `(hi, lo)` of the eight 32 × 32 → 64-bit products `m · x`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mulhilo(m: __m256i, x: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(x, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), m);
        let lo = _mm256_blend_epi32::<0xAA>(even, _mm256_slli_epi64::<32>(odd));
        let hi = _mm256_blend_epi32::<0xAA>(_mm256_srli_epi64::<32>(even), odd);
        (hi, lo)
    }
    let mut out = [[0u32; LANES]; 4];
    for half in 0..2 {
        let load = |a: &[u32; LANES]| {
            // SAFETY: `a[8 half..8 half + 8]` is inside the 16-element array (half < 2): one unaligned
            // 32-byte load, which `_mm256_loadu_si256` allows.
            unsafe { _mm256_loadu_si256(a.as_ptr().add(8 * half).cast()) }
        };
        let (mut x0, mut x1) = (load(&c0), load(&c1));
        let mut x2 = _mm256_set1_epi32(matrix_id as i32);
        let mut x3 = _mm256_set1_epi32(km.stream as i32);
        let (m0, m1) = (_mm256_set1_epi32(M0 as i32), _mm256_set1_epi32(M1 as i32));
        let [mut k0, mut k1] = km.key;
        for round in 0..10 {
            if round > 0 {
                k0 = k0.wrapping_add(W0);
                k1 = k1.wrapping_add(W1);
            }
            let (hi0, lo0) = mulhilo(m0, x0);
            let (hi1, lo1) = mulhilo(m1, x2);
            let (kv0, kv1) = (_mm256_set1_epi32(k0 as i32), _mm256_set1_epi32(k1 as i32));
            (x0, x1, x2, x3) = (
                _mm256_xor_si256(_mm256_xor_si256(hi1, x1), kv0),
                lo1,
                _mm256_xor_si256(_mm256_xor_si256(hi0, x3), kv1),
                lo0,
            );
        }
        for (dst, v) in out.iter_mut().zip([x0, x1, x2, x3]) {
            // SAFETY: as for the loads: eight `u32` at `8 half` inside a 16-element array.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(8 * half).cast(), v) };
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(
    km: &KeyMaterial,
    matrix_id: u32,
    c0: [u32; LANES],
    c1: [u32; LANES],
) -> [[u32; LANES]; 4] {
    use std::arch::x86_64::{
        __m512i, _mm512_loadu_si512, _mm512_mask_blend_epi32, _mm512_mul_epu32, _mm512_set1_epi32,
        _mm512_slli_epi64, _mm512_srli_epi64, _mm512_storeu_si512, _mm512_ternarylogic_epi32,
    };
    /// `(hi, lo)` of the sixteen 32 × 32 → 64-bit products `m · x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mulhilo(m: __m512i, x: __m512i) -> (__m512i, __m512i) {
        let even = _mm512_mul_epu32(x, m);
        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(x), m);
        let lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64::<32>(odd));
        let hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64::<32>(even), odd);
        (hi, lo)
    }
    // SAFETY: `c0` and `c1` are 16 `u32`, exactly one unaligned 64-byte load each.
    let (mut x0, mut x1) =
        unsafe { (_mm512_loadu_si512(c0.as_ptr().cast()), _mm512_loadu_si512(c1.as_ptr().cast())) };
    let mut x2 = _mm512_set1_epi32(matrix_id as i32);
    let mut x3 = _mm512_set1_epi32(km.stream as i32);
    let (m0, m1) = (_mm512_set1_epi32(M0 as i32), _mm512_set1_epi32(M1 as i32));
    let [mut k0, mut k1] = km.key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(m0, x0);
        let (hi1, lo1) = mulhilo(m1, x2);
        let (kv0, kv1) = (_mm512_set1_epi32(k0 as i32), _mm512_set1_epi32(k1 as i32));
        // 0x96: three-way XOR.
        (x0, x1, x2, x3) = (
            _mm512_ternarylogic_epi32::<0x96>(hi1, x1, kv0),
            lo1,
            _mm512_ternarylogic_epi32::<0x96>(hi0, x3, kv1),
            lo0,
        );
    }
    let mut out = [[0u32; LANES]; 4];
    for (dst, v) in out.iter_mut().zip([x0, x1, x2, x3]) {
        // SAFETY: `dst` is 16 `u32`, exactly one unaligned 64-byte store.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_matches_the_definition() {
        let km = KeyMaterial::from_seed("philox-simd");
        let c0: [u32; LANES] = std::array::from_fn(|i| (i as u32).wrapping_mul(0x9E37_79B9) ^ 7);
        let c1: [u32; LANES] = std::array::from_fn(|i| u32::MAX - i as u32);
        let want = scalar(&km, 5, c0, c1);
        for i in 0..LANES {
            let direct = philox4x32_10([c0[i], c1[i], 5, km.stream], km.key);
            assert_eq!([want[0][i], want[1][i], want[2][i], want[3][i]], direct, "lane {i}");
        }
        for kernel in Kernel::available() {
            assert_eq!(Path::for_kernel(kernel).run(&km, 5, c0, c1), want, "{kernel}");
        }
    }

    #[test]
    fn row_groups_match_fill_row() {
        let km = KeyMaterial::from_seed("philox-rows");
        let mut want = [0i8; 16 * LANES];
        km.fill_row(3, 77, &mut want[..]);
        let mut shifted = vec![0i8; 16 * (LANES + 2)];
        km.fill_row(3, 77, &mut shifted);
        for kernel in Kernel::available() {
            let mut got = [0i8; 16 * LANES];
            Path::for_kernel(kernel).row_groups(&km, 3, 77, 0, &mut got);
            assert_eq!(got, want, "{kernel}");
            Path::for_kernel(kernel).row_groups(&km, 3, 77, 2, &mut got);
            assert_eq!(got[..], shifted[32..], "{kernel} from group 2");
        }
    }
}
