// seqkv engine on the GPU: the same per-element arithmetic as rust/seqkv-engine (docs/engine.md),
// so that logits and KV are bit-identical to the CPU engine. CPU reference: seqkv.engine.Engine.
//
// Rules kept here: every product/sum that the CPU does as a separate IEEE operation is written
// with __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn (nvcc would otherwise contract a*b+c into an
// FMA); every FMA the CPU does is an explicit fmaf; sqrtf is IEEE (no fast math); exp is the
// engine's own polynomial. Matmul: one fmaf chain over k = 0..K-1 per output (tiled, no
// split-K), which is the CPU's definition whatever the tile shape or the number of rows.
//
// Layouts: activations row-major f32; weights bf16 (u16) [K][N] row-major; KV cache f32
// [slot][layer][2][max_len][kv_heads][head_dim]; rows of a pass are (slot, pos) pairs.

typedef unsigned short u16;
typedef unsigned long long u64;
#define NEG_INF __uint_as_float(0xff800000u)

__device__ __forceinline__ float bf16f(u16 h) { return __uint_as_float(((unsigned)h) << 16); }

// ---- exp / silu (rust/seqkv-engine/src/math.rs); constants as f32 bit patterns ---------------
__device__ __forceinline__ float eng_exp(float x) {
    x = (x > -104.0f) ? x : -104.0f;   // maxps semantics: NaN -> -104
    x = (x < 89.0f) ? x : 89.0f;
    float n = rintf(__fmul_rn(x, __uint_as_float(0x3fb8aa3bu)));
    float r = fmaf(n, __uint_as_float(0xbf318000u), x);
    r = fmaf(n, __uint_as_float(0x395e8083u), r);
    float z = __fmul_rn(r, r);
    float p = __uint_as_float(0x39506967u);
    p = fmaf(p, r, __uint_as_float(0x3ab743ceu));
    p = fmaf(p, r, __uint_as_float(0x3c088908u));
    p = fmaf(p, r, __uint_as_float(0x3d2aa9c1u));
    p = fmaf(p, r, __uint_as_float(0x3e2aaaaau));
    p = fmaf(p, r, __uint_as_float(0x3f000000u));
    float y = __fadd_rn(fmaf(p, z, r), 1.0f);
    int ni = (int)n;
    int h = ni >> 1;
    float s1 = __int_as_float((h + 127) << 23);
    float s2 = __int_as_float((ni - h + 127) << 23);
    return __fmul_rn(__fmul_rn(y, s1), s2);
}

// ---- embedding -----------------------------------------------------------------------------
extern "C" __global__ void eng_embed(const unsigned* __restrict__ tokens, const u16* __restrict__ table,
                                     float* __restrict__ out, int rows, int H) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const u16* src = table + (u64)tokens[r] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = bf16f(src[i]);
}

// ---- RMSNorm: one block per row; rows[] selects input rows (or null). The row and the weights
// are staged in shared memory by the whole block (dynamic shared memory: 2 H floats; the weights'
// loads overlap the row's instead of following the sum), then lane l of warp 0
// (l < 8) runs the sum's fmaf chain over i = l, l+8, ... (the CPU's 8-lane order) and tree8.
extern "C" __global__ void eng_rmsnorm(const float* __restrict__ x, const int* __restrict__ rows_sel,
                                       const float* __restrict__ w, float eps, float* __restrict__ out, int H) {
    extern __shared__ float sm[];
    __shared__ float rs;
    int r = blockIdx.x;
    int src = rows_sel ? rows_sel[r] : r;
    const float* xr = x + (u64)src * H;
    // batches of 8 loads per thread in flight before their shared-memory stores (a store between
    // two loads would otherwise serialize them: a generic pointer may alias shared memory)
    for (int i0 = 0; i0 < H; i0 += 8 * (int)blockDim.x) {
        float v[8], wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x + threadIdx.x;
            v[u] = i < H ? xr[i] : 0.0f;
            wv[u] = i < H ? w[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x + threadIdx.x;
            if (i < H) {
                sm[i] = v[u];
                sm[H + i] = wv[u];
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const int l = threadIdx.x & 7;
        float a = 0.0f;
        if (threadIdx.x < 8) {
            int i = l;
            for (; i + 56 < H; i += 64) {  // eight loads in flight, then the chain
                float v[8];
#pragma unroll
                for (int u = 0; u < 8; u++) v[u] = sm[i + 8 * u];
#pragma unroll
                for (int u = 0; u < 8; u++) a = fmaf(v[u], v[u], a);
            }
            for (; i < H; i += 8) a = fmaf(sm[i], sm[i], a);
        }
        // lanes 0..7 hold a[0..7]: tree8 = ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))
        a = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, 4));
        a = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, 2));
        a = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, 1));
        if (threadIdx.x == 0) {
            float mean = __fdiv_rn(a, (float)H);
            rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
        }
    }
    __syncthreads();
    const float rr = rs;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = __fmul_rn(sm[H + i], __fmul_rn(sm[i], rr));
}

