// KV residual pack / unpack (python/seqkv/residual.py holds the NumPy reference and the format).
//
// Residual of one element: z = zigzag(key(orig) - key(recomp)) in W bits (W = 16 for bf16/f16,
// 32 for f32), where key() is the monotone float -> ordered-integer map
// key(b) = b ^ (sign(b) ? 0x7fff.. : 0) (an involution; +-1 ulp is +-1, also across zero).
// Blocks of 32 elements; a block of width w (bit length of its largest z) is w u32 words, word j
// = bit j of the block's 32 elements (bit i of the word is element i). The packed form is widths
// (u8 per block) and the words of all blocks, back to back.
//
// One kernel per direction, each reading its inputs once:
// * A warp works on K steps of 32 * E elements (E = 2 for 16-bit kinds, 1 for f32), i.e. E blocks
//   per step, one 32-bit load per lane and input. 16-bit kinds keep two elements per register
//   (SIMD within the register for key, difference, zig-zag), and two shuffles + one byte permute
//   turn "lane l holds elements 2l, 2l+1" into "lane l holds element l of block A (low half) and
//   element l of block B (high half)", so one __ballot_sync per block and bit plane gives a word.
// * Tile t is block t (blocks of a 1-D grid are dispatched in index order, so every tile a
//   look-back waits for has started: the assumption of CUB's single-pass scan);
//   each publishes its word count and finds its output offset by decoupled look-back over the
//   tile states (epoch, flag and count in one 64-bit word: flag 1 = this tile's count, 2 =
//   inclusive prefix). No scratch buffer, no separate scan or compaction pass; pack writes the
//   total word count to `total` (host-mapped pinned memory: no copy to wait for).
//   `state` (one u64 per tile) is reused from call to call without zeroing: a state written
//   under another epoch (a previous call) reads as "not yet published". The caller gives each
//   call on a state buffer a new nonzero 20-bit epoch (and zeroes the buffer when they wrap).

typedef unsigned int u32;
typedef unsigned long long u64;
#define FULL_MASK 0xffffffffu
#define WARPS 8
#define ST_EPOCH 44
#define ST_AGG (1ull << 42)
#define ST_PRE (2ull << 42)
#define ST_VAL ((1ull << 42) - 1)

template <typename U> struct Bits;
template <> struct Bits<unsigned short> { static constexpr int W = 16; static constexpr int E = 2; };
template <> struct Bits<u32> { static constexpr int W = 32; static constexpr int E = 1; };

// key / zig-zag / inverse on one 32-bit register: two 16-bit elements (E = 2) or one 32-bit (E = 1)
template <int E> struct Swar;
template <> struct Swar<2> {
    static constexpr u32 H = 0x80008000u, LO = 0x00010001u;
    // 0xffff in each 16-bit half whose top bit is set: one PRMT replicating the sign bits of
    // bytes 1 and 3 (selector nibbles with bit 3 set)
    __device__ __forceinline__ static u32 sign(u32 b) {
        u32 r;
        asm("prmt.b32 %0, %1, 0, 0xBB99;" : "=r"(r) : "r"(b));
        return r;
    }
    __device__ __forceinline__ static u32 key(u32 b) { return b ^ (sign(b) & 0x7fff7fffu); }
    __device__ __forceinline__ static u32 sub(u32 a, u32 b) { return ((a | H) - (b & ~H)) ^ ((a ^ ~b) & H); }
    __device__ __forceinline__ static u32 add(u32 a, u32 b) { return ((a & ~H) + (b & ~H)) ^ ((a ^ b) & H); }
    __device__ __forceinline__ static u32 zig(u32 d) { return ((d << 1) & 0xfffefffeu) ^ sign(d); }
    __device__ __forceinline__ static u32 unzig(u32 z) { return ((z >> 1) & 0x7fff7fffu) ^ ((z & LO) * 0xffffu); }
};
template <> struct Swar<1> {
    __device__ __forceinline__ static u32 key(u32 b) { return b ^ ((u32)((int)b >> 31) >> 1); }
    __device__ __forceinline__ static u32 sub(u32 a, u32 b) { return a - b; }
    __device__ __forceinline__ static u32 add(u32 a, u32 b) { return a + b; }
    __device__ __forceinline__ static u32 zig(u32 d) { return (d << 1) ^ (u32)((int)d >> 31); }
    __device__ __forceinline__ static u32 unzig(u32 z) { return (z >> 1) ^ (0u - (z & 1u)); }
};

