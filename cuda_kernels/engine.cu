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
extern "C" __global__ void eng_embed(const unsigned* tokens, const u16* table, float* out, int rows, int H) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const u16* src = table + (u64)tokens[r] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = bf16f(src[i]);
}

// ---- RMSNorm: one block per row; rows[] selects input rows (or null). The row is staged in
// shared memory by the whole block (dynamic shared memory: H floats), then lane l of warp 0
// (l < 8) runs the sum's fmaf chain over i = l, l+8, ... (the CPU's 8-lane order) and tree8.
extern "C" __global__ void eng_rmsnorm(const float* x, const int* rows_sel, const float* w, float eps,
                                       float* out, int H) {
    extern __shared__ float sm[];
    __shared__ float rs;
    int r = blockIdx.x;
    int src = rows_sel ? rows_sel[r] : r;
    const float* xr = x + (u64)src * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) sm[i] = xr[i];
    __syncthreads();
    if (threadIdx.x < 32) {
        const int l = threadIdx.x & 7;
        float a = 0.0f;
        if (threadIdx.x < 8)
            for (int i = l; i < H; i += 8) a = fmaf(sm[i], sm[i], a);
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
    float rr = rs;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = __fmul_rn(w[i], __fmul_rn(sm[i], rr));
}

// ---- matmul: Y[M][N] (=, or +=) X[M][K] @ W[K][N] (bf16), one fmaf chain over k per output -----
// Block tile BM x BN, K tile BK (both operands staged in shared memory as f32, two buffers: the
// next K tile is loaded into registers while the current one is multiplied). Each thread owns a
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
    static_assert(BK % 4 == 0 && BN % 8 == 0 && BM % TM == 0 && BN % TN == 0, "tile shape");
    __shared__ __align__(16) float As[2][BK][SA];
    __shared__ __align__(16) float Bs[2][BK][BN];
    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
    float ra[AL][4];
    float rb[BL][8];
    // global -> registers (tile at k0); out-of-range entries read as 0 (their products are
    // either never stored or, past K, never multiplied)
    auto load = [&](int k0) {
#pragma unroll
        for (int l = 0; l < AL; l++) {
            const int idx = tid + l * NT;
            const int m = idx / (BK / 4), k4 = (idx % (BK / 4)) * 4;
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
                    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        rb[l][2 * c] = __uint_as_float(w[c] << 16);
                        rb[l][2 * c + 1] = __uint_as_float(w[c] & 0xffff0000u);
                    }
                } else {
#pragma unroll
                    for (int c = 0; c < 8; c++) rb[l][c] = (gk < K && gn + c < N) ? bf16f(W[(u64)gk * N + gn + c]) : 0.0f;
                }
            }
        }
    };
    // registers -> shared buffer `buf`
    auto store = [&](int buf) {
#pragma unroll
        for (int l = 0; l < AL; l++) {
            const int idx = tid + l * NT;
            const int m = idx / (BK / 4), k4 = (idx % (BK / 4)) * 4;
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
                *reinterpret_cast<float4*>(&Bs[buf][k][n8]) = make_float4(rb[l][0], rb[l][1], rb[l][2], rb[l][3]);
                *reinterpret_cast<float4*>(&Bs[buf][k][n8 + 4]) = make_float4(rb[l][4], rb[l][5], rb[l][6], rb[l][7]);
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
extern "C" __global__ void eng_rope_kv(float* qkv, const float* cosv, const float* sinv, const int* row_slot,
                                       const int* row_pos, float* kv, int layer, int layers, int max_len,
                                       int nh, int nkv, int hd) {
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
// Same arithmetic as the CPU engine per (row, head): s_j = tree8(lane-structured dot) * scale
// (lane l of an 8-lane group sums d = l, l+8, ... with one fmaf chain; xor shuffles 4, 2, 1 are
// exactly tree8's order), m = max s_j, e_j = exp(s_j - m), per key tile of KEY_TILE keys from
// position 0: o_t[d] (fmaf chain over the tile's keys) and l_t (sum); tiles combined in order, o / l.
// K and V tiles are staged in shared memory by coalesced 16-byte loads of the whole block.
// Dynamic shared memory: see att_smem_floats.
#define KEY_TILE 32
#define ATT_THREADS 128
__host__ __device__ constexpr int att_tiles_per_pass(int hd) { return hd >= ATT_THREADS ? 1 : ATT_THREADS / hd; }
// floats: q [G][hd] | s [G][max_len] | o_t [G][ntiles][hd] | l_t [G][ntiles] | (to 16 bytes)
// tiles [TP][KEY_TILE][hd + 8]; GpuEngine sizes the launch with the same formula
__host__ __device__ constexpr long long att_tiles_offset(int G, int hd, int max_len) {
    return ((long long)G * hd + (long long)G * max_len + (long long)G * ((max_len + KEY_TILE - 1) / KEY_TILE) * (hd + 1) + 3) / 4 * 4;
}
__host__ __device__ constexpr long long att_smem_floats(int G, int hd, int max_len) {
    return att_tiles_offset(G, hd, max_len) + (long long)att_tiles_per_pass(hd) * KEY_TILE * (hd + 8);
}

// rows [j0, j1) of K or V (row stride rowlen floats) -> tile[j - j0][0..hd) (stride hd + 8); zeros past j1
__device__ __forceinline__ void att_stage(float* tile, const float* src, u64 rowlen, int j0, int j1, int hd) {
    const int q4 = hd / 4;
    for (int i = threadIdx.x; i < KEY_TILE * q4; i += ATT_THREADS) {
        const int j = i / q4, c = (i % q4) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (j0 + j < j1) v = *reinterpret_cast<const float4*>(src + (u64)(j0 + j) * rowlen + c);
        *reinterpret_cast<float4*>(tile + j * (hd + 8) + c) = v;
    }
}

template <int G>
__global__ void __launch_bounds__(ATT_THREADS)
eng_attention(const float* qkv, const float* kv, const int* row_slot, const int* row_pos, float* out, int layer,
              int layers, int max_len, int nh, int nkv, int hd, float scale) {
    extern __shared__ float sm[];
    __shared__ float red[ATT_THREADS / 32][G];
    const int r = blockIdx.x / nkv, g = blockIdx.x % nkv;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = row_pos[r] + 1;
    const int ntiles = (n + KEY_TILE - 1) / KEY_TILE;
    const int ntiles_max = (max_len + KEY_TILE - 1) / KEY_TILE;
    const int TP = att_tiles_per_pass(hd), ts = hd + 8;
    float* qs = sm;                                  // [G][hd]
    float* s = qs + G * hd;                          // [G][max_len]
    float* ot = s + (u64)G * max_len;                // [G][ntiles_max][hd]
    float* lt = ot + (u64)G * ntiles_max * hd;       // [G][ntiles_max]
    float* tiles = sm + att_tiles_offset(G, hd, max_len);  // [TP][KEY_TILE][hd + 8], 16-byte aligned
    const int width = (nh + 2 * nkv) * hd;
    const float* q = qkv + (u64)r * width + (u64)g * G * hd;  // the group's G heads, contiguous
    const u64 rowlen = (u64)nkv * hd;
    const float* K = kv + (((u64)row_slot[r] * layers + layer) * 2) * max_len * rowlen + (u64)g * hd;
    const float* V = K + (u64)max_len * rowlen;
    for (int i = tid; i < G * hd; i += ATT_THREADS) qs[i] = q[i];
    // 1. scores, one key tile at a time: 8 lanes per key, 16 keys per round
    const int l8 = lane & 7, kq = tid >> 3;
    for (int t = 0; t < ntiles; t++) {
        const int j0 = t * KEY_TILE, j1 = min(j0 + KEY_TILE, n);
        __syncthreads();  // the previous tile is consumed (and qs is written)
        att_stage(tiles, K, rowlen, j0, j1, hd);
        __syncthreads();
        for (int jj = kq; jj < KEY_TILE; jj += ATT_THREADS / 8) {
            const float* k = tiles + jj * ts;
            float a[G];
#pragma unroll
            for (int h = 0; h < G; h++) a[h] = 0.0f;
            for (int c = l8; c < hd; c += 8) {
                const float kc = k[c];
#pragma unroll
                for (int h = 0; h < G; h++) a[h] = fmaf(qs[h * hd + c], kc, a[h]);
            }
#pragma unroll
            for (int h = 0; h < G; h++) {
                float v = a[h];
                v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 4));
                v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 2));
                v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 1));
                if (j0 + jj < j1 && l8 == 0) s[h * max_len + j0 + jj] = __fmul_rn(v, scale);
            }
        }
    }
    __syncthreads();
    // 2. max per head (exact in any order)
    {
        float m[G];
#pragma unroll
        for (int h = 0; h < G; h++) m[h] = NEG_INF;
        for (int j = tid; j < n; j += ATT_THREADS)
#pragma unroll
            for (int h = 0; h < G; h++) m[h] = fmaxf(m[h], s[h * max_len + j]);
#pragma unroll
        for (int h = 0; h < G; h++) {
            for (int o = 16; o > 0; o >>= 1) m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], o));
            if (lane == 0) red[warp][h] = m[h];
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < G; h++) {
            m[h] = red[0][h];
            for (int w = 1; w < ATT_THREADS / 32; w++) m[h] = fmaxf(m[h], red[w][h]);
        }
        // 3. e_j
        for (int j = tid; j < n; j += ATT_THREADS)