// ---- matmul: Y[M][N] (=, or +=) X[M][K] @ W[K][N] (bf16), one fmaf chain over k per output -----
// MODE 0: Y = XW; 1: Y += XW (one rounded add); 2: the fused gate/up projection with the SiLU gate
// in the epilogue (W's columns interleaved by GpuEngine, see the epilogue).
// Block tile BM x BN, K tile BK (both operands staged in shared memory as f32, two buffers: the
// next K tile is loaded into registers while the current one is multiplied; a long K tile hides
// the load latency when few blocks share an SM). Each thread owns a
// TM x TN register tile: rows in TM / RM chunks of RM = min(TM, 4) consecutive rows spaced BM / (TM / RM)
// apart (likewise columns), so that a warp reads its operands from shared memory as broadcast
// float4/float2 loads without bank conflicts. Every output is one fmaf chain over k = 0..K-1
// whatever the tile shape (the chain only moves from register to register), so any
// configuration gives the same bits. VEC: K % 4 == 0 and N % 8 == 0 (16-byte global loads).
template <int N_> struct FVec;
template <> struct FVec<1> { typedef float T; };
template <> struct FVec<2> { typedef float2 T; };
template <> struct FVec<4> { typedef float4 T; };

template <int R>
__device__ __forceinline__ void lds_vec(const float* p, float* d) {
    typedef typename FVec<R>::T T;
    T v = *reinterpret_cast<const T*>(p);
    const float* f = reinterpret_cast<const float*>(&v);
#pragma unroll
    for (int i = 0; i < R; i++) d[i] = f[i];
}

