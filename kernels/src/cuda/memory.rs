//! How a slot sizes its device buffers between shards: a pure decision, so that it can be tested without a GPU.
//!
//! A slot keeps its buffers from one shard to the next (allocation is slow, and Bᵗ is reused when the next
//! shard multiplies by the same B). Kept blindly, each buffer would grow to the largest shape it has ever
//! seen: the largest A of one job, the largest Bᵗ of another, the largest C of a third, together far over
//! the slot's budget (9 GiB where 6 GiB were needed, in a realistic sequence), and two such slots run a
//! 24 GB card out of memory mid-allocation. [`plan_buffers`] keeps a buffer only while the slot as a whole
//! stays within its budget, and frees the most oversized ones first when it would not.

use super::{freivalds, slot::Dims};

/// The buffers of a slot, in [`BufferPlan::keep`] order.
pub(crate) const BUFFERS: [&str; 4] = ["A", "Bᵗ", "C", "the leaves"];

/// What to do with each buffer before a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferPlan {
    /// Per buffer (A, Bᵗ, C, leaves): keep what is held (`true`), or free it and allocate exactly what the
    /// shard needs.
    pub(crate) keep: [bool; 4],
    /// Bytes freed before allocating.
    pub(crate) to_free: u64,
    /// Bytes allocated after freeing.
    pub(crate) to_allocate: u64,
    /// Bytes the slot holds once the plan is carried out (never over the budget).
    pub(crate) held_after: u64,
}

/// Why a shard's buffers cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// The shard needs more than the slot's budget.
    OverBudget {
        /// Bytes the shard needs.
        needed: u64,
    },
    /// The budget allows it, but the device does not have that much free right now, even once this slot
    /// has freed everything it holds (another process, or a desktop session, holds the rest).
    DeviceFull {
        /// Bytes the shard needs.
        needed: u64,
        /// Bytes free on the device plus what this slot holds.
        available: u64,
    },
}

/// Which buffers a slot keeps and which it reallocates for a shard that needs `needed` bytes per buffer,
/// when it holds `held` bytes per buffer (0: none), may hold at most `budget` bytes in all, and the device
/// has `device_free` bytes free now.
///
/// A buffer is kept when it is large enough, unless keeping it would put the slot over its budget: then
/// the kept buffers with the largest excess over what the shard needs are reallocated to the exact size,
/// one by one, until the slot fits. When the allocations would not fit in what the device has free, every
/// buffer is reallocated (all the slot's memory given back first).
pub(crate) fn plan_buffers(
    held: [u64; 4],
    needed: [u64; 4],
    budget: u64,
    device_free: u64,
) -> Result<BufferPlan, NoRoom> {
    let total_needed: u64 = needed.iter().sum();
    if total_needed > budget {
        return Err(NoRoom::OverBudget { needed: total_needed });
    }
    let mut keep = [false; 4];
    for i in 0..4 {
        keep[i] = held[i] > 0 && held[i] >= needed[i];
    }
    let after = |keep: &[bool; 4]| -> u64 {
        (0..4).map(|i| if keep[i] { held[i] } else { needed[i] }).sum()
    };
    while after(&keep) > budget {
        // Σ needed ≤ budget, so some kept buffer is larger than needed while the total is over.
        let Some(largest) = (0..4).filter(|&i| keep[i]).max_by_key(|&i| held[i] - needed[i]) else {
            break;
        };
        keep[largest] = false;
    }
    let plan = |keep: [bool; 4]| {
        let to_free = (0..4).filter(|&i| !keep[i]).map(|i| held[i]).sum();
        let to_allocate = (0..4).filter(|&i| !keep[i]).map(|i| needed[i]).sum();
        BufferPlan { keep, to_free, to_allocate, held_after: after(&keep) }
    };
    let chosen = plan(keep);
    if chosen.to_allocate <= device_free.saturating_add(chosen.to_free) {
        return Ok(chosen);
    }
    let everything = plan([false; 4]);
    if everything.to_allocate <= device_free.saturating_add(everything.to_free) {
        return Ok(everything);
    }
    Err(NoRoom::DeviceFull {
        needed: total_needed,
        available: device_free.saturating_add(held.iter().sum::<u64>()),
    })
}

