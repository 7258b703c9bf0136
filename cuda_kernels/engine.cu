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

// ---- 8-lane reductions (rust/seqkv-engine/src/ops.rs) ----------------------------------------
__device__ __forceinline__ float tree8(const float* a) {
    return __fadd_rn(__fadd_rn(__fadd_rn(a[0], a[4]), __fadd_rn(a[2], a[6])),
                     __fadd_rn(__fadd_rn(a[1], a[5]), __fadd_rn(a[3], a[7])));
}

// ---- embedding -----------------------------------------------------------------------------
extern "C" __global__ void eng_embed(const unsigned* tokens, const u16* table, float* out, int rows, int H) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const u16* src = table + (u64)tokens[r] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = bf16f(src[i]);
}

// ---- RMSNorm: one block (>= 8 threads) per row; rows[] selects input rows (or null) ------------
extern "C" __global__ void eng_rmsnorm(const float* x, const int* rows_sel, const float* w, float eps,
                                       float* out, int H) {
    __shared__ float lanes[8];
    __shared__ float rs;
    int r = blockIdx.x;
    int src = rows_sel ? rows_sel[r] : r;
    const float* xr = x + (u64)src * H;
    if (threadIdx.x < 8) {
        float a = 0.0f;
        for (int i = threadIdx.x; i < H; i += 8) a = fmaf(xr[i], xr[i], a);
        lanes[threadIdx.x] = a;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = tree8(lanes);
        float mean = __fdiv_rn(s, (float)H);
        rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
    }
    __syncthreads();
    float rr = rs;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[(u64)r * H + i] = __fmul_rn(w[i], __fmul_rn(xr[i], rr));
}

// ---- matmul: Y[M][N] (=, or +=) X[M][K] @ W[K][N] (bf16), one fmaf chain over k per output -----
// Block tile BM x BN, K tile BK; each thread TM x TN outputs; blockDim = (BN/TN) * (BM/TM).
template <int BM, int BN, int BK, int TM, int TN, int MODE>
__global__ void eng_gemm(const float* __restrict__ X, const u16* __restrict__ W, float* __restrict__ Y,
                         int M, int N, int K) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN];
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    const int nthreads = (BN / TN) * (BM / TM);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int idx = threadIdx.x; idx < BM * BK; idx += nthreads) {
            int m = idx / BK, kk = idx % BK;
            int gm = m0 + m, gk = k0 + kk;
            As[kk][m] = (gm < M && gk < K) ? X[(u64)gm * K + gk] : 0.0f;
        }
        for (int idx = threadIdx.x; idx < BK * BN; idx += nthreads) {
            int kk = idx / BN, n = idx % BN;
            int gn = n0 + n, gk = k0 + kk;
            Bs[kk][n] = (gn < N && gk < K) ? bf16f(W[(u64)gk * N + gn]) : 0.0f;
        }
        __syncthreads();
        const int kmax = min(BK, K - k0);
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            if (kk < kmax) {
                float a[TM], b[TN];
#pragma unroll
                for (int i = 0; i < TM; i++) a[i] = As[kk][ty * TM + i];
#pragma unroll
                for (int j = 0; j < TN; j++) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
                for (int i = 0; i < TM; i++)
#pragma unroll
                    for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; i++) {
        int gm = m0 + ty * TM + i;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; j++) {
            int gn = n0 + tx * TN + j;
            if (gn >= N) continue;
            u64 o = (u64)gm * N + gn;
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

// ---- attention: one block per (row, head); keys 0..pos of the row's slot -----------------------
// dynamic shared memory: (max_len + ntiles_max * (hd + 1)) floats.
#define KEY_TILE 32
extern "C" __global__ void eng_attention(const float* qkv, const float* kv, const int* row_slot, const int* row_pos,
                                         float* out, int layer, int layers, int max_len, int nh, int nkv, int hd,
                                         float scale) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    __shared__ float lsum;
    int r = blockIdx.x / nh, head = blockIdx.x % nh;
    int g = head / (nh / nkv);
    int n = row_pos[r] + 1;
    int ntiles = (n + KEY_TILE - 1) / KEY_TILE;
    float* s = sm;                 // [max_len]
    float* ot = sm + max_len;      // [ntiles][hd]
    float* lt = ot + (u64)ntiles * hd;  // [ntiles]
    int width = (nh + 2 * nkv) * hd;
    const float* q = qkv + (u64)r * width + head * hd;
    u64 rowlen = (u64)nkv * hd;
    const float* K = kv + (((u64)row_slot[r] * layers + layer) * 2) * max_len * rowlen + g * hd;
    const float* V = K + (u64)max_len * rowlen;
    // 1. scores: lane-structured dot (lane l: d = l, l+8, ...), tree, times scale
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float* k = K + (u64)j * rowlen;
        float a[8];
#pragma unroll
        for (int l = 0; l < 8; l++) a[l] = 0.0f;
        for (int c = 0; c < hd; c += 8) {
#pragma unroll
            for (int l = 0; l < 8; l++) a[l] = fmaf(q[c + l], k[c + l], a[l]);
        }
        s[j] = __fmul_rn(tree8(a), scale);
    }
    __syncthreads();
    // 2. max (exact in any order)
    float m = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, s[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = NEG_INF;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) mm = fmaxf(mm, red[w]);
        red[0] = mm;
    }
    __syncthreads();
    m = red[0];
    // 3. e_j
    for (int j = threadIdx.x; j < n; j += blockDim.x) s[j] = eng_exp(__fsub_rn(s[j], m));
    __syncthreads();
    // 4. per tile: o_t[d] (fmaf chain over the tile's keys), l_t (sum)
    for (int idx = threadIdx.x; idx < ntiles * hd; idx += blockDim.x) {
        int t = idx / hd, d = idx % hd;
        int j0 = t * KEY_TILE, j1 = min(j0 + KEY_TILE, n);
        float acc = 0.0f;
        for (int j = j0; j < j1; j++) acc = fmaf(s[j], V[(u64)j * rowlen + d], acc);
        ot[idx] = acc;
    }
    for (int t = threadIdx.x; t < ntiles; t += blockDim.x) {
        int j0 = t * KEY_TILE, j1 = min(j0 + KEY_TILE, n);
        float acc = 0.0f;
        for (int j = j0; j < j1; j++) acc = __fadd_rn(acc, s[j]);
        lt[t] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float l = 0.0f;
        for (int t = 0; t < ntiles; t++) l = __fadd_rn(l, lt[t]);
        lsum = l;
    }
    __syncthreads();
    // 5. combine tiles in order, divide
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int t = 0; t < ntiles; t++) o = __fadd_rn(o, ot[t * hd + d]);
        out[(u64)r * nh * hd + head * hd + d] = __fdiv_rn(o, lsum);
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
