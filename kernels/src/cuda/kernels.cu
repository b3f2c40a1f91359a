// synthetic-v1 device kernels, compiled at start-up by NVRTC (see kernels/src/cuda/module.rs).
//
// Every kernel mirrors a CPU definition line by line, so that review can check one against the other:
//   philox4x32_10  <- cpc_common::synthetic::philox4x32_10        (Random123, 10 rounds)
//   gen_a, gen_bt  <- cpc_common::synthetic::KeyMaterial::group   (counter = [g, r, m, s], 16 bytes LE)
//   gemm_i8_dp4a   <- kernels/src/cpu/gemm.rs (exact i8 x i8 -> i32; used only when cuBLASLt is unusable)
//   sha256_rows    <- sha2::Sha256 over C[r][0..n] as little-endian i32 (kernels/src/cpu/hash.rs), FIPS 180-4
//
// Layouts (all padded with zeros, see kernels/src/cuda/mod.rs `Dims`):
//   A  : rows_pad x ldk bytes, row-major: A[i][k] at a[i * ldk + k]          (rows of the shard)
//   Bt : npad x ldk bytes, B transposed:  B[k][j] at bt[j * ldk + k]         ("TN": no transpose in the GEMM)
//   C  : rows_pad x npad i32, row-major:   C[i][j] at c[i * npad + j]
// Padding in k (k >= n) is zero in both A and Bt, so the padded products add nothing: results stay exact.
// Padded rows of A and padded columns of B are zero too; the rows/columns of C they produce are never hashed.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char i8;

// ---------------------------------------------------------------------------------------------------------
// Philox4x32-10 (cpc_common::synthetic::philox4x32_10)
// ---------------------------------------------------------------------------------------------------------

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, u32 k0, u32 k1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {                           // if round > 0 { k0 += W0; k1 += W1 }
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        u32 hi0 = __umulhi(PHILOX_M0, c.x);        // p0 = M0 * c0
        u32 lo0 = PHILOX_M0 * c.x;
        u32 hi1 = __umulhi(PHILOX_M1, c.z);        // p1 = M1 * c2
        u32 lo1 = PHILOX_M1 * c.z;
        uint4 n;                                   // (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        n.x = hi1 ^ c.y ^ k0;
        n.y = lo1;
        n.z = hi0 ^ c.w ^ k1;
        n.w = lo0;
        c = n;
    }
    return c;
}

// Keeps the `valid` low bytes of a little-endian word (columns past n become zero).
__device__ __forceinline__ u32 keep_low_bytes(u32 w, int valid) {
    if (valid >= 4) return w;
    if (valid <= 0) return 0u;
    return w & ((1u << (8 * valid)) - 1u);
}

// One Philox group: columns 16g..16g+15 of row `row` of matrix `matrix_id` (KeyMaterial::group), as the four
// little-endian words x0..x3 (bytes 0..15 in memory order), columns >= n zeroed.
__device__ __forceinline__ uint4 group_words(u32 matrix_id, u32 row, u32 g, u32 n, u32 k0, u32 k1, u32 stream) {
    uint4 x = philox4x32_10(make_uint4(g, row, matrix_id, stream), k0, k1);
    int valid = (int)n - (int)(16u * g);           // columns of this group that are < n
    x.x = keep_low_bytes(x.x, valid);
    x.y = keep_low_bytes(x.y, valid - 4);
    x.z = keep_low_bytes(x.z, valid - 8);
    x.w = keep_low_bytes(x.w, valid - 12);
    return x;
}

// A: rows row0 .. row0+rows of matrix `matrix_id`, one thread per (padded row i, 16-column group g).
// Grid: rows_pad * (ldk / 16) threads. Writes every byte of the padded buffer (zeros in the padding).
extern "C" __global__ void gen_a(i8* __restrict__ a, u32 rows, u32 rows_pad, u32 row0, u32 n, u32 ldk,
                                 u32 matrix_id, u32 k0, u32 k1, u32 stream) {
    u32 groups = ldk / 16u;
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows_pad * groups) return;
    u32 i = (u32)(idx / groups);
    u32 g = (u32)(idx % groups);
    uint4 out = make_uint4(0u, 0u, 0u, 0u);
    if (i < rows && 16u * g < n) {
        out = group_words(matrix_id, row0 + i, g, n, k0, k1, stream);
    }
    reinterpret_cast<uint4*>(a + (u64)i * ldk)[g] = out;  // ldk % 16 == 0: 16-byte aligned
}