template <int BM, int BN, int BK, int TM, int TN, int MODE>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), 1)
eng_gemm(const float* __restrict__ X, const u16* __restrict__ W, float* __restrict__ Y, int M, int N, int K, int vec) {
    constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
    constexpr int RM = TM < 4 ? TM : 4, RN = TN < 4 ? TN : 4;   // rows / columns per chunk
    constexpr int CM = TM / RM, CN = TN / RN;                    // chunks
    constexpr int SM_ = BM / CM, SN = BN / CN;                   // chunk spacing
    constexpr int SA = BM + 4;                                   // padded row of As
    constexpr int AV = BM * BK / 4, BV = BK * BN / 8;            // 16-byte loads per tile
    constexpr int AL = (AV + NT - 1) / NT, BL = (BV + NT - 1) / NT;
    static_assert(BK % 8 == 0 && BM % 8 == 0 && BN % 8 == 0 && BM % TM == 0 && BN % TN == 0, "tile shape");
    static_assert(MODE != 2 || RN == 4, "MODE 2 needs column chunks of 4");
    // dynamic shared memory (GpuEngine: 4 * 2 * BK * (BM + 4 + BN) bytes): As[2][BK][SA], Bs[2][BK][BN]
    extern __shared__ float sm[];
    float (*As)[BK][SA] = reinterpret_cast<float (*)[BK][SA]>(sm);
    float (*Bs)[BK][BN] = reinterpret_cast<float (*)[BK][BN]>(sm + 2 * BK * SA);
    const int tid = threadIdx.x;
    // thread -> (ty, tx). Where a row of threads is wider than a warp but not a multiple of it
    // (16x72 tiles: TX = 36), warp w < TY takes tx 0..31 of row w and the other threads take the
    // rest, tx fastest: a row-major order would put two rows' column ranges into one warp, whose
    // B reads then collide in the shared-memory banks
    int tx = tid % TX, ty = tid / TX;
    if (TX > 32 && TX % 32 != 0) {
        if (tid < 32 * TY) {
            ty = tid >> 5;
            tx = tid & 31;
        } else {
            ty = (tid - 32 * TY) / (TX - 32);
            tx = 32 + (tid - 32 * TY) % (TX - 32);
        }
    }
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
    float ra[AL][4];
    unsigned rb[BL][4];  // 8 bf16, widened in store(): a use here would wait for the load
    // A's 16-byte load `idx` -> (row m, k4): a pair of threads reads the two halves of one row's
    // 32-byte sector and consecutive pairs take consecutive rows, so that a warp's transposed
    // stores into As (stride SA, 4 * SA = 16 mod 32 banks between the pair) hit 32 distinct banks
    auto a_slot = [](int idx, int& m, int& k4) {
        const int p = idx >> 1;
        m = p % BM;
        k4 = ((p / BM) * 2 + (idx & 1)) * 4;
    };
    // global -> registers (tile at k0); out-of-range entries read as 0 (their products are
    // either never stored or, past K, never multiplied)
    auto load = [&](int k0) {
#pragma unroll
        for (int l = 0; l < AL; l++) {
            const int idx = tid + l * NT;
            int m, k4;
            a_slot(idx, m, k4);
            const int gm = m0 + m, gk = k0 + k4;
            if (idx < AV) {
                if (vec) {
                    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    if (gm < M && gk < K) v = *reinterpret_cast<const float4*>(X + (u64)gm * K + gk);
                    ra[l][0] = v.x; ra[l][1] = v.y; ra[l][2] = v.z; ra[l][3] = v.w;
                } else {
#pragma unroll
                    for (int c = 0; c < 4; c++) ra[l][c] = (gm < M && gk + c < K) ? X[(u64)gm * K + gk + c] : 0.0f;
                }
            }
        }
#pragma unroll
        for (int l = 0; l < BL; l++) {
            const int idx = tid + l * NT;
            const int k = idx / (BN / 8), n8 = (idx % (BN / 8)) * 8;
            const int gk = k0 + k, gn = n0 + n8;
            if (idx < BV) {
                if (vec) {
                    uint4 v = make_uint4(0u, 0u, 0u, 0u);
                    if (gk < K && gn < N) v = *reinterpret_cast<const uint4*>(W + (u64)gk * N + gn);
                    rb[l][0] = v.x; rb[l][1] = v.y; rb[l][2] = v.z; rb[l][3] = v.w;
                } else {
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const unsigned lo = (gk < K && gn + 2 * c < N) ? W[(u64)gk * N + gn + 2 * c] : 0u;
                        const unsigned hi = (gk < K && gn + 2 * c + 1 < N) ? W[(u64)gk * N + gn + 2 * c + 1] : 0u;
                        rb[l][c] = lo | (hi << 16);
                    }
                }
            }
        }
    };
    // registers -> shared buffer `buf`
    auto store = [&](int buf) {
#pragma unroll
        for (int l = 0; l < AL; l++) {
            const int idx = tid + l * NT;
            int m, k4;
            a_slot(idx, m, k4);
            if (idx < AV) {
#pragma unroll
                for (int c = 0; c < 4; c++) As[buf][k4 + c][m] = ra[l][c];
            }
        }
#pragma unroll
        for (int l = 0; l < BL; l++) {
            const int idx = tid + l * NT;
            const int k = idx / (BN / 8), n8 = (idx % (BN / 8)) * 8;
            if (idx < BV) {
                float f[8];
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    f[2 * c] = __uint_as_float(rb[l][c] << 16);
                    f[2 * c + 1] = __uint_as_float(rb[l][c] & 0xffff0000u);
                }
                // odd threads store their upper half first: each of the two stores then covers
                // consecutive 16-byte chunks across the warp (no bank conflicts)
                const bool h = idx & 1;
                const float4 lo = make_float4(f[0], f[1], f[2], f[3]), hi = make_float4(f[4], f[5], f[6], f[7]);
                *reinterpret_cast<float4*>(&Bs[buf][k][n8 + (h ? 4 : 0)]) = h ? hi : lo;
                *reinterpret_cast<float4*>(&Bs[buf][k][n8 + (h ? 0 : 4)]) = h ? lo : hi;
            }
        }
    };
    auto step = [&](int buf, int kk) {
        float a[TM], b[TN];
#pragma unroll
        for (int c = 0; c < CM; c++) lds_vec<RM>(&As[buf][kk][c * SM_ + ty * RM], a + c * RM);
#pragma unroll
        for (int c = 0; c < CN; c++) lds_vec<RN>(&Bs[buf][kk][c * SN + tx * RN], b + c * RN);
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    };
    const int ntiles = (K + BK - 1) / BK;
    load(0);
    store(0);
    __syncthreads();
    for (int t = 0; t < ntiles; t++) {
        const int buf = t & 1;
        if (t + 1 < ntiles) load((t + 1) * BK);
        if ((t + 1) * BK <= K) {
#pragma unroll
            for (int kk = 0; kk < BK; kk++) step(buf, kk);
        } else {
            const int kmax = K - t * BK;
            for (int kk = 0; kk < kmax; kk++) step(buf, kk);
        }
        if (t + 1 < ntiles) store(buf ^ 1);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; i++) {
        const int gm = m0 + (i / RM) * SM_ + ty * RM + (i % RM);
        if (gm >= M) continue;
        if (MODE == 2) {
            // columns come in groups of 4 (gate 2q, gate 2q+1, up 2q, up 2q+1), N = 2I, N % 4 == 0:
            // Y[gm][2q + e] = silu(gate) * up with silu(g) = g / (1 + exp(-g)) (Y has N / 2 columns)
#pragma unroll
            for (int c = 0; c < CN; c++) {
                const int gn = n0 + c * SN + tx * RN;
                if (gn >= N) continue;
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float gt = acc[i][c * RN + e], up = acc[i][c * RN + 2 + e];
                    const float sl = __fdiv_rn(gt, __fadd_rn(1.0f, eng_exp(-gt)));
                    Y[(u64)gm * (N / 2) + gn / 2 + e] = __fmul_rn(sl, up);
                }
            }
            continue;
        }