__device__ __forceinline__ u64 ld_relaxed(const u64* p) {
    u64 v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_relaxed(u64* p, u64 v) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" :: "l"(p), "l"(v) : "memory");
}

template <typename V_t>
__device__ __forceinline__ V_t warp_sum(V_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Exclusive prefix of this tile's count `agg` over the tiles before it. Called by all lanes of
// one warp; publishes the tile's own state first and its inclusive prefix at the end.
// flag of a state under `ep` (the epoch, shifted into place): 0 when written by another call
__device__ __forceinline__ u32 st_flag(u64 s, u64 ep) {
    return (s & ~((1ull << ST_EPOCH) - 1)) == ep ? (u32)(s >> 42) & 3u : 0u;
}

__device__ u64 look_back(u64* state, u32 tile, u64 agg, u64 ep) {
    const int lane = threadIdx.x & 31;
    if (tile == 0) {
        if (lane == 0) st_relaxed(state, ep | ST_PRE | agg);
        return 0;
    }
    if (lane == 0) st_relaxed(state + tile, ep | ST_AGG | agg);
    u64 excl = 0;
    long long j = (long long)tile - 1;  // the tile lane 0 looks at; lane l looks at j - l
    while (true) {
        const long long idx = j - lane;
        u64 s = idx >= 0 ? ld_relaxed(state + idx) : ep | ST_PRE;  // before tile 0: a prefix of 0
        while (__any_sync(FULL_MASK, st_flag(s, ep) == 0))
            if (st_flag(s, ep) == 0) s = ld_relaxed(state + idx);
        const u32 pre = __ballot_sync(FULL_MASK, st_flag(s, ep) == 2);
        const int last = pre ? __ffs(pre) - 1 : 31;  // lanes 0..last add up to the nearest prefix
        excl += warp_sum<u64>(lane <= last ? (s & ST_VAL) : 0ull);
        if (pre) break;
        j -= 32;
    }
    if (lane == 0) st_relaxed(state + tile, ep | ST_PRE | (excl + agg));
    return excl;
}

// Offset of this warp's words: look-back for the tile (warp 0), plus the warps before it.
// With `total` (pack): the last tile also writes the total word count there.
__device__ __forceinline__ u64 warp_offset(u64* state, u32 tile, u32 warp_total, u32 epoch, u64* total) {
    __shared__ u32 sh_w[WARPS];
    __shared__ u64 sh_base;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh_w[warp] = warp_total;
    __syncthreads();
    u32 before = 0, all = 0;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        const u32 c = sh_w[w];
        before += w < warp ? c : 0u;
        all += c;
    }
    if (warp == 0) {
        const u64 base = look_back(state, tile, all, (u64)epoch << ST_EPOCH);
        if (lane == 0) {
            sh_base = base;
            if (total != nullptr && tile == gridDim.x - 1) *total = base + all;
        }
    }
    __syncthreads();
    return sh_base + before;
}

// Lane l: (element l of block A) | (element l of block B) << 16, from lane l: elements 2l, 2l+1.
__device__ __forceinline__ u32 pairs_to_blocks(u32 v, int lane) {
    const u32 a = __shfl_sync(FULL_MASK, v, lane >> 1);
    const u32 b = __shfl_sync(FULL_MASK, v, 16 + (lane >> 1));
    return __byte_perm(a, b, (lane & 1) ? 0x7632u : 0x5410u);
}
// The inverse.
__device__ __forceinline__ u32 blocks_to_pairs(u32 v, int lane) {
    const u32 a = __shfl_sync(FULL_MASK, v, (2 * lane) & 31);
    const u32 b = __shfl_sync(FULL_MASK, v, (2 * lane + 1) & 31);
    return __byte_perm(a, b, lane < 16 ? 0x5410u : 0x7632u);
}

