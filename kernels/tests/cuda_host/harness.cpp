// Host twin of kernels/src/cuda/kernels.cu: the CUDA C compiled as plain C++ with the intrinsics shimmed,
// every kernel launched over its real grid, so the kernels' logic (Philox layout of A and of the transposed
// B, zero padding, the shared-memory tiling of gemm_i8_dp4a, SHA-256 tails, the chunked GEMM and hashing) is
// checked without a GPU. Driven by kernels/tests/it/cuda_host.rs, which compares the leaves with the CPU
// backend.
//
// Blocks run one after another. Kernels without __syncthreads run thread by thread on the calling thread;
// gemm_i8_dp4a runs each block as blockDim real threads meeting at a std::barrier, with its __shared__
// arrays as statics (one block at a time), which is what CUDA guarantees a block.
//
// Usage: harness N ROW0 ROW1 K0 K1 STREAM A_ID B_ID GEMM CHUNK [freivalds FLIP_ROW FLIP_COL FLIP_BIT]
//   GEMM: naive (C = A · Btᵀ on the padded buffers: what cuBLASLt computes, see the unit test in
//   kernels/src/cuda/gemm.rs) | dp4a (the gemm_i8_dp4a kernel).
//   CHUNK: rows per GEMM chunk, as Slot::run in kernels/src/cuda/slot.rs (CHUNK_ROWS there): chunk
//   [c0, c1) of the padded rows is multiplied through pointers offset by c0 rows into A and C (the last
//   chunk partial), then hashed with row_begin = c0; the chunks are hashed stream by stream (chunk i on
//   stream i mod 4, as the backend spreads them), not in order, since the streams run in any order.
//   freivalds: reads the check vector r (N decimal i32) from stdin, flips bit FLIP_BIT (none if >= 32) of
//   C[FLIP_ROW][FLIP_COL] (shard-relative) after the GEMM, and runs the freivalds_* kernels as
//   kernels/src/cuda/freivalds.rs launches them.
// Prints one hex leaf per row ROW0..ROW1; with freivalds, then one line per row: "PRODUCT INPUTS" (the row's
// two sums modulo 2^64, decimal).
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
static_assert(sizeof(uint4) == 16 && sizeof(int4) == 16, "vector types are 16 bytes, as in CUDA");
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

#define __device__
#define __forceinline__ inline
#define __global__
#define __constant__ static
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static

struct dim3_ { unsigned x, y, z; };
static thread_local dim3_ threadIdx;
static dim3_ blockIdx, blockDim;
static std::barrier<>* block_barrier = nullptr;
static void __syncthreads() {
    if (block_barrier == nullptr) { std::fprintf(stderr, "__syncthreads outside a cooperative launch\n"); std::abort(); }
    block_barrier->arrive_and_wait();
}
static int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
static unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
static unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    uint64_t v = ((uint64_t)hi << 32) | lo;
    return (unsigned)(v >> (s & 31));
}
static unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
template <class T> static T __ldg(const T* p) { return *p; }

#include "../../src/cuda/kernels.cu"

// A 1-D grid, thread by thread (kernels without __syncthreads).
template <class F> static void launch_1d(uint64_t threads, unsigned block, F kernel) {
    blockDim = {block, 1, 1};
    for (uint64_t b = 0; b < (threads + block - 1) / block; b++) {
        blockIdx = {(unsigned)b, 0, 0};
        for (unsigned t = 0; t < block; t++) { threadIdx = {t, 0, 0}; kernel(); }
    }
}

// A 2-D grid of cooperative blocks: each block is `block` threads meeting at __syncthreads.
template <class F> static void launch_blocks(unsigned gx, unsigned gy, unsigned block, F kernel) {
    blockDim = {block, 1, 1};
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            blockIdx = {bx, by, 0};
            std::barrier<> barrier((std::ptrdiff_t)block);
            block_barrier = &barrier;
            std::vector<std::thread> threads;
            threads.reserve(block);
            for (unsigned t = 0; t < block; t++) threads.emplace_back([t, &kernel] { threadIdx = {t, 0, 0}; kernel(); });
            for (auto& th : threads) th.join();
            block_barrier = nullptr;
        }
    }
}

