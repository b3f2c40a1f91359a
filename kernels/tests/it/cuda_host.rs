//! The CUDA kernels' CPU twin check, without a GPU: `kernels/src/cuda/kernels.cu` compiled as C++ by the
//! host compiler (`kernels/tests/cuda_host/harness.cpp` shims the intrinsics and runs every kernel over its
//! real grid, `__syncthreads` included), its leaves compared with the CPU backend's for odd sizes, offset
//! row ranges, later iterations and the chunked path of `Slot::run` (GEMM chunks through offset pointers,
//! a partial last chunk, hashing from row `c0 > 0`, chunks hashed out of order as on several streams), with
//! the dp4a kernel and with the plain product that cuBLASLt is asked for (that the cuBLASLt call computes
//! it is the unit test in `kernels/src/cuda/gemm.rs`).
//! What it cannot show (the real cuBLASLt, streams, the driver) is left to the GPU parity tests in
//! `cuda.rs`, run by `deploy/gpu-check.sh`. The Freivalds kernels (`freivalds_*`) run the same way: their
//! per-row sums must equal the CPU check's, bit for bit, with and without one flipped element of C.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`). Without one it skips loudly; under `CI=true` it fails.

use cpc_common::synthetic::{Challenge, matrix_ids};
use cpc_kernels::{
    Backend, CheckSeed, CpuBackend, Shard,
    cpu::{Kernel, PackedA, PackedB, freivalds::row_sums, generate_rows},
    freivalds::{RowSums, check_vector, compare, row_sums_plain},
    gpu::CHUNK_ROWS,
};
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

/// The harness binary, built once per test process (`None`: no C++ compiler here, outside CI).
fn harness() -> Option<&'static Path> {
    static HARNESS: OnceLock<Option<PathBuf>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_host/harness.cpp");
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_host");
            std::fs::create_dir_all(&out_dir).expect("creating the harness folder");
            let exe = out_dir.join(format!("harness-{}", std::process::id()));
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
            let built = Command::new(&cxx)
                .args(["-std=c++20", "-O3", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wextra"])
                .args(["-Wno-unused-parameter", "-Wno-unused-function", "-o"])
                .arg(&exe)
                .arg(&source)
                .output();
            match built {
                Ok(out) if out.status.success() => Some(exe),
                Ok(out) => panic!(
                    "{cxx} could not build {}:\n{}",
                    source.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "CI=true but no C++ compiler ({cxx}: {e}): install g++ for the CUDA kernels' host check"
                    );
                    eprintln!(
                        "\n*** SKIPPED the CUDA kernels' host check: no C++ compiler ({cxx}: {e}). \
                         Install g++ (or set CXX) to run it. ***\n"
                    );
                    None
                }
            }
        })
        .as_deref()
}

/// Which GEMM the harness runs between generation and hashing.
#[derive(Debug, Clone, Copy)]
enum Gemm {
    /// `gemm_i8_dp4a` itself, blocks of 256 cooperating threads.
    Dp4a,
    /// `C = A · Bᵗᵀ` on the padded buffers, what the cuBLASLt call computes.
    Plain,
}

impl Gemm {
    fn arg(self) -> &'static str {
        match self {
            Self::Dp4a => "dp4a",
            Self::Plain => "naive",
        }
    }
}