/// Device bytes a checked shard of `rows` rows at matrix size `n` takes from its slot's budget: the four
/// buffers of [`Dims::buffer_bytes`] and the Freivalds check's scratch ([`freivalds::scratch_bytes`]).
pub(crate) fn checked_shard_bytes(n: u32, rows: u32) -> u64 {
    let d = Dims::new(n, rows);
    d.bytes() + freivalds::scratch_bytes(&d)
}

/// The most rows of one shard at matrix size `n` that a slot with `budget` bytes accepts: the largest
/// `rows ≤ n` whose [`checked_shard_bytes`] fit, which is exactly what [`plan_buffers`] lets through (the
/// backend hands it the budget less the check's scratch). 0 when not even one row fits. Shards over
/// [`super::CHUNK_ROWS`] rows need nothing more: their GEMM chunks are pointer offsets into the same A and
/// C.
pub(crate) fn max_rows(n: u32, budget: u64) -> u32 {
    let fits = |rows: u32| checked_shard_bytes(n, rows) <= budget;
    if n == 0 || !fits(1) {
        return 0;
    }
    // The bytes only grow with the rows: bisect for the last row count that fits, keeping fits(low).
    let (mut low, mut high) = (1, n);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fits(mid) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const PLENTY: u64 = 1 << 50;

    /// A, Bᵗ, C and leaves of a shard of `rows` rows at size `n` (as `Dims` counts them, unpadded here).
    fn shard(n: u64, rows: u64) -> [u64; 4] {
        [rows * n, n * n, 4 * rows * n, 32 * rows]
    }

    /// Carries a plan out: kept buffers stay, the others become exactly what was needed.
    fn apply(held: [u64; 4], needed: [u64; 4], plan: &BufferPlan) -> [u64; 4] {
        std::array::from_fn(|i| if plan.keep[i] { held[i] } else { needed[i] })
    }

    #[test]
    fn the_same_shape_again_reuses_everything() {
        let need = shard(8192, 4096);
        let plan = plan_buffers(need, need, 2 * GIB, 0).expect("fits");
        assert_eq!(plan.keep, [true; 4]);
        assert_eq!((plan.to_free, plan.to_allocate), (0, 0));
        assert_eq!(plan.held_after, need.iter().sum::<u64>());
    }

    #[test]
    fn an_empty_slot_allocates_exactly_what_is_needed() {
        let need = shard(1000, 10);
        let plan = plan_buffers([0; 4], need, GIB, GIB).expect("fits");
        assert_eq!(plan.keep, [false; 4]);
        assert_eq!(plan.to_allocate, need.iter().sum::<u64>());
        assert_eq!(plan.to_free, 0);
    }

    /// The sequence: tall shards of a small product, then a large B, then wide rows. Growing each
    /// buffer on its own ends with max A + max Bᵗ + max C, far over the budget; the plan never does.
    #[test]
    fn a_mixed_sequence_never_holds_more_than_the_budget() {
        let sequence =
            [shard(16384, 16384), shard(32768, 2048), shard(8192, 8192), shard(32768, 4096)];
        let budget = sequence.iter().map(|s| s.iter().sum::<u64>()).max().expect("shards");
        let grown: u64 = (0..4).map(|i| sequence.iter().map(|s| s[i]).max().unwrap_or(0)).sum();
        assert!(grown > budget + budget / 4, "the sequence shows the problem: {grown} vs {budget}");
        let mut held = [0u64; 4];
        for need in sequence {
            let plan =
                plan_buffers(held, need, budget, PLENTY).expect("each shard fits the budget");
            assert!(plan.held_after <= budget, "{plan:?}");
            held = apply(held, need, &plan);
            assert_eq!(held.iter().sum::<u64>(), plan.held_after);
            for i in 0..4 {
                assert!(held[i] >= need[i], "{} too small", BUFFERS[i]);
            }
        }
    }

    #[test]
    fn the_most_oversized_buffer_goes_first() {
        // C held at 4 GiB where 1 GiB is needed, A at 1.5 GiB where 1 is needed: freeing C alone fits.
        let held = [3 * GIB / 2, GIB, 4 * GIB, 0];
        let need = [GIB, GIB, GIB, 1];
        let plan = plan_buffers(held, need, 4 * GIB, PLENTY).expect("fits");
        assert_eq!(plan.keep, [true, true, false, false]);
        assert_eq!(plan.held_after, 3 * GIB / 2 + GIB + GIB + 1);
        assert_eq!(plan.to_free, 4 * GIB);
    }

    #[test]
    fn a_full_device_frees_everything_first_or_says_so() {
        let held = [2 * GIB, GIB, GIB, 0];
        let need = [GIB, 2 * GIB, GIB, 1];
        // Bᵗ must grow: the old one freed, 1 GiB more (and a byte of leaves) must be free on the device.
        let plan = plan_buffers(held, need, 8 * GIB, GIB + 1).expect("fits once Bᵗ is freed");
        assert_eq!(plan.keep, [true, false, true, false]);
        assert_eq!((plan.to_free, plan.to_allocate), (GIB, 2 * GIB + 1));
        // 1 MiB free: only giving back the oversized A too makes room, so everything is reallocated.
        let tight = plan_buffers(held, need, 8 * GIB, 1 << 20).expect("fits once all is freed");
        assert_eq!(tight.keep, [false; 4]);
        assert_eq!(tight.held_after, 4 * GIB + 1);
        // Nothing free at all: even that is a byte short.
        let full = plan_buffers(held, need, 8 * GIB, 0);
        assert_eq!(full, Err(NoRoom::DeviceFull { needed: 4 * GIB + 1, available: 4 * GIB }));
        let over = plan_buffers([0; 4], need, 4 * GIB, PLENTY);
        assert_eq!(over, Err(NoRoom::OverBudget { needed: 4 * GIB + 1 }));
    }

    /// The advertised rows are the plan's own limit: they fit, one more does not (or they are all of n),
    /// and the plan accepts them within the budget the backend gives it.
    #[test]
    fn max_rows_is_the_plans_limit() {
        for n in [1u32, 16, 100, 1024, 4096, 4160, 16384, 65_536] {
            for budget in [0, 1 << 20, 64 << 20, GIB, 11 * GIB, 70 * GIB, u64::MAX] {
                let rows = max_rows(n, budget);
                assert!(rows <= n, "n={n} budget={budget}");
                if rows > 0 {
                    assert!(checked_shard_bytes(n, rows) <= budget, "n={n} budget={budget}");
                    let d = Dims::new(n, rows);
                    let scratch = freivalds::scratch_bytes(&d);
                    let plan = plan_buffers([0; 4], d.buffer_bytes(), budget - scratch, PLENTY);
                    assert!(plan.is_ok(), "n={n} rows={rows} budget={budget}: {plan:?}");
                }
                if rows < n {
                    assert!(checked_shard_bytes(n, rows + 1) > budget, "n={n} budget={budget}");
                }
            }
        }
    }

    /// A GPU's layout is not the CPU's: i8 A and Bᵗ where the CPU keeps A as i16 pairs, so a 24 GB card's
    /// slot (about 11 GiB) holds more rows at n = 65536 than the CPU formula says, and past the chunk size.
    #[test]
    fn a_gpu_slot_holds_more_rows_than_the_cpu_formula() {
        let budget = 11 * GIB;
        let (gpu, cpu) = (max_rows(65_536, budget), crate::max_rows_for_memory(65_536, budget));
        assert!(gpu > cpu && gpu > super::super::CHUNK_ROWS, "gpu {gpu} cpu {cpu}");
        // At n = 65536: 4 GiB of Bᵗ, and 5·65536 + 32 bytes per padded row plus 16 of check sums.
        let per_row = 5 * 65_536 + 32 + 16;
        let fixed = 65_536 * 65_536 + 4 * 65_536 + 8 * (256 + 1) * 65_536;
        let expect = ((budget - fixed) / per_row) as u32 / 64 * 64;
        assert!(gpu.abs_diff(expect) < 64, "gpu {gpu} expect {expect}");
        // A whole n = 16384 product fits; at n = 65536 a 141 GB card's slot holds all of n too.
        assert_eq!(max_rows(16_384, budget), 16_384);
        assert_eq!(max_rows(65_536, 70 * GIB), 65_536);
        assert_eq!(max_rows(65_536, 4 * GIB), 0, "Bᵗ alone is 4 GiB");
    }
}
