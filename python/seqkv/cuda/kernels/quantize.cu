// Quantizer v1 on the GPU: logits -> integer frequency tables (docs/numerics.md), and the two
// fused forms the coder needs: gather (encode: (cum_low, freq) of one symbol per row) and
// search (decode: the symbol whose slice holds a target). Loaded by python/seqkv/gpu.py through
// CuPy (NVRTC); every template below is instantiated by name from there.
//
// One CUDA block per row. Three passes over the row, every reduction integer (or max/argmax,
// which is order-independent), so the result is the same bits as the Rust and NumPy code:
//   1. max m and its first index a, and the NaN/+inf check (reads the row from device memory);
//   2. u = -round_half_even((x - m) * C) per entry (__fsub_rn/__fmul_rn: no FMA contraction),
//      w = EXP2[u & 1023] >> (u >> 10), S = sum w in u64 (reads the row again, mostly from L2);
//   3. g = (w * k) >> 39 with k = floor((2^P - V) * 2^39 / S); sums of g.
// Shared-memory cache (cache_mode): 0 none (passes 2 and 3 re-read the row, from L2);
// 1: u as 16 bits per entry (pass 3 reads it); 2: the row as f32 (pass 1 writes it, pass 2 reads
// it and overwrites each entry with its w, pass 3 reads w): the row is read from device memory
// once, at the price of 4 bytes of shared memory per entry. Each thread only touches the entries
// it loaded itself, so no barrier is needed between the in-place writes.
// f[i] = 1 + g[i], plus L = R - sum g at the first maximum a.

typedef unsigned int u32;
#define POS_INF __uint_as_float(0x7f800000u)
#define NEG_INF __uint_as_float(0xff800000u)
typedef unsigned long long u64;

struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

#define QV1_C_BITS 0x44b8aa3bu      // 1477.3197021484375 = log2(e) * 2^10, rounded to f32
#define QV1_ZMIN (-32768.0f)
#define QV1_K 39
#define QV1_UZERO 0x8000u           // u whose weight is 0 (q = 32)
#define FULL_MASK 0xffffffffu

// Exact widening to f32 (bf16 is the top half of an f32; f16 -> f32 is exact in cvt).
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

// Four consecutive entries i..i+3 (i % 4 == 0) of a row; entries at or past V read as -inf.
// vec: the row start is aligned for a 16-byte (f32) / 8-byte (16-bit) load.
__device__ __forceinline__ void load4(const float* __restrict__ row, int i, int V, bool vec, float (&v)[4]) {
    if (vec && i + 3 < V) {
        float4 q = *reinterpret_cast<const float4*>(row + i);
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) v[c] = (i + c < V) ? row[i + c] : NEG_INF;
    }
}
template <typename H>
__device__ __forceinline__ void load4(const H* __restrict__ row, int i, int V, bool vec, float (&v)[4]) {
    if (vec && i + 3 < V) {
        uint2 q = *reinterpret_cast<const uint2*>(row + i);
        H h;
        h.bits = (unsigned short)(q.x & 0xffffu); v[0] = to_f32(h);
        h.bits = (unsigned short)(q.x >> 16);     v[1] = to_f32(h);
        h.bits = (unsigned short)(q.y & 0xffffu); v[2] = to_f32(h);
        h.bits = (unsigned short)(q.y >> 16);     v[3] = to_f32(h);
    } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) v[c] = (i + c < V) ? to_f32(row[i + c]) : NEG_INF;
    }
}

// Step 3: u = -t with t = round_half_even((x - m) * C); QV1_UZERO when !(z > ZMIN).
__device__ __forceinline__ u32 u_of(float x, float m) {
    float z = __fmul_rn(__fsub_rn(x, m), __uint_as_float(QV1_C_BITS));
    if (!(z > QV1_ZMIN)) return QV1_UZERO;
    int t = __float2int_rn(z);  // -32768 <= t <= 0
    return (u32)(-t);
}
// Step 4: w = EXP2[u & 1023] >> (u >> 10), 0 when the shift reaches 32.
__device__ __forceinline__ u32 w_of(u32 u, const u32* tab) {
    u32 q = u >> 10;
    return q < 32u ? (tab[u & 1023u] >> q) : 0u;
}

