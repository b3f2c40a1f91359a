//! Single elements of C from the definition, for spot checks: the coordinator recomputes a few elements
//! of every shard a device returns, so this runs once per checked element on the coordinator's CPU and has
//! to cost next to nothing beside the job. [`c_elements`] gives the same values as
//! `Challenge::c_element`, but generates the A row once per row (not once per element) and B's column
//! groups 16 rows per Philox batch on the fastest path this CPU has ([`super::philox`]).

use super::{
    Kernel,
    generate::fill_row,
    philox::{LANES, Path},
};
use cpc_common::synthetic::{COLUMNS_PER_GROUP, Challenge, matrix_ids};

/// `C[row][col]` of iteration `iteration` for every `col` in `cols`, in order: the values
/// `challenge.c_element(iteration, row, col)` gives, at O(n) Philox work per distinct 16-column group
/// rather than per element. Like `c_element`, it does not check that `row` and `cols` are below n.
pub fn c_elements(challenge: &Challenge, iteration: u32, row: u32, cols: &[u32]) -> Vec<i32> {
    let km = challenge.key_material();
    let (a_id, b_id) = matrix_ids(iteration);
    let n = challenge.matrix_size();
    let path = Path::for_kernel(Kernel::detect());
    let mut a_row = vec![0i8; n as usize];
    fill_row(path, &km, a_id, row, &mut a_row);
    let mut out = vec![0i32; cols.len()];
    let mut groups: Vec<u32> = cols.iter().map(|c| c / COLUMNS_PER_GROUP as u32).collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        // The lanes of this group that were asked for, and where each answer goes.
        let wanted: Vec<(usize, usize)> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| **c / COLUMNS_PER_GROUP as u32 == group)
            .map(|(slot, c)| (slot, (c % COLUMNS_PER_GROUP as u32) as usize))
            .collect();
        let mut sums = vec![0i32; wanted.len()];
        for (batch, a) in a_row.chunks(LANES).enumerate() {
            let k0 = (batch * LANES) as u32;
            let rows = std::array::from_fn(|i| k0.wrapping_add(i as u32));
            let words = path.run(&km, b_id, [group; LANES], rows);
            for (sum, &(_, lane)) in sums.iter_mut().zip(&wanted) {
                let (w, shift) = (lane / 4, 8 * (lane % 4));
                for (i, &a) in a.iter().enumerate() {
                    let b = (words[w][i] >> shift) as u8 as i8;
                    *sum += i32::from(a) * i32::from(b);
                }
            }
        }
        for (sum, (slot, _)) in sums.into_iter().zip(wanted) {
            out[slot] = sum;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_the_definition() {
        for n in [1u32, 15, 16, 17, 100, 257] {
            let challenge = Challenge::new(format!("elements-{n}"), n, 2).expect("challenge");
            let cols: Vec<u32> = [0, n / 2, n - 1, n / 3, n - 1].to_vec();
            for row in [0, n / 2, n - 1] {
                for iteration in 0..2 {
                    let want: Vec<i32> =
                        cols.iter().map(|&c| challenge.c_element(iteration, row, c)).collect();
                    assert_eq!(
                        c_elements(&challenge, iteration, row, &cols),
                        want,
                        "n={n} row={row}"
                    );
                }
            }
        }
        let challenge = Challenge::new("empty", 8, 1).expect("challenge");
        assert!(c_elements(&challenge, 0, 3, &[]).is_empty());
    }
}