int main(int argc, char** argv) {
    if (argc != 11 && !(argc == 15 && std::string(argv[11]) == "freivalds")) {
        std::fprintf(stderr, "usage: harness N ROW0 ROW1 K0 K1 STREAM A_ID B_ID naive|dp4a CHUNK "
                             "[freivalds FLIP_ROW FLIP_COL FLIP_BIT]\n");
        return 2;
    }
    bool freivalds = argc == 15;
    unsigned n = std::strtoul(argv[1], 0, 10), r0 = std::strtoul(argv[2], 0, 10), r1 = std::strtoul(argv[3], 0, 10);
    unsigned k0 = std::strtoul(argv[4], 0, 10), k1 = std::strtoul(argv[5], 0, 10), st = std::strtoul(argv[6], 0, 10);
    unsigned a_id = std::strtoul(argv[7], 0, 10), b_id = std::strtoul(argv[8], 0, 10);
    std::string gemm = argv[9];
    unsigned chunk = std::strtoul(argv[10], 0, 10);
    if (n == 0 || r1 <= r0 || r1 > n || chunk == 0 || chunk % 64 != 0) { std::fprintf(stderr, "bad arguments\n"); return 2; }

    // Dims::new in kernels/src/cuda/mod.rs: every dimension padded to 64.
    auto pad = [](unsigned x) { return (x + 63) / 64 * 64; };
    unsigned rows = r1 - r0, rows_pad = pad(rows), npad = pad(n), ldk = pad(n);
    // Poisoned, not zeroed: the kernels must write every byte of the padding themselves.
    std::vector<signed char> a((size_t)rows_pad * ldk, 0x5a), bt((size_t)npad * ldk, 0x5a);
    std::vector<int> c((size_t)rows_pad * npad, 0x5a5a5a5a);
    std::vector<unsigned char> leaves((size_t)rows_pad * 32, 0);

    // Generation, with Slot::run's grids and block size.
    launch_1d((uint64_t)(ldk / 4) * (npad / 16), 256, [&] { gen_bt(bt.data(), n, npad, ldk, b_id, k0, k1, st); });
    launch_1d((uint64_t)rows_pad * (ldk / 16), 256, [&] { gen_a(a.data(), rows, rows_pad, r0, n, ldk, a_id, k0, k1, st); });

    // Slot::run's chunk loop: GEMM chunk [c0, c1) through offset pointers, the chunks' hashing afterwards.
    const unsigned hash_streams = 4;
    std::vector<std::pair<unsigned, unsigned>> chunks;
    for (unsigned c0 = 0; c0 < rows_pad; c0 += chunk) chunks.push_back({c0, c0 + chunk < rows_pad ? c0 + chunk : rows_pad});
    for (auto [c0, c1] : chunks) {
        unsigned chunk_rows = c1 - c0;
        const signed char* a_chunk = a.data() + (size_t)c0 * ldk;
        int* c_chunk = c.data() + (size_t)c0 * npad;
        if (gemm == "naive") {
            // What cuBLASLt computes for the chunk; rows split over host threads (the product is the same).
            unsigned workers = std::max(1u, std::min(std::thread::hardware_concurrency(), 16u));
            std::vector<std::thread> pool;
            for (unsigned w = 0; w < workers; w++) {
                pool.emplace_back([&, w] {
                    for (unsigned i = w; i < chunk_rows; i += workers)
                        for (unsigned j = 0; j < npad; j++) {
                            const signed char* x = a_chunk + (size_t)i * ldk;
                            const signed char* y = bt.data() + (size_t)j * ldk;
                            int acc = 0;
                            for (unsigned p = 0; p < ldk; p++) acc += (int)x[p] * (int)y[p];
                            c_chunk[(size_t)i * npad + j] = acc;
                        }
                });
            }
            for (auto& t : pool) t.join();
        } else if (gemm == "dp4a") {
            // Slot::gemm_chunk's launch: grid (npad / 64, chunk / 64), 256 threads, words of 4 bytes.
            unsigned ldk_words = ldk / 4, ldc = npad;
            const int* aw = reinterpret_cast<const int*>(a_chunk);
            const int* bw = reinterpret_cast<const int*>(bt.data());
            launch_blocks(npad / 64, chunk_rows / 64, 256, [&] { gemm_i8_dp4a(aw, bw, c_chunk, ldk_words, ldc); });
        } else {
            std::fprintf(stderr, "unknown GEMM %s\n", gemm.c_str());
            return 2;
        }
    }

    if (freivalds) {
        unsigned flip_row = std::strtoul(argv[12], 0, 10), flip_col = std::strtoul(argv[13], 0, 10);
        unsigned flip_bit = std::strtoul(argv[14], 0, 10);
        if (flip_bit < 32 && flip_row < rows && flip_col < n)
            c[(size_t)flip_row * npad + flip_col] ^= (int)(1u << flip_bit);
    }


    // Hashing of the chunks that hold shard rows, stream by stream (32 threads per block, rows c0..min(c1, rows)).
    for (unsigned s = 0; s < hash_streams; s++) {
        for (size_t i = s; i < chunks.size(); i += hash_streams) {
            auto [c0, c1] = chunks[i];
            if (c0 >= rows) continue;
            unsigned begin = c0, end = c1 < rows ? c1 : rows;
            launch_1d(end - begin, 32, [&] { sha256_rows(c.data(), leaves.data(), begin, end, n, npad); });
        }
    }
    for (unsigned i = 0; i < rows; i++) {
        for (int b = 0; b < 32; b++) std::printf("%02x", leaves[(size_t)i * 32 + b]);
        std::printf("\n");
    }
    if (!freivalds) return 0;

    // Freivalds' check, with kernels/src/cuda/freivalds.rs's grids: r padded with zeros to npad, B·r in
    // chunks then reduced, then one cooperative block per row.
    std::vector<int> r(npad, 0);
    for (unsigned j = 0; j < n; j++) {
        long long v;
        if (std::scanf("%lld", &v) != 1) { std::fprintf(stderr, "r: expected %u values\n", n); return 2; }
        r[j] = (int)v;
    }
    unsigned fv_chunks = (n + FREIVALDS_CHUNK - 1) / FREIVALDS_CHUNK;
    std::vector<long long> partial((size_t)fv_chunks * ldk, 0x5a5a5a5a), y(ldk, 0x5a5a5a5a);
    std::vector<unsigned long long> sums((size_t)rows * 2, 0x5a5a5a5a);
    launch_1d((uint64_t)ldk * fv_chunks, 256, [&] { freivalds_bt_r(bt.data(), r.data(), partial.data(), n, ldk, fv_chunks); });
    launch_1d(ldk, 256, [&] { freivalds_reduce_y(partial.data(), y.data(), ldk, fv_chunks); });
    launch_blocks(rows, 1, FREIVALDS_THREADS, [&] {
        freivalds_rows(c.data(), a.data(), r.data(), y.data(), sums.data(), n, npad, ldk);
    });
    for (unsigned i = 0; i < rows; i++) std::printf("%llu %llu\n", sums[2 * (size_t)i], sums[2 * (size_t)i + 1]);
    return 0;
}