#pragma unroll
            for (int h = 0; h < G; h++) s[h * max_len + j] = eng_exp(__fsub_rn(s[h * max_len + j], m[h]));
    }
    // 4. TP value tiles per pass: o_t[d] (fmaf chain over the tile's keys, one V read for the G heads)
    for (int t0 = 0; t0 < ntiles; t0 += TP) {
        __syncthreads();  // e_j written / the previous tiles consumed
        for (int u = 0; u < TP && t0 + u < ntiles; u++) {
            const int j0 = (t0 + u) * KEY_TILE;
            att_stage(tiles + u * KEY_TILE * ts, V, rowlen, j0, min(j0 + KEY_TILE, n), hd);
        }
        __syncthreads();
        for (int idx = tid; idx < TP * hd; idx += ATT_THREADS) {
            const int u = idx / hd, d = idx % hd, t = t0 + u;
            if (t >= ntiles) continue;
            const int j0 = t * KEY_TILE, cnt = min(KEY_TILE, n - j0);
            const float* vt = tiles + u * KEY_TILE * ts + d;
            float acc[G];
#pragma unroll
            for (int h = 0; h < G; h++) acc[h] = 0.0f;
            for (int j = 0; j < cnt; j++) {
                const float vj = vt[j * ts];
#pragma unroll
                for (int h = 0; h < G; h++) acc[h] = fmaf(s[h * max_len + j0 + j], vj, acc[h]);
            }
#pragma unroll
            for (int h = 0; h < G; h++) ot[((u64)h * ntiles_max + t) * hd + d] = acc[h];
        }
    }
    for (int idx = tid; idx < G * ntiles; idx += ATT_THREADS) {
        const int h = idx / ntiles, t = idx % ntiles;
        const int j0 = t * KEY_TILE, j1 = min(j0 + KEY_TILE, n);
        float acc = 0.0f;
        for (int j = j0; j < j1; j++) acc = __fadd_rn(acc, s[h * max_len + j]);
        lt[h * ntiles_max + t] = acc;
    }
    __syncthreads();
    // 5. combine tiles in order, divide
    for (int idx = tid; idx < G * hd; idx += ATT_THREADS) {
        const int h = idx / hd, d = idx % hd;
        float o = 0.0f, l = 0.0f;
        for (int t = 0; t < ntiles; t++) {
            o = __fadd_rn(o, ot[((u64)h * ntiles_max + t) * hd + d]);
            l = __fadd_rn(l, lt[h * ntiles_max + t]);
        }
        out[(u64)r * nh * hd + (u64)(g * G + h) * hd + d] = __fdiv_rn(o, l);
    }
}

// ---- SiLU gate: out[r][i] = silu(g) * u, gu[r] = [g (I) | u (I)] ------------------------------
extern "C" __global__ void eng_silu_mul(const float* gu, float* out, int rows, int I) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * I) return;
    u64 r = idx / I, i = idx % I;
    float g = gu[r * 2 * I + i], u = gu[r * 2 * I + I + i];
    float sl = __fdiv_rn(g, __fadd_rn(1.0f, eng_exp(-g)));
    out[idx] = __fmul_rn(sl, u);
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