// Bt = B transposed: bt[j * ldk + k] = B[k][j]. One thread per (4 consecutive rows k of B, 16-column group g):
// four Philox groups, transposed in registers into 16 words (one per column j, holding B[k..k+4][j]).
// Consecutive threads take consecutive k quads, so each warp writes 128 contiguous bytes per column.
// Grid: (ldk / 4) * (npad / 16) threads.
extern "C" __global__ void gen_bt(i8* __restrict__ bt, u32 n, u32 npad, u32 ldk,
                                  u32 matrix_id, u32 k0, u32 k1, u32 stream) {
    u32 quads = ldk / 4u;
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)quads * (npad / 16u)) return;
    u32 kq = (u32)(idx % quads);
    u32 g = (u32)(idx / quads);
    u32 w[4][4];                                   // w[r][q]: word q of row k = 4kq + r
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        u32 k = 4u * kq + (u32)r;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (k < n && 16u * g < n) x = group_words(matrix_id, k, g, n, k0, k1, stream);
        w[r][0] = x.x; w[r][1] = x.y; w[r][2] = x.z; w[r][3] = x.w;
    }
    #pragma unroll
    for (int c = 0; c < 16; ++c) {                 // column j = 16g + c is byte c%4 of word c/4
        int q = c / 4, shift = 8 * (c % 4);
        u32 v = ((w[0][q] >> shift) & 0xFFu)
              | (((w[1][q] >> shift) & 0xFFu) << 8)
              | (((w[2][q] >> shift) & 0xFFu) << 16)
              | (((w[3][q] >> shift) & 0xFFu) << 24);
        u64 j = 16u * g + (u32)c;
        reinterpret_cast<u32*>(bt + j * ldk)[kq] = v;  // ldk % 4 == 0: 4-byte aligned
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fallback exact GEMM: C[i][j] = sum_k A[i][k] * Bt[j][k], with __dp4a (4 i8 products + i32 accumulate,
// exact). 64 x 64 tile of C per block of 256 threads, each thread a 4 x 4 block; k in steps of 32 bytes.
// Needs rows_pad, npad and ldk multiples of 64 (Dims guarantees it), so there are no bounds checks.
// Grid: (npad / 64, rows_pad / 64), block 256.
// ---------------------------------------------------------------------------------------------------------

#define TILE 64
#define KWORDS 8

extern "C" __global__ void __launch_bounds__(256) gemm_i8_dp4a(const int* __restrict__ a,
                                                               const int* __restrict__ bt,
                                                               int* __restrict__ c,
                                                               u32 ldk_words, u32 ldc) {
    __shared__ int sa[TILE][KWORDS + 1];
    __shared__ int sb[TILE][KWORDS + 1];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    u64 row0 = (u64)blockIdx.y * TILE, col0 = (u64)blockIdx.x * TILE;
    int acc[4][4];
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    }
    for (u32 kw = 0; kw < ldk_words; kw += KWORDS) {
        for (int t = threadIdx.x; t < TILE * KWORDS; t += 256) {
            int r = t / KWORDS, q = t % KWORDS;
            sa[r][q] = a[(row0 + r) * ldk_words + kw + q];
            sb[r][q] = bt[(col0 + r) * ldk_words + kw + q];
        }
        __syncthreads();
        #pragma unroll
        for (int q = 0; q < KWORDS; ++q) {
            int av[4], bv[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = sa[ty + 16 * i][q];
            #pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = sb[tx + 16 * j][q];
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) c[(row0 + ty + 16 * i) * ldc + col0 + tx + 16 * j] = acc[i][j];
    }
}

// ---------------------------------------------------------------------------------------------------------
// SHA-256 of each row (FIPS 180-4): L_r = sha256(C[r][0..n] as little-endian i32), one thread per row.
// The message is 4n bytes; an i32 v stored little-endian is the big-endian message word bswap(v).
// ---------------------------------------------------------------------------------------------------------

__constant__ u32 SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

__device__ __forceinline__ u32 rotr(u32 x, u32 s) { return __funnelshift_r(x, x, s); }
__device__ __forceinline__ u32 bswap32(u32 x) { return __byte_perm(x, 0u, 0x0123u); }

__device__ __forceinline__ void sha256_compress(u32 st[8], u32 w[16]) {
    u32 a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
    #pragma unroll
    for (int t = 0; t < 64; ++t) {
        u32 wt;
        if (t < 16) {
            wt = w[t];
        } else {                                   // W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]
            u32 x15 = w[(t - 15) & 15], x2 = w[(t - 2) & 15];
            u32 s0 = rotr(x15, 7) ^ rotr(x15, 18) ^ (x15 >> 3);
            u32 s1 = rotr(x2, 17) ^ rotr(x2, 19) ^ (x2 >> 10);
            wt = w[t & 15] + s0 + w[(t - 7) & 15] + s1;
            w[t & 15] = wt;
        }
        u32 S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        u32 ch = (e & f) ^ (~e & g);
        u32 t1 = h + S1 + ch + SHA256_K[t] + wt;
        u32 S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        u32 maj = (a & b) ^ (a & c) ^ (b & c);
        u32 t2 = S0 + maj;
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

// Rows [row_begin, row_end) of C (stride ldc i32, n values each): leaves[r * 32 .. r * 32 + 32] = sha256(row r),
// r counted from row 0 of the buffer. Grid: row_end - row_begin threads.
extern "C" __global__ void sha256_rows(const int* __restrict__ c, unsigned char* __restrict__ leaves,
                                       u32 row_begin, u32 row_end, u32 n, u32 ldc) {
    u64 r = (u64)row_begin + (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= row_end) return;
    const int* row = c + r * ldc;
    u32 st[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    u32 w[16];
    u32 full = n / 16u;                            // whole 64-byte blocks of the message
    for (u32 blk = 0; blk < full; ++blk) {
        const int4* p = reinterpret_cast<const int4*>(row + 16u * blk);  // ldc % 64 == 0: 16-byte aligned
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            int4 v = __ldg(p + q);
            w[4 * q + 0] = bswap32((u32)v.x);
            w[4 * q + 1] = bswap32((u32)v.y);
            w[4 * q + 2] = bswap32((u32)v.z);
            w[4 * q + 3] = bswap32((u32)v.w);
        }
        sha256_compress(st, w);
    }
    // Tail: rem < 16 values, then the 0x80 byte (as the word 0x80000000, the message being whole words),
    // zeros, and the bit length 32n as a big-endian u64 in words 14, 15 (in a second block when rem >= 14).
    u32 rem = n - 16u * full;
    u64 bits = (u64)n * 32u;
    #pragma unroll
    for (int q = 0; q < 16; ++q) {
        u32 qq = (u32)q;
        w[q] = qq < rem ? bswap32((u32)row[16u * full + qq]) : (qq == rem ? 0x80000000u : 0u);
    }
    if (rem >= 14u) {
        sha256_compress(st, w);
        #pragma unroll
        for (int q = 0; q < 16; ++q) w[q] = 0u;
    }
    w[14] = (u32)(bits >> 32);
    w[15] = (u32)bits;
    sha256_compress(st, w);
    u32* out = reinterpret_cast<u32*>(leaves + r * 32u);
    #pragma unroll
    for (int q = 0; q < 8; ++q) out[q] = bswap32(st[q]);  // digest bytes are the state words big-endian
}

// ---------------------------------------------------------------------------------------------------------
// Freivalds' check (kernels/src/freivalds.rs; CPU twin kernels/src/cpu/freivalds/): C·r == A·(B·r) modulo
// 2^64, with matrix-vector kernels on the CUDA cores, a path apart from the GEMM (cuBLASLt on the tensor cores,
// or gemm_i8_dp4a). r is the host's check_vector: n entries, i32. Products are taken as unsigned 64-bit
// (two's complement), so every sum wraps modulo 2^64 exactly as the CPU's wrapping arithmetic does.
// ---------------------------------------------------------------------------------------------------------

// Columns of B per partial sum of B·r.
#define FREIVALDS_CHUNK 256u
// Threads per block of freivalds_rows (a power of two: the tree reduction halves it).
#define FREIVALDS_THREADS 128u

// Partial sums of y = B·r: partial[chunk * ldk + k] = sum over j in [chunk * FREIVALDS_CHUNK, +FREIVALDS_CHUNK)
// ∩ [0, n) of B[k][j] · r[j] = bt[j * ldk + k] · r[j]; exact (|y| < 2^54 for n <= 65536). Consecutive threads
// read consecutive bytes of a row of Bt. Grid: ldk * chunks threads, chunks = ceil(n / FREIVALDS_CHUNK).
extern "C" __global__ void freivalds_bt_r(const i8* __restrict__ bt, const int* __restrict__ r,
                                          long long* __restrict__ partial, u32 n, u32 ldk, u32 chunks) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (u64)ldk * chunks) return;
    u32 k = (u32)(t % ldk);
    u32 j0 = (u32)(t / ldk) * FREIVALDS_CHUNK;
    u32 j1 = j0 + FREIVALDS_CHUNK < n ? j0 + FREIVALDS_CHUNK : n;
    long long acc = 0;
    for (u32 j = j0; j < j1; ++j) acc += (long long)bt[(u64)j * ldk + k] * (long long)__ldg(r + j);
    partial[t] = acc;
}

// y[k] = sum over chunks of partial[chunk * ldk + k] (zero for the padding k >= n). Grid: ldk threads.
extern "C" __global__ void freivalds_reduce_y(const long long* __restrict__ partial, long long* __restrict__ y,
                                              u32 ldk, u32 chunks) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= ldk) return;
    long long acc = 0;
    for (u32 chunk = 0; chunk < chunks; ++chunk) acc += partial[(u64)chunk * ldk + k];
    y[k] = acc;
}