/// The leaves the CUDA kernels produce for `shard`, run on the host with GEMM chunks of `chunk` rows.
fn kernel_leaves(exe: &Path, shard: &Shard, gemm: Gemm, chunk: u32) -> Vec<String> {
    let km = shard.challenge.key_material();
    let (a_id, b_id) = matrix_ids(shard.iteration);
    let args = [
        shard.challenge.matrix_size(),
        shard.rows.start,
        shard.rows.end,
        km.key[0],
        km.key[1],
        km.stream,
        a_id,
        b_id,
    ];
    let out = Command::new(exe)
        .args(args.iter().map(u32::to_string))
        .arg(gemm.arg())
        .arg(chunk.to_string())
        .output()
        .expect("running the harness");
    assert!(out.status.success(), "harness failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("hex").lines().map(str::to_owned).collect()
}

fn cpu_leaves(shard: &Shard) -> Vec<String> {
    let cpu = CpuBackend::new(0).expect("cpu backend");
    cpu.run_shard(shard, false).expect("cpu shard").leaves.iter().map(hex::encode).collect()
}

fn check(exe: &Path, seed: &str, n: u32, rows: std::ops::Range<u32>, iteration: u32) {
    let challenge = Challenge::new(seed, n, iteration + 1).expect("challenge");
    let shard = Shard::new(challenge, iteration, rows.clone()).expect("shard");
    let want = cpu_leaves(&shard);
    // Chunks of 64 rows (several chunks: offset pointers, hashing from c0 > 0, a partial last chunk at
    // small sizes) and the backend's own chunk size.
    for (gemm, chunk) in [(Gemm::Dp4a, 64), (Gemm::Plain, CHUNK_ROWS)] {
        let got = kernel_leaves(exe, &shard, gemm, chunk);
        assert_eq!(
            got, want,
            "seed={seed} n={n} rows={rows:?} iteration={iteration} gemm={gemm:?} chunk={chunk}"
        );
    }
}

/// Sizes around every boundary the kernels care about: the 16-column Philox group, 4-byte words, the 64
/// padding and tile, SHA-256's 16-word block and its 14-word tail limit (n mod 16 ∈ {13, 14, 15, 0, 1}).
#[test]
fn cuda_kernels_on_the_host_match_the_cpu_backend() {
    let Some(exe) = harness() else { return };
    for (seed, n, rows, iteration) in [
        ("host-1", 1, 0..1, 0),
        ("host-3", 3, 1..3, 0),
        ("host-13", 13, 0..13, 0),
        ("host-14", 14, 0..14, 1),
        ("host-15", 15, 2..15, 0),
        ("host-16", 16, 0..16, 0),
        ("host-17", 17, 0..17, 2),
        ("host-33", 33, 5..30, 1),
        ("host-63", 63, 0..63, 0),
        ("host-64", 64, 0..64, 0),
        ("host-65", 65, 60..65, 0),
        ("host-100", 100, 0..100, 1),
        ("host-131", 131, 7..99, 0),
        ("host-160", 160, 0..160, 0),
        ("host-200", 200, 130..200, 0),
    ] {
        check(exe, seed, n, rows, iteration);
    }
}

/// More than one 64-row tile and 64-row hash chunk in both directions, at a size from the shared vectors
/// (n = 1024 is too slow for the thread-per-thread host run; a row range of it is not).
#[test]
fn cuda_kernels_on_the_host_match_on_a_slice_of_a_large_matrix() {
    let Some(exe) = harness() else { return };
    check(exe, "host-large", 1024, 448..600, 0);
}

/// The backend's chunked path at its real chunk size: a shard over [`CHUNK_ROWS`] rows (n = 4160: a full
/// chunk and a partial one of 64 rows with its own cuBLASLt plan, hashed from row 4096), and a range
/// starting past the first chunk (A generated from row 4097). Leaves depend only on their row, so each
/// range is compared with the matching slice of the CPU's whole product. (Two chunks of 64 rows with an
/// offset start are in `cuda_kernels_on_the_host_match_the_cpu_backend`, with the dp4a kernel.)
#[test]
fn cuda_kernels_on_the_host_match_on_the_chunked_path() {
    let Some(exe) = harness() else { return };
    let n = CHUNK_ROWS + 64;
    let challenge = Challenge::new("host-chunked", n, 1).expect("challenge");
    let whole = cpu_leaves(&Shard::whole(challenge.clone(), 0).expect("shard"));
    for rows in [0..n, CHUNK_ROWS + 1..n] {
        let shard = Shard::new(challenge.clone(), 0, rows.clone()).expect("shard");
        let got = kernel_leaves(exe, &shard, Gemm::Plain, CHUNK_ROWS);
        let want = &whole[rows.start as usize..rows.end as usize];
        assert_eq!(got.len(), want.len(), "rows={rows:?}");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("n={n} rows={rows:?}: the leaf of row {} differs", rows.start as usize + i);
        }
    }
}

/// One bit of one element of C, flipped after the GEMM (shard-relative row and column).
#[derive(Debug, Clone, Copy)]
struct Flip {
    row: u32,
    col: u32,
    bit: u32,
}