#pragma unroll
        for (int j = 0; j < TN; j++) {
            const int gn = n0 + (j / RN) * SN + tx * RN + (j % RN);
            if (gn >= N) continue;
            const u64 o = (u64)gm * N + gn;
            if (MODE == 0) Y[o] = acc[i][j];
            else Y[o] = __fadd_rn(Y[o], acc[i][j]);
        }
    }
}

// ---- RoPE on q and k, and the KV write ------------------------------------------------------
// qkv[r] = [q (nh*hd) | k (nkv*hd) | v (nkv*hd)]; cos/sin tables [position][hd/2] (the CPU
// engine's values, seqkv.engine.rope_table); one block per row.
extern "C" __global__ void eng_rope_kv(float* __restrict__ qkv, const float* __restrict__ cosv,
                                       const float* __restrict__ sinv, const int* __restrict__ row_slot,
                                       const int* __restrict__ row_pos, float* __restrict__ kv, int layer, int layers,
                                       int max_len, int nh, int nkv, int hd) {
    int r = blockIdx.x;
    int half = hd / 2;
    int width = (nh + 2 * nkv) * hd;
    float* row = qkv + (u64)r * width;
    const float* c = cosv + (u64)row_pos[r] * half;
    const float* s = sinv + (u64)row_pos[r] * half;
    for (int idx = threadIdx.x; idx < (nh + nkv) * half; idx += blockDim.x) {
        int head = idx / half, i = idx % half;
        float* x = row + head * hd;
        float x1 = x[i], x2 = x[i + half];
        x[i] = __fsub_rn(__fmul_rn(x1, c[i]), __fmul_rn(x2, s[i]));
        x[i + half] = __fadd_rn(__fmul_rn(x2, c[i]), __fmul_rn(x1, s[i]));
    }
    __syncthreads();
    u64 rowlen = (u64)nkv * hd;
    u64 base = (((u64)row_slot[r] * layers + layer) * 2) * max_len * rowlen;
    u64 pos = row_pos[r];
    for (int i = threadIdx.x; i < nkv * hd; i += blockDim.x) {
        kv[base + pos * rowlen + i] = row[nh * hd + i];
        kv[base + (u64)max_len * rowlen + pos * rowlen + i] = row[(nh + nkv) * hd + i];
    }
}