// Both sides for row i of the shard: sums[2i] = sum_j C[i][j] · r[j] (the product the device computed) and
// sums[2i + 1] = sum_k A[i][k] · y[k] (the inputs alone), modulo 2^64. One block of FREIVALDS_THREADS threads
// per row, reading C's and A's row coalesced; a shared-memory tree adds the threads' parts.
// Grid: rows blocks (the shard's rows, not the padding).
extern "C" __global__ void __launch_bounds__(FREIVALDS_THREADS) freivalds_rows(
        const int* __restrict__ c, const i8* __restrict__ a, const int* __restrict__ r,
        const long long* __restrict__ y, u64* __restrict__ sums, u32 n, u32 ldc, u32 ldk) {
    __shared__ u64 part_c[FREIVALDS_THREADS];
    __shared__ u64 part_a[FREIVALDS_THREADS];
    u32 i = blockIdx.x, t = threadIdx.x;
    const int* c_row = c + (u64)i * ldc;
    const i8* a_row = a + (u64)i * ldk;
    u64 sc = 0, sa = 0;
    for (u32 j = t; j < n; j += FREIVALDS_THREADS) {
        sc += (u64)(long long)__ldg(c_row + j) * (u64)(long long)__ldg(r + j);
        sa += (u64)(long long)a_row[j] * (u64)__ldg(y + j);
    }
    part_c[t] = sc;
    part_a[t] = sa;
    __syncthreads();
    for (u32 s = FREIVALDS_THREADS / 2u; s > 0u; s >>= 1) {
        if (t < s) {
            part_c[t] += part_c[t + s];
            part_a[t] += part_a[t + s];
        }
        __syncthreads();
    }
    if (t == 0u) {
        sums[2u * (u64)i] = part_c[0];
        sums[2u * (u64)i + 1u] = part_a[0];
    }
}