template <typename U, int K>
__global__ void __launch_bounds__(WARPS * 32)
residual_pack(const U* __restrict__ orig, const U* __restrict__ recomp, long long n, long long nblocks,
              unsigned char* __restrict__ widths, u32* __restrict__ words, u64* __restrict__ state,
              u32 epoch, u64* total_out) {
    constexpr int E = Bits<U>::E;
    constexpr int STEP = 32 * E;  // elements per warp step
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 tile = blockIdx.x;
    const long long step0 = ((long long)tile * WARPS + warp) * K;  // first step of this warp
    const long long e0 = step0 * STEP;
    const u32* po = reinterpret_cast<const u32*>(orig + e0) + lane;  // E elements per u32
    const u32* pr = reinterpret_cast<const u32*>(recomp + e0) + lane;

    u32 z[K];
    if (e0 + K * STEP <= n) {
#pragma unroll
        for (int i = 0; i < K; ++i) z[i] = Swar<E>::zig(Swar<E>::sub(Swar<E>::key(__ldcs(po + 32 * i)), Swar<E>::key(__ldcs(pr + 32 * i))));
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) {
            const long long e = e0 + (long long)i * STEP + (long long)lane * E;
            u32 o = 0, r = 0;
            if (E == 2) {
                const unsigned short* so = reinterpret_cast<const unsigned short*>(orig);
                const unsigned short* sr = reinterpret_cast<const unsigned short*>(recomp);
                if (e < n) { o = so[e]; r = sr[e]; }
                if (e + 1 < n) { o |= (u32)so[e + 1] << 16; r |= (u32)sr[e + 1] << 16; }
            } else if (e < n) {
                o = reinterpret_cast<const u32*>(orig)[e];
                r = reinterpret_cast<const u32*>(recomp)[e];
            }
            z[i] = Swar<E>::zig(Swar<E>::sub(Swar<E>::key(o), Swar<E>::key(r)));  // 0 - 0 past n: z = 0
        }
    }
    u32 wd[K];   // widths of the step's blocks: A | B << 8 (E = 2), or the one width (E = 1)
    u32 total = 0, mywidth = 0;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        if (E == 2) z[i] = pairs_to_blocks(z[i], lane);
        const u32 o = __reduce_or_sync(FULL_MASK, z[i]);
        if (E == 2) {
            const u32 wa = 32u - __clz(o & 0xffffu), wb = 32u - __clz(o >> 16);
            wd[i] = wa | (wb << 8);
            total += wa + wb;
        } else {
            wd[i] = 32u - __clz(o);
            total += wd[i];
        }
        if (lane == i) mywidth = wd[i];
    }
    // widths: lane i < K writes step i's E bytes
    {
        const long long b = (step0 + lane) * E;
        if (lane < K) {
            if (E == 2 && b + 1 < nblocks) {
                *reinterpret_cast<unsigned short*>(widths + b) = (unsigned short)mywidth;
            } else if (b < nblocks) {
                widths[b] = (unsigned char)(mywidth & 0xffu);
            }
        }
    }
    u64 off = warp_offset(state, tile, total, epoch, total_out);
#pragma unroll
    for (int i = 0; i < K; ++i) {
        if (E == 2) {
            const u32 wa = wd[i] & 0xffu, wb = wd[i] >> 8, wm = max(wa, wb);
            u32 ma = 0, mb = 0;
            for (u32 j = 0; j < wm; ++j) {
                const u32 ba = __ballot_sync(FULL_MASK, (z[i] >> j) & 1u);
                const u32 bb = __ballot_sync(FULL_MASK, (z[i] >> (j + 16)) & 1u);
                if ((u32)lane == j) { ma = ba; mb = bb; }
            }
            if ((u32)lane < wa) words[off + lane] = ma;
            if ((u32)lane < wb) words[off + wa + lane] = mb;
            off += wa + wb;
        } else {
            const u32 w = wd[i];
            u32 m = 0;
            for (u32 j = 0; j < w; ++j) {
                const u32 bj = __ballot_sync(FULL_MASK, (z[i] >> j) & 1u);
                if ((u32)lane == j) m = bj;
            }
            if ((u32)lane < w) words[off + lane] = m;
            off += w;
        }
    }
}