// ---- attention: one block per (row, KV head); its G = nh / nkv query heads share every K/V load --
// Same arithmetic as the CPU engine per (row, head): s_j = tree8(a) * scale where a_l (l < 8) is
// the fmaf chain of q[d] * k[d] over d = l, l+8, ..., m = max s_j, e_j = exp(s_j - m), per key
// tile of KEY_TILE keys from position 0: o_t[d] (fmaf chain over the tile's keys) and l_t (sum),
// tiles combined in order, o / l.
// K and V rows go through one shared-memory buffer in rounds of ATT_VROUND keys, copied by
// cp.async (coalesced, all of a round in flight; V's first round during the exps). Scores: each
// thread takes one key of the round and runs its 8 x G chains (q read from shared memory as
// broadcast float4). o_t: a thread takes 2 columns of one tile for the G heads. Small shared
// memory and <= 85 registers keep 6 blocks on an SM, so the
// 256 rows x 3 KV heads of a SmolLM2 decode step run in one wave on an H100.
#define KEY_TILE 32
#define ATT_THREADS 128
#define ATT_VROUND 64
// floats: q [G][HD] | s [G][SL] | o_t [G][ntiles][HD] | l_t [G][ntiles] | (to 16 bytes)
// rows [ATT_VROUND][HD + 4]; SL = max_len rounded up to 4. GpuEngine sizes the launch alike.
__host__ __device__ constexpr long long att_rows_offset(int G, int hd, int max_len) {
    return ((long long)G * hd + (long long)G * ((max_len + 3) / 4 * 4) +
            (long long)G * ((max_len + KEY_TILE - 1) / KEY_TILE) * (hd + 1) + 3) / 4 * 4;
}
__host__ __device__ constexpr long long att_smem_floats(int G, int hd, int max_len) {
    return att_rows_offset(G, hd, max_len) + (long long)ATT_VROUND * (hd + 4);
}

// 16 bytes global -> shared without a register round trip (cp.async, sm_80+); every copy of a
// thread is in flight until att_stage_wait
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
#ifdef __CUDA_ARCH__
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#else
    std::memcpy(dst, src, 16);
#endif
}

// the calling thread's copies have landed; a block barrier must follow before other threads read
__device__ __forceinline__ void att_stage_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// rows [j0, j1) of K or V (row stride rowlen floats) -> rows[j - j0][0..HD) (stride HD + 4),
// asynchronously (att_stage_wait, then a barrier)
template <int HD>
__device__ __forceinline__ void att_stage(float* rows, const float* src, u64 rowlen, int j0, int j1) {
    constexpr int Q4 = HD / 4;
    const int total = (j1 - j0) * Q4;
    for (int i = threadIdx.x; i < total; i += ATT_THREADS) {
        const int j = i / Q4, c = (i % Q4) * 4;
        cp_async16(rows + j * (HD + 4) + c, src + (u64)(j0 + j) * rowlen + c);
    }
}