/// The Freivalds kernels' row sums for `shard` with check vector `r` (and `flip` applied to C), run on the
/// host with the dp4a GEMM; also answers the leaves the harness hashed.
fn kernel_sums(
    exe: &Path,
    shard: &Shard,
    r: &[i32],
    flip: Option<Flip>,
) -> (Vec<String>, Vec<RowSums>) {
    let km = shard.challenge.key_material();
    let (a_id, b_id) = matrix_ids(shard.iteration);
    let flip = flip.unwrap_or(Flip { row: 0, col: 0, bit: 32 });
    let args = [
        shard.challenge.matrix_size(),
        shard.rows.start,
        shard.rows.end,
        km.key[0],
        km.key[1],
        km.stream,
        a_id,
        b_id,
    ];
    let mut child = Command::new(exe)
        .args(args.iter().map(u32::to_string))
        .args(["dp4a", "64", "freivalds"])
        .args([flip.row, flip.col, flip.bit].iter().map(u32::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the harness");
    let input: String = r.iter().map(|v| format!("{v}\n")).collect();
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing r");
    let out = child.wait_with_output().expect("harness output");
    assert!(out.status.success(), "harness failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("text");
    let rows = shard.row_count() as usize;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * rows, "{text}");
    let leaves = lines[..rows].iter().map(|l| (*l).to_owned()).collect();
    let sums = lines[rows..]
        .iter()
        .map(|l| {
            let (p, i) = l.split_once(' ').expect("two sums");
            RowSums { product: p.parse().expect("u64"), inputs: i.parse().expect("u64") }
        })
        .collect();
    (leaves, sums)
}

/// The CPU's row sums for the same shard, vector and flip: the plain definition and the fast path, which
/// must agree with each other before they are compared with the kernels.
fn cpu_sums(shard: &Shard, r: &[i32], flip: Option<Flip>) -> Vec<RowSums> {
    let n = shard.challenge.matrix_size();
    let km = shard.challenge.key_material();
    let (a_id, b_id) = matrix_ids(shard.iteration);
    let cpu = CpuBackend::new(0).expect("cpu backend");
    let mut c = cpu.run_shard(shard, true).expect("cpu shard").rows.expect("rows kept");
    if let Some(f) = flip {
        c[(f.row * n + f.col) as usize] ^= 1 << f.bit;
    }
    let plain = row_sums_plain(
        &generate_rows(&km, a_id, shard.rows.clone(), n),
        &generate_rows(&km, b_id, 0..n, n),
        &c,
        r,
        n as usize,
    );
    let kernel = Kernel::detect();
    let packed_a = PackedA::generate(&km, a_id, shard.rows.clone(), n, kernel);
    let fast = row_sums(&packed_a, &PackedB::generate(&km, b_id, n, kernel), &c, r);
    assert_eq!(fast, plain, "the CPU's fast path and plain definition disagree");
    plain
}

/// The Freivalds kernels (`freivalds_bt_r`, `freivalds_reduce_y`, `freivalds_rows`) over their real grids
/// give the CPU's sums bit for bit: the honest product passes, and a flipped bit fails exactly its row.
/// Sizes cross the 256-column chunk of `B·r`, the 128-thread row block and the 64 padding.
#[test]
fn freivalds_kernels_on_the_host_match_the_cpu_check() {
    let Some(exe) = harness() else { return };
    for (seed, n, rows, iteration, flip) in [
        ("fv-1", 1u32, 0..1u32, 0u32, Flip { row: 0, col: 0, bit: 31 }),
        ("fv-17", 17, 3..17, 1, Flip { row: 13, col: 16, bit: 0 }),
        ("fv-129", 129, 0..70, 0, Flip { row: 64, col: 128, bit: 17 }),
        ("fv-300", 300, 250..300, 2, Flip { row: 7, col: 257, bit: 30 }),
        ("fv-520", 520, 100..140, 0, Flip { row: 39, col: 3, bit: 9 }),
    ] {
        let challenge = Challenge::new(seed, n, iteration + 1).expect("challenge");
        let shard = Shard::new(challenge, iteration, rows.clone()).expect("shard");
        let r = check_vector(CheckSeed(u64::from(n) * 0x1234_5678_9abc), n as usize);
        let context = format!("seed={seed} n={n} rows={rows:?} iteration={iteration}");

        let (leaves, sums) = kernel_sums(exe, &shard, &r, None);
        assert_eq!(leaves, cpu_leaves(&shard), "{context}");
        assert_eq!(sums, cpu_sums(&shard, &r, None), "{context}");
        assert_eq!(compare(&sums), Ok(()), "{context}: the honest product passes");

        let (_, sums) = kernel_sums(exe, &shard, &r, Some(flip));
        assert_eq!(sums, cpu_sums(&shard, &r, Some(flip)), "{context} {flip:?}");
        let mismatch = compare(&sums).expect_err("the flipped element is caught");
        assert_eq!((mismatch.first_rows, mismatch.failed_rows), (vec![flip.row], 1), "{context}");
    }
}