template <typename U, int K>
__global__ void __launch_bounds__(WARPS * 32, 5)  // <= 51 registers: 5 tiles per SM
residual_unpack(const U* __restrict__ recomp, long long n, long long nblocks,
                const unsigned char* __restrict__ widths, const u32* __restrict__ words,
                u64* __restrict__ state, u32 epoch, U* __restrict__ out) {
    constexpr int E = Bits<U>::E;
    constexpr int STEP = 32 * E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 tile = blockIdx.x;
    const long long step0 = ((long long)tile * WARPS + warp) * K;
    const long long e0 = step0 * STEP;
    const bool full = e0 + K * STEP <= n;  // warp-uniform

    // this warp's widths: lane i < K holds step i's
    u32 mywidth = 0;
    {
        const long long b = (step0 + lane) * E;
        if (lane < K) {
            if (E == 2 && b + 1 < nblocks) mywidth = *reinterpret_cast<const unsigned short*>(widths + b);
            else if (b < nblocks) mywidth = widths[b];
        }
    }
    // recomputed KV, in flight during the look-back
    u32 r[K];
    const u32* pr = reinterpret_cast<const u32*>(recomp + e0) + lane;
    if (full) {
#pragma unroll
        for (int i = 0; i < K; ++i) r[i] = __ldcs(pr + 32 * i);
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) {
            const long long e = e0 + (long long)i * STEP + (long long)lane * E;
            u32 v = 0;
            if (E == 2) {
                const unsigned short* sr = reinterpret_cast<const unsigned short*>(recomp);
                if (e < n) v = sr[e];
                if (e + 1 < n) v |= (u32)sr[e + 1] << 16;
            } else if (e < n) {
                v = reinterpret_cast<const u32*>(recomp)[e];
            }
            r[i] = v;
        }
    }
    const u32 total = __reduce_add_sync(FULL_MASK, E == 2 ? (mywidth & 0xffu) + (mywidth >> 8) : mywidth);
    u64 off = warp_offset(state, tile, total, epoch, nullptr);

    // all the words of the warp's steps in flight at once, one register per step: lane j holds
    // word j of the step's block (E = 1) or of block A (E = 2), lane 16 + j word j of block B
    const u32 plane = E == 2 ? (u32)lane & 15u : (u32)lane;
    const bool in_b = E == 2 && lane >= 16;
    u32 wd[K], mw[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
        wd[i] = __shfl_sync(FULL_MASK, mywidth, i);
        const u32 wa = E == 2 ? wd[i] & 0xffu : wd[i], wb = E == 2 ? wd[i] >> 8 : 0u;
        mw[i] = plane < (in_b ? wb : wa) ? words[off + (in_b ? wa : 0u) + plane] : 0u;
        off += wa + wb;
    }
    u32* po = reinterpret_cast<u32*>(out + e0) + lane;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        u32 z = 0;
        if (E == 2) {
            const u32 wm = max(wd[i] & 0xffu, wd[i] >> 8);
            for (u32 j = 0; j < wm; ++j) {
                const u32 a = __shfl_sync(FULL_MASK, mw[i], j), b = __shfl_sync(FULL_MASK, mw[i], 16 + j);
                z |= (((a >> lane) & 1u) << j) | (((b >> lane) & 1u) << (j + 16));
            }
            z = blocks_to_pairs(z, lane);
        } else {
            for (u32 j = 0; j < wd[i]; ++j) z |= ((__shfl_sync(FULL_MASK, mw[i], j) >> lane) & 1u) << j;
        }
        const u32 o = Swar<E>::key(Swar<E>::add(Swar<E>::key(r[i]), Swar<E>::unzig(z)));
        if (full) {
            __stcs(po + 32 * i, o);
        } else {
            const long long e = e0 + (long long)i * STEP + (long long)lane * E;
            if (E == 2) {
                unsigned short* so = reinterpret_cast<unsigned short*>(out);
                if (e < n) so[e] = (unsigned short)(o & 0xffffu);
                if (e + 1 < n) so[e + 1] = (unsigned short)(o >> 16);
            } else if (e < n) {
                reinterpret_cast<u32*>(out)[e] = o;
            }
        }
    }
}