template <typename V_t>
__device__ __forceinline__ V_t warp_sum(V_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block; every thread gets the total. `sh` holds BLOCK/32 entries.
template <int BLOCK, typename V_t>
__device__ __forceinline__ V_t block_sum(V_t v, V_t* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // earlier readers of sh are done
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    V_t t = 0;
#pragma unroll
    for (int w = 0; w < BLOCK / 32; ++w) t += sh[w];
    return t;
}

struct RowState {
    float m;     // max (meaningless when allninf)
    int a;       // first index of the max (0 when allninf)
    bool allninf;
    u64 k;       // scale factor, step 6
};

// Passes 1 and 2 for one row; returns false (block-uniformly) on NaN / +inf.
template <typename T, int BLOCK>
__device__ bool row_state(const T* __restrict__ x, int V, int P, bool vec, int cache_mode,
                          const u32* tab, unsigned char* cache, RowState& st) {
    unsigned short* ucache = reinterpret_cast<unsigned short*>(cache);
    float* xcache = reinterpret_cast<float*>(cache);
    __shared__ float sh_m[BLOCK / 32];
    __shared__ int sh_a[BLOCK / 32];
    __shared__ u64 sh_s[BLOCK / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // Pass 1: max, first argmax, validity.
    float m = NEG_INF;
    int a = 0x7fffffff;
    int bad = 0;
#pragma unroll 4
    for (int i = 4 * tid; i < V; i += 4 * BLOCK) {
        float v[4];
        load4(x, i, V, vec, v);
        if (cache_mode == 2) *reinterpret_cast<float4*>(xcache + i) = make_float4(v[0], v[1], v[2], v[3]);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            bad |= (v[c] != v[c]) | (v[c] == POS_INF);
            if (v[c] > m) { m = v[c]; a = i + c; }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(FULL_MASK, m, o);
        int a2 = __shfl_xor_sync(FULL_MASK, a, o);
        if (m2 > m || (m2 == m && a2 < a)) { m = m2; a = a2; }
    }
    if (lane == 0) { sh_m[warp] = m; sh_a[warp] = a; }
    bad = __syncthreads_or(bad);
    if (bad) return false;
    m = sh_m[0]; a = sh_a[0];
#pragma unroll
    for (int w = 1; w < BLOCK / 32; ++w) {
        float m2 = sh_m[w]; int a2 = sh_a[w];
        if (m2 > m || (m2 == m && a2 < a)) { m = m2; a = a2; }
    }
    st.allninf = (m == NEG_INF);
    st.m = m;
    st.a = st.allninf ? 0 : a;

    // Pass 2: S = sum w (u64), and the u cache.
    u64 S;
    if (st.allninf) {
        S = (u64)V;
        if (cache_mode == 2) {  // w = 1 everywhere (the cache still holds x)
            for (int i = 4 * tid; i < V; i += 4 * BLOCK)
                *reinterpret_cast<uint4*>(xcache + i) = make_uint4(1u, 1u, 1u, 1u);
        }
    } else {
        u64 s = 0;
#pragma unroll 4
        for (int i = 4 * tid; i < V; i += 4 * BLOCK) {
            float v[4];
            if (cache_mode == 2) {
                float4 q = *reinterpret_cast<const float4*>(xcache + i);
                v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
            } else {
                load4(x, i, V, vec, v);
            }
            u32 u[4], w[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                u[c] = u_of(v[c], m);  // entries past V are -inf: weight 0
                w[c] = w_of(u[c], tab);
                s += w[c];
            }
            if (cache_mode == 1)
                *reinterpret_cast<uint2*>(ucache + i) = make_uint2(u[0] | (u[1] << 16), u[2] | (u[3] << 16));
            else if (cache_mode == 2)
                *reinterpret_cast<uint4*>(xcache + i) = make_uint4(w[0], w[1], w[2], w[3]);
        }
        S = block_sum<BLOCK>(s, sh_s);
    }
    const u64 R = (1ull << P) - (u64)V;
    st.k = (R << QV1_K) / S;
    __syncthreads();  // the u cache is complete
    return true;
}

// The weights w of entries i..i+3, from the cache or recomputed from the row.
template <typename T>
__device__ __forceinline__ void w4(const T* __restrict__ x, int i, int V, bool vec, int cache_mode,
                                   const unsigned char* cache, const u32* tab, const RowState& st, u32 (&w)[4]) {
    if (cache_mode == 2) {
        uint4 p = *reinterpret_cast<const uint4*>(reinterpret_cast<const u32*>(cache) + i);
        w[0] = p.x; w[1] = p.y; w[2] = p.z; w[3] = p.w;
        return;
    }
    u32 u[4];
    if (cache_mode == 1) {
        uint2 p = *reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned short*>(cache) + i);
        u[0] = p.x & 0xffffu; u[1] = p.x >> 16; u[2] = p.y & 0xffffu; u[3] = p.y >> 16;
    } else {
        float v[4];
        load4(x, i, V, vec, v);
#pragma unroll
        for (int c = 0; c < 4; ++c) u[c] = u_of(v[c], st.m);
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) w[c] = st.allninf ? 1u : w_of(u[c], tab);
}

// One entry's weight (search's contiguous walk).
template <typename T>
__device__ __forceinline__ u32 w1(const T* __restrict__ x, int i, int cache_mode, const unsigned char* cache,
                                  const u32* tab, const RowState& st) {
    if (cache_mode == 2) return reinterpret_cast<const u32*>(cache)[i];
    if (st.allninf) return 1u;
    const u32 u = cache_mode == 1 ? (u32)reinterpret_cast<const unsigned short*>(cache)[i] : u_of(to_f32(x[i]), st.m);
    return w_of(u, tab);
}

// g = (w * k) >> 39; k < 2^32 whenever some w exceeds 1, so a 32 x 32 -> 64-bit product does.
__device__ __forceinline__ u32 g_of(u32 w, const RowState& st) {
    if (st.allninf) return (u32)(st.k >> QV1_K);
    return (u32)(((u64)w * (u32)st.k) >> QV1_K);
}

// MODE 0: full table freqs[row, 0..V) (row stride V).
// MODE 1: gather: aux = int64 symbol per row; out[2*row] = cum_low, out[2*row+1] = freq.
// MODE 2: search: aux = u32 target per row; out[3*row..] = symbol, cum_low, freq.
// status[row]: 0 ok, 1 NaN or +inf in the row, 2 symbol / target out of range. A failed row of
// mode 1/2 also has freq 0 (valid frequencies are >= 1), so the host needs only `out`.
template <typename T, int BLOCK, int MODE>
__global__ void __launch_bounds__(BLOCK)
qv1_rows(const T* __restrict__ logits, long long ld, int V, int P, const u32* __restrict__ exp2_tab,
         int cache_mode, int vec_i, const void* __restrict__ aux, u32* __restrict__ out,
         int* __restrict__ status) {
    extern __shared__ __align__(16) unsigned char qv1_dyn[];
    __shared__ u32 tab[1024];
    __shared__ u32 sh_u[BLOCK / 32];
    __shared__ u32 sh_u2[BLOCK / 32];
    __shared__ u32 sh_gs;
    unsigned char* cache = qv1_dyn;
    const bool vec = vec_i != 0;
    const int row = blockIdx.x, tid = threadIdx.x;
    const T* x = logits + (long long)row * ld;
    for (int i = tid; i < 1024; i += BLOCK) tab[i] = exp2_tab[i];
    __syncthreads();

    RowState st;
    if (!row_state<T, BLOCK>(x, V, P, vec, cache_mode, tab, cache, st)) {
        if (tid == 0) {
            status[row] = 1;
            if (MODE == 1) { out[2 * row] = 0; out[2 * row + 1] = 0; }
            if (MODE == 2) { out[3 * row] = 0; out[3 * row + 1] = 0; out[3 * row + 2] = 0; }
        }
        return;
    }
    const u32 R = (1u << P) - (u32)V;

    if (MODE == 0) {
        u32* f = out + (long long)row * V;
        u32 G = 0;
        for (int i = 4 * tid; i < V; i += 4 * BLOCK) {
            u32 w[4];
            w4(x, i, V, vec, cache_mode, cache, tab, st, w);
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                if (i + c < V) {
                    u32 g = g_of(w[c], st);
                    G += g;
                    f[i + c] = 1u + g;
                }
            }
        }
        G = block_sum<BLOCK>(G, sh_u);  // contains __syncthreads: f[] writes are visible
        if (tid == 0) {
            f[st.a] += R - G;
            status[row] = 0;
        }
    } else if (MODE == 1) {
        const long long s = reinterpret_cast<const long long*>(aux)[row];
        if (s < 0 || s >= V) {
            if (tid == 0) { status[row] = 2; out[2 * row] = 0xffffffffu; out[2 * row + 1] = 0; }
            return;
        }
        const int si = (int)s;
        u32 G = 0, below = 0;
        for (int i = 4 * tid; i < V; i += 4 * BLOCK) {
            u32 w[4];
            w4(x, i, V, vec, cache_mode, cache, tab, st, w);
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                if (i + c < V) {
                    u32 g = g_of(w[c], st);
                    G += g;
                    below += (i + c < si) ? g : 0u;
                    if (i + c == si) sh_gs = g;
                }
            }
        }
        G = block_sum<BLOCK>(G, sh_u);
        below = block_sum<BLOCK>(below, sh_u2);
        if (tid == 0) {
            const u32 L = R - G;
            out[2 * row] = (u32)si + below + (st.a < si ? L : 0u);
            out[2 * row + 1] = 1u + sh_gs + (st.a == si ? L : 0u);
            status[row] = 0;
        }
    } else {
        const u32 target = reinterpret_cast<const u32*>(aux)[row];
        // L needs sum g over the row first.
        u32 G = 0;
        for (int i = 4 * tid; i < V; i += 4 * BLOCK) {
            u32 w[4];
            w4(x, i, V, vec, cache_mode, cache, tab, st, w);
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (i + c < V) G += g_of(w[c], st);
        }
        G = block_sum<BLOCK>(G, sh_u);
        const u32 L = R - G;
        if (target >= (1u << P)) {
            if (tid == 0) { status[row] = 2; out[3 * row] = 0; out[3 * row + 1] = 0; out[3 * row + 2] = 0; }
            return;
        }
        // Contiguous chunks per thread, then an exclusive scan of the chunk totals.
        const int chunk = (V + BLOCK - 1) / BLOCK;
        const int lo = min(V, tid * chunk), hi = min(V, lo + chunk);
        u32 tot = 0;
        for (int i = lo; i < hi; ++i) {
            tot += 1u + g_of(w1(x, i, cache_mode, cache, tab, st), st) + (i == st.a ? L : 0u);
        }
        const int lane = tid & 31, warp = tid >> 5;
        u32 inc = tot;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            u32 y = __shfl_up_sync(FULL_MASK, inc, o);
            if (lane >= o) inc += y;
        }
        __syncthreads();
        if (lane == 31) sh_u[warp] = inc;
        __syncthreads();
        u32 base = 0;
        for (int w = 0; w < warp; ++w) base += sh_u[w];
        const u32 excl = base + inc - tot;
        if (tot > 0 && target >= excl && target < excl + tot) {
            u32 cum = excl;
            for (int i = lo; i < hi; ++i) {
                u32 f = 1u + g_of(w1(x, i, cache_mode, cache, tab, st), st) + (i == st.a ? L : 0u);
                if (target < cum + f) {
                    out[3 * row] = (u32)i; out[3 * row + 1] = cum; out[3 * row + 2] = f;
                    status[row] = 0;
                    break;
                }
                cum += f;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Cluster kernel: one thread-block cluster of CS CTAs per row, the row held in registers.
//
// CTA `rank` of the cluster owns the slice [rank * SLICE, (rank + 1) * SLICE) of the row,
// SLICE = BLOCK * NL * EPL, EPL = entries per 16-byte load (4 f32, 8 bf16/f16); thread t holds
// entries rank * SLICE + (j * BLOCK + t) * EPL + c (j < NL, c < EPL) in registers, loaded once
// (entries at or past V read as -inf, weight 0). Many small CTAs per SM at different phases
// keep the memory system busy while others compute (one 192 KiB row per block did not).
// The row is read from device memory exactly once; nothing is re-read or recomputed.
//   R1: max with NaN propagation (max.NaN: a NaN or +inf anywhere shows in the result);
//   R2: S = sum w (u64) and the first index of the max (min over the threads holding it);
//   R3: the g sums (G, and for gather the sum below the symbol and g of the symbol).
// Each reduction: warp shuffles, the CTA's warps through shared memory, then every CTA pushes
// its partial into a slot of every CTA of the cluster (st.shared::cluster) and one cluster
// barrier makes them visible; no CTA touches another's shared memory after the last barrier,
// and none before a first (split, relaxed) barrier shows that all CTAs of the cluster run.
// Per entry, integer-exact and the same bits as steps 3-4 of docs/numerics.md:
//   -z = (m - x) * C  (m - x is exactly -(x - m); two rounded ops, no FMA);
//   y = min(-z, 32768) + 1.5 * 2^23 rounds -z to an integer, half to even, exactly as rint
//      (the ulp of y is 1), so bits(y) = 0x4B400000 + u with u = -rint(z), and the clamp gives
//      u = 32768 (q = 32, weight 0) wherever !(z > ZMIN);
//   w = EXP2[u & 1023] >> (u >> 10) with PTX shr (a shift of 32 gives 0);
//   g = umulhi(w, k) >> 7 = (w * k) >> 39 (k < 2^32 whenever the row has a finite entry).
// MODE 0: the full table; MODE 1: gather. (Search keeps qv1_rows: it walks the row in order.)

#define QV1_EXP2_SIZE 1024

__device__ __forceinline__ float fmax_nan(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}
__device__ __forceinline__ u32 shr_clamp(u32 a, u32 s) {  // a >> s, 0 when s >= 32
    u32 d;
    asm("shr.b32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(s));
    return d;
}
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// The first DSMEM access must wait until every CTA of the cluster runs: arrive early (relaxed, no
// fence) and wait just before the first remote store.
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_sync_all() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Shared-memory address of `p` in CTA `rank` of the cluster.
__device__ __forceinline__ u32 cluster_map(const void* p, u32 rank) {
    u32 local = (u32)__cvta_generic_to_shared(p), remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}
__device__ __forceinline__ void st_cluster_u32(u32 addr, u32 v) {
    asm volatile("st.shared::cluster.u32 [%0], %1;" :: "r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_cluster_u64(u32 addr, u64 v) {
    asm volatile("st.shared::cluster.u64 [%0], %1;" :: "r"(addr), "l"(v) : "memory");
}

// EPL entries from one 16-byte load (vec) or element by element (row end / unaligned rows).
template <typename T> struct Vec16;
template <> struct Vec16<float> {
    static constexpr int EPL = 4;
    __device__ __forceinline__ static void load(const float* __restrict__ p, int i, int V, bool vec, float* v) {
        if (vec && i + 4 <= V) {
            float4 q = __ldcs(reinterpret_cast<const float4*>(p + i));  // streamed: read once
            v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
        } else {
#pragma unroll
            for (int c = 0; c < 4; ++c) v[c] = (i + c < V) ? p[i + c] : NEG_INF;
        }
    }
};
template <typename H> struct Vec16Half {
    static constexpr int EPL = 8;
    __device__ __forceinline__ static void load(const H* __restrict__ p, int i, int V, bool vec, float* v) {
        if (vec && i + 8 <= V) {
            uint4 q = __ldcs(reinterpret_cast<const uint4*>(p + i));
            const u32 h[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                H lo, hi;
                lo.bits = (unsigned short)(h[c] & 0xffffu);
                hi.bits = (unsigned short)(h[c] >> 16);
                v[2 * c] = to_f32(lo);
                v[2 * c + 1] = to_f32(hi);
            }
        } else {
#pragma unroll
            for (int c = 0; c < 8; ++c) v[c] = (i + c < V) ? to_f32(p[i + c]) : NEG_INF;
        }
    }
};
template <> struct Vec16<bf16_t> : Vec16Half<bf16_t> {};
template <> struct Vec16<f16_t> : Vec16Half<f16_t> {};

template <typename T, int BLOCK, int CS, int NL, int MODE>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(BLOCK)
qv1_cluster(const T* __restrict__ logits, long long ld, int V, int P, const u32* __restrict__ exp2_tab,
            int vec_i, const void* __restrict__ aux, u32* __restrict__ out, int* __restrict__ status,
            int ovec_i) {
    constexpr int EPL = Vec16<T>::EPL;
    constexpr int E = NL * EPL;              // entries per thread
    constexpr int STRIDE = BLOCK * EPL;      // index distance between a thread's loads
    constexpr int SLICE = BLOCK * E;         // entries per CTA
    constexpr int NW = BLOCK / 32;
    __shared__ __align__(16) u32 tab[QV1_EXP2_SIZE];
    __shared__ float red_m[NW];
    __shared__ u64 red_s[NW];
    __shared__ int red_a[NW];
    __shared__ u32 red_g[3][NW];
    __shared__ float cl_m[CS];
    __shared__ u64 cl_s[CS];
    __shared__ int cl_a[CS];
    __shared__ u32 cl_g[3][CS];
    __shared__ u64 sh_k;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 rank = CS > 1 ? cluster_rank() : 0u;
    const long long row = blockIdx.x / CS;
    const T* __restrict__ x = logits + row * ld;
    const int base = (int)rank * SLICE + tid * EPL;   // entry of (j, c) = base + j * STRIDE + c
    const bool vec = vec_i != 0;

    float v[E];
#pragma unroll
    for (int j = 0; j < NL; ++j) Vec16<T>::load(x, base + j * STRIDE, V, vec, v + j * EPL);
    if (BLOCK >= QV1_EXP2_SIZE / 4) {
        if (tid < QV1_EXP2_SIZE / 4) reinterpret_cast<uint4*>(tab)[tid] = reinterpret_cast<const uint4*>(exp2_tab)[tid];
    } else {
#pragma unroll
        for (int i = 0; i < QV1_EXP2_SIZE / 4; i += BLOCK)
            reinterpret_cast<uint4*>(tab)[i + tid] = reinterpret_cast<const uint4*>(exp2_tab)[i + tid];
    }
    if (CS > 1) cluster_arrive_relaxed();

    // ---- R1: max (NaN-propagating) ----
    float tm = v[0];
#pragma unroll
    for (int e = 1; e < E; ++e) tm = fmax_nan(tm, v[e]);
    float m = tm;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmax_nan(m, __shfl_xor_sync(FULL_MASK, m, o));
    if (lane == 0) red_m[warp] = m;
    if (CS > 1) cluster_wait();  // every CTA of the cluster has started (and this CTA's threads met)
    __syncthreads();  // also: tab complete
    if (warp == 0) {
        float c = lane < NW ? red_m[lane] : NEG_INF;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) c = fmax_nan(c, __shfl_xor_sync(FULL_MASK, c, o));
        if (CS == 1) { if (lane == 0) cl_m[0] = c; }
        else if (lane < CS) st_cluster_u32(cluster_map(&cl_m[rank], lane), __float_as_uint(c));
    }
    if (CS > 1) cluster_sync_all(); else __syncthreads();
    m = cl_m[0];
#pragma unroll
    for (int r = 1; r < CS; ++r) m = fmax_nan(m, cl_m[r]);

    const bool is_lead = (rank == 0 && tid == 0);
    if (m != m || m == POS_INF) {  // NaN or +inf in the row (uniform over the cluster)
        if (is_lead) {
            status[row] = 1;
            if (MODE == 1) { out[2 * row] = 0; out[2 * row + 1] = 0; }
        }
        return;
    }
    long long sym = 0;
    if (MODE == 1) {
        sym = reinterpret_cast<const long long*>(aux)[row];
        if (sym < 0 || sym >= V) {
            if (is_lead) { status[row] = 2; out[2 * row] = 0xffffffffu; out[2 * row + 1] = 0; }
            return;
        }
    }
    const int s = (int)sym;
    const u32 R = (1u << P) - (u32)V;

    if (m == NEG_INF) {  // every entry -inf: w = 1 everywhere, a = 0, S = V; g is one constant
        const u64 k = ((u64)R << QV1_K) / (u64)V;
        const u32 g0 = (u32)(k >> QV1_K);
        const u32 L = R - (u32)V * g0;
        if (MODE == 1) {
            if (is_lead) {
                out[2 * row] = (u32)s + (u32)s * g0 + (s > 0 ? L : 0u);
                out[2 * row + 1] = 1u + g0 + (s == 0 ? L : 0u);
                status[row] = 0;
            }
        } else {
            u32* f = out + row * (long long)V;
#pragma unroll
            for (int j = 0; j < NL; ++j)
#pragma unroll
                for (int c = 0; c < EPL; ++c) {
                    const int i = base + j * STRIDE + c;
                    if (i < V) f[i] = 1u + g0 + (i == 0 ? L : 0u);
                }
            if (is_lead) status[row] = 0;
        }
        return;
    }

    // first index of the max: only threads whose own max equals m look (reverse: the first wins)
    int a = 0x7fffffff;
    if (tm == m) {
#pragma unroll
        for (int e = E - 1; e >= 0; --e)
            if (v[e] == m) a = base + (e / EPL) * STRIDE + (e % EPL);
    }

    // ---- weights, in place (v[e] holds w as bits from here), and S ----
    u32 w[E];
    u64 S = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        float nz = __fmul_rn(__fsub_rn(m, v[e]), __uint_as_float(QV1_C_BITS));
        nz = fminf(nz, 32768.0f);
        const u32 b = __float_as_uint(__fadd_rn(nz, 12582912.0f));  // 0x4B400000 + u
        w[e] = shr_clamp(tab[b & 1023u], (b >> 10) & 63u);
        S += w[e];
    }

    // ---- R2: S and a ----
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        S += __shfl_xor_sync(FULL_MASK, S, o);
        a = min(a, __shfl_xor_sync(FULL_MASK, a, o));
    }
    if (lane == 0) { red_s[warp] = S; red_a[warp] = a; }
    __syncthreads();
    if (warp == 0) {
        u64 cs = lane < NW ? red_s[lane] : 0ull;
        int ca = lane < NW ? red_a[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            cs += __shfl_xor_sync(FULL_MASK, cs, o);
            ca = min(ca, __shfl_xor_sync(FULL_MASK, ca, o));
        }
        if (CS == 1) { if (lane == 0) { cl_s[0] = cs; cl_a[0] = ca; } }
        else if (lane < CS) {
            st_cluster_u64(cluster_map(&cl_s[rank], lane), cs);
            st_cluster_u32(cluster_map(&cl_a[rank], lane), (u32)ca);
        }
    }
    if (CS > 1) cluster_sync_all(); else __syncthreads();
    if (warp == 0) {  // k once per CTA (a u64 division), shared below
        u64 St = 0;
#pragma unroll
        for (int r = 0; r < CS; ++r) St += cl_s[r];
        if (lane == 0) sh_k = ((u64)R << QV1_K) / St;
    }
    a = cl_a[0];
#pragma unroll
    for (int r = 1; r < CS; ++r) a = min(a, cl_a[r]);
    __syncthreads();
    const u32 k = (u32)sh_k;  // < 2^32: w[a] = 2^31, so S >= 2^31

    // ---- g, and the sums ----
    u32 G = 0, below = 0, gs = 0;
    const int rel = s - base;  // gather: group j lies wholly below s iff j * STRIDE + EPL <= rel
    if (MODE == 0) {
        u32* f = out + row * (long long)V;
        const bool ovec = ovec_i != 0;
#pragma unroll
        for (int j = 0; j < NL; ++j) {
            u32 fv[EPL];
#pragma unroll
            for (int c = 0; c < EPL; ++c) {
                const u32 g = __umulhi(w[j * EPL + c], k) >> (QV1_K - 32);
                G += g;
                fv[c] = 1u + g;
            }
            const int i0 = base + j * STRIDE;
            if (ovec && i0 + EPL <= V) {
#pragma unroll
                for (int c = 0; c < EPL; c += 4)
                    __stcs(reinterpret_cast<uint4*>(f + i0 + c), make_uint4(fv[c], fv[c + 1], fv[c + 2], fv[c + 3]));
            } else {
#pragma unroll
                for (int c = 0; c < EPL; ++c) if (i0 + c < V) f[i0 + c] = fv[c];
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < NL; ++j) {
            u32 gj = 0;
#pragma unroll
            for (int c = 0; c < EPL; ++c) gj += __umulhi(w[j * EPL + c], k) >> (QV1_K - 32);
            G += gj;
            below += (j * STRIDE + EPL <= rel) ? gj : 0u;
        }
        // the group holding s (at most one thread of the cluster): the part below s, and g of s
        if (rel >= 0 && rel < NL * STRIDE && (rel % STRIDE) < EPL) {
            const int js = rel / STRIDE, cs = rel % STRIDE;
#pragma unroll
            for (int j = 0; j < NL; ++j)
                if (j == js) {
#pragma unroll
                    for (int c = 0; c < EPL; ++c) {
                        const u32 g = __umulhi(w[j * EPL + c], k) >> (QV1_K - 32);
                        below += c < cs ? g : 0u;
                        gs += c == cs ? g : 0u;
                    }
                }
        }
    }

    // ---- R3: G (and below, gs) ----
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        G += __shfl_xor_sync(FULL_MASK, G, o);
        if (MODE == 1) {
            below += __shfl_xor_sync(FULL_MASK, below, o);
            gs += __shfl_xor_sync(FULL_MASK, gs, o);
        }
    }
    if (lane == 0) { red_g[0][warp] = G; red_g[1][warp] = below; red_g[2][warp] = gs; }
    __syncthreads();
    if (warp == 0) {
        u32 c0 = lane < NW ? red_g[0][lane] : 0u, c1 = lane < NW ? red_g[1][lane] : 0u,
            c2 = lane < NW ? red_g[2][lane] : 0u;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            c0 += __shfl_xor_sync(FULL_MASK, c0, o);
            c1 += __shfl_xor_sync(FULL_MASK, c1, o);
            c2 += __shfl_xor_sync(FULL_MASK, c2, o);
        }
        if (CS == 1) { if (lane == 0) { cl_g[0][0] = c0; cl_g[1][0] = c1; cl_g[2][0] = c2; } }
        else if (lane < CS) {
            st_cluster_u32(cluster_map(&cl_g[0][rank], lane), c0);
            st_cluster_u32(cluster_map(&cl_g[1][rank], lane), c1);
            st_cluster_u32(cluster_map(&cl_g[2][rank], lane), c2);
        }
    }
    if (CS > 1) cluster_sync_all(); else __syncthreads();
    u32 Gt = 0;
#pragma unroll
    for (int r = 0; r < CS; ++r) Gt += cl_g[0][r];
    const u32 L = R - Gt;
    if (MODE == 0) {
        // the thread that wrote f[a] adds the remainder to it
        const int ra = a - base;
        if (ra >= 0 && ra < NL * STRIDE && (ra % STRIDE) < EPL) {
            u32* f = out + row * (long long)V;
            f[a] += L;
        }
        if (is_lead) status[row] = 0;
    } else if (is_lead) {
        u32 bt = 0, gt = 0;
#pragma unroll
        for (int r = 0; r < CS; ++r) { bt += cl_g[1][r]; gt += cl_g[2][r]; }
        out[2 * row] = (u32)s + bt + (a < s ? L : 0u);
        out[2 * row + 1] = 1u + gt + (a == s ? L : 0u);
        status[row] = 0;
    }
}
