//! The inputs' side of the check on the VNNI kernels' [`Packing::Quads`] (A as four `i8` per word, B
//! stored as `B + 128`), portable and parallel: the loops of CPUs that run a VNNI kernel without AVX-512
//! (AVX-VNNI), and the plainest reading of the quads layout. They undo B's offset value by value, so the
//! check sees the true B, whatever the GEMM's trick.

use super::super::generate::{GROUP_ROWS, PANEL_COLUMNS, PackedA, PackedB, Packing};
use rayon::prelude::*;

/// k steps (four rows of B each) per parallel task of `B·r`.
const STEPS_PER_TASK: usize = 32;

/// `B·r` as exact `i64` values, one per row of B (`4·steps` of them, zero past n).
fn b_times_r(b: &PackedB, r: &[i32]) -> Vec<i64> {
    let n = b.n();
    let (steps, panels, step_bytes) =
        (b.steps(), n.div_ceil(PANEL_COLUMNS), Packing::Quads.step_bytes());
    let mut y = vec![0i64; 4 * steps];
    y.par_chunks_mut(4 * STEPS_PER_TASK).enumerate().for_each(|(task, out)| {
        let q0 = task * STEPS_PER_TASK;
        let q1 = q0 + out.len() / 4;
        for p in 0..panels {
            let panel = b.panel(p, q0, q1);
            let columns = PANEL_COLUMNS.min(n - p * PANEL_COLUMNS);
            let r16 = &r[p * PANEL_COLUMNS..p * PANEL_COLUMNS + columns];
            for (step, y4) in panel.chunks_exact(step_bytes).zip(out.chunks_exact_mut(4)) {
                for (j, &rj) in r16.iter().enumerate() {
                    // Stored as `B + 128` in u8: flipping the top bit gives back the i8 value.
                    // |B·r| < 2⁷ · 2³¹ · 2¹⁶ = 2⁵⁴ for n ≤ 65536: exact.
                    for (t, yk) in y4.iter_mut().enumerate() {
                        let v = i64::from((step[4 * j + t] ^ 0x80) as i8);
                        *yk += v * i64::from(rj);
                    }
                }
            }
        }
    });
    y
}

/// `A_rows · (B · r)` modulo 2⁶⁴, one sum per row.
pub(super) fn input_sums(a: &PackedA, b: &PackedB, r: &[i32]) -> Vec<u64> {
    let y = b_times_r(b, r);
    let steps = b.steps();
    let mut sums = vec![0u64; a.rows()];
    sums.par_chunks_mut(GROUP_ROWS).enumerate().for_each(|(g, out)| {
        let words = a.group(g, 0, steps);
        let mut acc = [0i64; GROUP_ROWS];
        for (q, six) in words.chunks_exact(GROUP_ROWS).enumerate() {
            let y4 = &y[4 * q..4 * q + 4];
            for (sum, &w) in acc.iter_mut().zip(six) {
                for (t, &yk) in w.to_le_bytes().iter().zip(y4) {
                    *sum = sum.wrapping_add(i64::from(*t as i8).wrapping_mul(yk));
                }
            }
        }
        for (sum, acc) in out.iter_mut().zip(acc) {
            *sum = acc as u64;
        }
    });
    sums
}
