// Per-vector KV quantizers (python/seqkv/quantizers.py holds the NumPy references, bit for bit).
//
// TurboQuant-like: y = FWHT(s * x) (s: seeded random signs; the Walsh-Hadamard butterflies in the
// fixed order h = 1, 2, 4, ...), r = sqrt(pairwise-tree sum of y^2) (= sqrt(d) |x|),
// code_j = #{k : bnd[k] < y_j / r} (bnd: Lloyd-Max boundaries for N(0,1), scaled by 1/sqrt(d)).
// Dequantize: y'_j = cent[code_j] * r, x'_j = (FWHT(y')_j * (1/d)) * s_j.
// KIVI-like: groups of G elements (keys: G tokens of one channel; values: G channels of one
// token); mn/mx of the group, scale = (mx - mn) / (2^b - 1), q = clamp(rint((x - mn) / scale)),
// dequantize q * scale + mn. Every operation is a single correctly rounded f32 op (no FMA).

typedef unsigned int u32;
#define POS_INF __uint_as_float(0x7f800000u)
#define NEG_INF __uint_as_float(0xff800000u)
struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

// In-place FWHT of sh[base .. base + d) by the block's threads (thread j of the vector holds index
// j); every thread of the block calls it.
__device__ __forceinline__ float fwht_smem(float* sh, int t, int j, int d, float v) {
    sh[t] = v;
    for (int h = 1; h < d; h <<= 1) {
        __syncthreads();
        const float a = sh[t], p = sh[t ^ h];
        v = (j & h) ? __fsub_rn(p, a) : __fadd_rn(a, p);
        __syncthreads();
        sh[t] = v;
    }
    __syncthreads();
    return v;
}

// Pairwise sum over the vector (pairs (2i, 2i+1), then pairs of those, ...); all threads of the
// vector return the same bits.
__device__ __forceinline__ float tree_sum_smem(float* sh, int t, int d, float v) {
    sh[t] = v;
    for (int h = 1; h < d; h <<= 1) {
        __syncthreads();
        v = __fadd_rn(sh[t], sh[t ^ h]);
        __syncthreads();
        sh[t] = v;
    }
    __syncthreads();
    return v;
}

// blockDim.x = vectors_per_block * d; d a power of two <= blockDim.x.
template <typename T>
__global__ void turbo_quant(const T* __restrict__ x, long long nvec, int d, const float* __restrict__ signs,
                            const float* __restrict__ bnd, int nbnd, unsigned char* __restrict__ codes,
                            float* __restrict__ norms) {
    extern __shared__ float tq_sh[];
    const int t = threadIdx.x, j = t & (d - 1);
    const long long vec = (long long)blockIdx.x * (blockDim.x / d) + t / d;
    const bool ok = vec < nvec;
    const long long e = vec * d + j;
    const float xv = ok ? to_f32(x[e]) : 0.0f;
    const float y = fwht_smem(tq_sh, t, j, d, __fmul_rn(xv, signs[j]));
    const float ss = tree_sum_smem(tq_sh, t, d, __fmul_rn(y, y));
    const float r = __fsqrt_rn(ss);
    const float u = r > 0.0f ? __fdiv_rn(y, r) : 0.0f;
    int c = 0;
    for (int k = 0; k < nbnd; ++k) c += (bnd[k] < u) ? 1 : 0;
    if (ok) {
        codes[e] = (unsigned char)c;
        if (j == 0) norms[vec] = r;
    }
}

__global__ void turbo_dequant(const unsigned char* __restrict__ codes, const float* __restrict__ norms,
                              long long nvec, int d, const float* __restrict__ signs,
                              const float* __restrict__ cent, float inv_d, float* __restrict__ out) {
    extern __shared__ float tq_sh[];
    const int t = threadIdx.x, j = t & (d - 1);
    const long long vec = (long long)blockIdx.x * (blockDim.x / d) + t / d;
    const bool ok = vec < nvec;
    const long long e = vec * d + j;
    const float yv = ok ? __fmul_rn(cent[codes[e]], norms[vec]) : 0.0f;
    const float z = fwht_smem(tq_sh, t, j, d, yv);
    if (ok) out[e] = __fmul_rn(__fmul_rn(z, inv_d), signs[j]);
}

// One thread per group. Group g = (ga, gb, gc) over dims (A, B, C) (gc fastest); its elements are
// base + i * st, i < G, with base = ga * sa + gb * sb + gc * sc (element strides).
struct GroupGeom {
    long long A, B, C, sa, sb, sc, st;
    int G;
};

__device__ __forceinline__ long long group_base(const GroupGeom& g, long long gid) {
    const long long gc = gid % g.C, ab = gid / g.C;
    const long long gb = ab % g.B, ga = ab / g.B;
    return ga * g.sa + gb * g.sb + gc * g.sc;
}

template <typename T>
__global__ void kivi_quant(const T* __restrict__ x, long long A, long long B, long long C, long long sa,
                           long long sb, long long sc, long long st, int G, int qmax, unsigned char* __restrict__ codes,
                           float* __restrict__ scales, float* __restrict__ mins) {
    const GroupGeom geom{A, B, C, sa, sb, sc, st, G};
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= geom.A * geom.B * geom.C) return;
    const long long base = group_base(geom, gid);
    float mn = POS_INF, mx = NEG_INF;
    for (int i = 0; i < geom.G; ++i) {
        const float v = to_f32(x[base + i * geom.st]);
        mn = fminf(mn, v);
        mx = fmaxf(mx, v);
    }
    mn = __fadd_rn(mn, 0.0f);  // -0 -> +0: fminf may return either zero
    mx = __fadd_rn(mx, 0.0f);
    const float scale = __fdiv_rn(__fsub_rn(mx, mn), (float)qmax);
    for (int i = 0; i < geom.G; ++i) {
        const float v = to_f32(x[base + i * geom.st]);
        int q = 0;
        if (scale > 0.0f) {
            q = __float2int_rn(__fdiv_rn(__fsub_rn(v, mn), scale));
            q = min(qmax, max(0, q));
        }
        codes[base + i * geom.st] = (unsigned char)q;
    }
    scales[gid] = scale;
    mins[gid] = mn;
}

__global__ void kivi_dequant(const unsigned char* __restrict__ codes, const float* __restrict__ scales,
                             const float* __restrict__ mins, long long A, long long B, long long C,
                             long long sa, long long sb, long long sc, long long st, int G,
                             float* __restrict__ out) {
    const GroupGeom geom{A, B, C, sa, sb, sc, st, G};
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= geom.A * geom.B * geom.C) return;
    const long long base = group_base(geom, gid);
    const float scale = scales[gid], mn = mins[gid];
    for (int i = 0; i < geom.G; ++i) {
        const long long e = base + i * geom.st;
        out[e] = __fadd_rn(__fmul_rn((float)codes[e], scale), mn);
    }
}