template <int G, int HD>
__global__ void __launch_bounds__(ATT_THREADS, 6)
eng_attention(const float* qkv, const float* kv, const int* row_slot, const int* row_pos, float* out, int layer,
              int layers, int max_len, int nh, int nkv, float scale) {
    static_assert(HD % 8 == 0 && ATT_VROUND <= ATT_THREADS, "head_dim % 8, a thread per key of a round");
    constexpr int RS = HD + 4;
    extern __shared__ float sm[];
    __shared__ float red[ATT_THREADS / 32][G];
    const int r = blockIdx.x / nkv, g = blockIdx.x % nkv;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = row_pos[r] + 1;
    const int ntiles = (n + KEY_TILE - 1) / KEY_TILE;
    const int ntiles_max = (max_len + KEY_TILE - 1) / KEY_TILE;
    const int SL = (max_len + 3) / 4 * 4;
    float* qs = sm;                                  // [G][HD]
    float* s = qs + G * HD;                          // [G][SL]
    float* ot = s + (u64)G * SL;                     // [G][ntiles_max][HD]
    float* lt = ot + (u64)G * ntiles_max * HD;       // [G][ntiles_max]
    float* rows = sm + att_rows_offset(G, HD, max_len);  // [ATT_VROUND][HD + 4], 16-byte aligned
    const int width = (nh + 2 * nkv) * HD;
    const float* q = qkv + (u64)r * width + (u64)g * G * HD;  // the group's G heads, contiguous
    const u64 rowlen = (u64)nkv * HD;
    const float* K = kv + (((u64)row_slot[r] * layers + layer) * 2) * max_len * rowlen + (u64)g * HD;
    const float* V = K + (u64)max_len * rowlen;
    for (int i = tid; i < G * HD; i += ATT_THREADS) qs[i] = q[i];
    // 1. scores and their running max, one key per thread; K in rounds of ATT_VROUND rows staged
    // in shared memory (coalesced copies, all in flight at once)
    float m[G];
#pragma unroll
    for (int h = 0; h < G; h++) m[h] = NEG_INF;
    for (int j0 = 0; j0 < n; j0 += ATT_VROUND) {
        const int j1 = min(j0 + ATT_VROUND, n);
        if (j0 > 0) __syncthreads();  // the previous round consumed
        att_stage<HD>(rows, K, rowlen, j0, j1);
        att_stage_wait();
        __syncthreads();  // the round (and qs) written
        if (tid >= j1 - j0) continue;
        const int j = j0 + tid;
        const float* k = rows + tid * RS;
        float a[G][8];
#pragma unroll
        for (int h = 0; h < G; h++)
#pragma unroll
            for (int l = 0; l < 8; l++) a[h][l] = 0.0f;
#pragma unroll
        for (int c = 0; c < HD; c += 8) {
            float kc[8], qc[8];
            lds_vec<4>(k + c, kc);
            lds_vec<4>(k + c + 4, kc + 4);
#pragma unroll
            for (int h = 0; h < G; h++) {
                lds_vec<4>(qs + h * HD + c, qc);
                lds_vec<4>(qs + h * HD + c + 4, qc + 4);
#pragma unroll
                for (int l = 0; l < 8; l++) a[h][l] = fmaf(qc[l], kc[l], a[h][l]);
            }
        }
#pragma unroll
        for (int h = 0; h < G; h++) {
            const float t8 = __fadd_rn(__fadd_rn(__fadd_rn(a[h][0], a[h][4]), __fadd_rn(a[h][2], a[h][6])),
                                       __fadd_rn(__fadd_rn(a[h][1], a[h][5]), __fadd_rn(a[h][3], a[h][7])));
            const float sc = __fmul_rn(t8, scale);
            s[h * SL + j] = sc;
            m[h] = fmaxf(m[h], sc);
        }
    }
    // 2. max per head (exact in any order)
#pragma unroll
    for (int h = 0; h < G; h++) {
        for (int o = 16; o > 0; o >>= 1) m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], o));
        if (lane == 0) red[warp][h] = m[h];
    }
    __syncthreads();  // K rows consumed: the first round of V rows is fetched during the exps
    att_stage<HD>(rows, V, rowlen, 0, min(ATT_VROUND, n));
#pragma unroll
    for (int h = 0; h < G; h++) {
        m[h] = red[0][h];
        for (int w = 1; w < ATT_THREADS / 32; w++) m[h] = fmaxf(m[h], red[w][h]);
    }
    // 3. e_j
    for (int j = tid; j < n; j += ATT_THREADS)
#pragma unroll
        for (int h = 0; h < G; h++) s[h * SL + j] = eng_exp(__fsub_rn(s[h * SL + j], m[h]));
    // 4. o_t, a round of ATT_VROUND keys at a time: thread -> (tile of the round, 2 columns)
    constexpr int C2 = HD / 2;
    for (int j0 = 0; j0 < n; j0 += ATT_VROUND) {
        const int j1 = min(j0 + ATT_VROUND, n);
        if (j0 > 0) {
            __syncthreads();  // the previous round consumed
            att_stage<HD>(rows, V, rowlen, j0, j1);
        }
        att_stage_wait();
        __syncthreads();  // the round's rows (and e_j) written
        for (int idx = tid; idx < (ATT_VROUND / KEY_TILE) * C2; idx += ATT_THREADS) {
            const int u = idx / C2, d = (idx % C2) * 2;
            const int jt = j0 + u * KEY_TILE;  // first key of the tile
            if (jt >= n) continue;
            const int cnt = min(KEY_TILE, n - jt);
            const float* vr = rows + (u * KEY_TILE) * RS + d;
            float acc[G][2];
#pragma unroll
            for (int h = 0; h < G; h++) acc[h][0] = acc[h][1] = 0.0f;
            int j = 0;
            for (; j + 4 <= cnt; j += 4) {
                float e[G][4], v[4][2];
#pragma unroll
                for (int h = 0; h < G; h++) lds_vec<4>(s + h * SL + jt + j, e[h]);
#pragma unroll
                for (int i = 0; i < 4; i++) lds_vec<2>(vr + (j + i) * RS, v[i]);
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int h = 0; h < G; h++)
#pragma unroll
                        for (int c = 0; c < 2; c++) acc[h][c] = fmaf(e[h][i], v[i][c], acc[h][c]);
            }
            for (; j < cnt; j++) {
                float v[2];
                lds_vec<2>(vr + j * RS, v);
#pragma unroll
                for (int h = 0; h < G; h++) {
                    const float e = s[h * SL + jt + j];
#pragma unroll
                    for (int c = 0; c < 2; c++) acc[h][c] = fmaf(e, v[c], acc[h][c]);
                }
            }
            const int t = jt / KEY_TILE;
#pragma unroll
            for (int h = 0; h < G; h++)
                *reinterpret_cast<float2*>(ot + ((u64)h * ntiles_max + t) * HD + d) = make_float2(acc[h][0], acc[h][1]);
        }
    }
    for (int idx = tid; idx < G * ntiles; idx += ATT_THREADS) {
        const int h = idx / ntiles, t = idx % ntiles;
        const int j0 = t * KEY_TILE, j1 = min(j0 + KEY_TILE, n);
        float acc = 0.0f;
        for (int j = j0; j < j1; j++) acc = __fadd_rn(acc, s[h * SL + j]);
        lt[h * ntiles_max + t] = acc;
    }
    __syncthreads();
    // 5. combine tiles in order, divide
    for (int idx = tid; idx < G * HD; idx += ATT_THREADS) {
        const int h = idx / HD, d = idx % HD;
        float o = 0.0f, l = 0.0f;
        for (int t = 0; t < ntiles; t++) {
            o = __fadd_rn(o, ot[((u64)h * ntiles_max + t) * HD + d]);
            l = __fadd_rn(l, lt[h * ntiles_max + t]);
        }
        out[(u64)r * nh * HD + (u64)(g * G + h) * HD + d] = __fdiv_rn(o, l);
    }
}

// ---- greedy decode helpers (benchmarks): argmax per row, next position -------------------------
extern "C" __global__ void eng_argmax(const float* logits, int V, unsigned* tokens) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    int r = blockIdx.x;
    const float* x = logits + (u64)r * V;
    float best = NEG_INF;
    int arg = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v > best) { best = v; arg = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, arg, o);
        if (ov > best || (ov == best && oi < arg)) { best = ov; arg = oi; }
    }
    if ((threadIdx.x & 31) == 0) { bv[threadIdx.x >> 5] = best; bi[threadIdx.x >> 5] = arg; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x + 31) / 32; w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < arg)) { best = bv[w]; arg = bi[w]; }
        tokens[r] = (unsigned)arg;
    }
}

extern "C" __global__ void eng_advance(int* row_pos, int rows) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) row_pos[r] += 1;
}
