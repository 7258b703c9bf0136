// KV residual pack / unpack (python/seqkv/residual.py holds the NumPy reference and the format).
//
// Residual of one element: z = zigzag(key(orig) - key(recomp)) in W bits (W = 16 for bf16/f16,
// 32 for f32), where key() is the monotone float -> ordered-integer map
// key(b) = b ^ (sign(b) ? 0x7fff.. : 0) (an involution; +-1 ulp is +-1, also across zero).
// Blocks of 32 elements (one warp, one element per lane); a block of width w (bit length of its
// largest z) is w u32 words, word j = bit j of the 32 lanes (a __ballot_sync). The packed form is
// widths (u8 per block) and the words of all blocks, back to back.
//
// Tiles of WARPS * BPW blocks (8 warps x BPW blocks). Pack writes each tile's words at a fixed
// place in a scratch buffer (tile * WARPS * BPW * W words) plus the tile's word count; the host
// takes an exclusive cumsum of the counts and `residual_compact` moves the words together. The
// inputs are read once.

typedef unsigned int u32;
typedef unsigned long long u64;
#define FULL_MASK 0xffffffffu
#define WARPS 8                      // BPW (template): 32-blocks per warp

template <typename U> struct Bits;
template <> struct Bits<unsigned short> { static constexpr int W = 16; static constexpr u32 MASK = 0xffffu; };
template <> struct Bits<u32> { static constexpr int W = 32; static constexpr u32 MASK = 0xffffffffu; };

template <typename U>
__device__ __forceinline__ u32 key_of(u32 b) {
    constexpr int W = Bits<U>::W;
    return (b >> (W - 1)) ? (b ^ (Bits<U>::MASK >> 1)) : b;
}
template <typename U>
__device__ __forceinline__ u32 zig(u32 ko, u32 kr) {
    constexpr int W = Bits<U>::W;
    u32 d = (ko - kr) & Bits<U>::MASK;
    u32 neg = (d >> (W - 1)) ? Bits<U>::MASK : 0u;
    return ((d << 1) ^ neg) & Bits<U>::MASK;
}
template <typename U>
__device__ __forceinline__ u32 unzig_add(u32 z, u32 kr) {
    u32 d = (z >> 1) ^ (0u - (z & 1u));
    return (kr + d) & Bits<U>::MASK;
}

// Exclusive prefix over the warps of the block of per-warp totals; returns this warp's offset and
// sets *tile_total.
__device__ __forceinline__ u32 warp_offsets(u32 warp_total, u32* tile_total) {
    __shared__ u32 sh[WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = warp_total;
    __syncthreads();
    u32 off = 0, tot = 0;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        off += (w < warp) ? sh[w] : 0u;
        tot += sh[w];
    }
    *tile_total = tot;
    return off;
}

template <typename U, int BPW>
__global__ void __launch_bounds__(WARPS * 32)
residual_pack(const U* __restrict__ orig, const U* __restrict__ recomp, long long n, long long nblocks,
              unsigned char* __restrict__ widths, u32* __restrict__ scratch, u32* __restrict__ tile_words) {
    constexpr int W = Bits<U>::W;
    constexpr int TILE_BLOCKS = WARPS * BPW;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long tile = blockIdx.x;
    const long long blk0 = tile * TILE_BLOCKS + (long long)warp * BPW;
    u32 z[BPW];
    u32 wd[BPW];
    const long long e0 = blk0 * 32 + lane;
    const U* po = orig + e0;  // element b * 32 of this lane at po[b * 32]: immediate offsets
    const U* pr = recomp + e0;
    if ((blk0 + BPW) * 32 <= n) {  // whole warp in range (uniform branch)
#pragma unroll
        for (int b = 0; b < BPW; ++b) z[b] = zig<U>(key_of<U>((u32)po[b * 32]), key_of<U>((u32)pr[b * 32]));
    } else {
#pragma unroll
        for (int b = 0; b < BPW; ++b)
            z[b] = e0 + b * 32 < n ? zig<U>(key_of<U>((u32)po[b * 32]), key_of<U>((u32)pr[b * 32])) : 0u;
    }
    u32 total = 0;
#pragma unroll
    for (int b = 0; b < BPW; ++b) {
        const u32 o = __reduce_or_sync(FULL_MASK, z[b]);
        wd[b] = 32u - __clz(o);
        total += wd[b];
    }
    for (int b = 0; b < BPW; b += 32) {  // BPW may exceed 32
        u32 wv = 0;
#pragma unroll
        for (int bb = 0; bb < BPW; ++bb) if (bb == b + lane) wv = wd[bb];
        if (b + lane < BPW && blk0 + b + lane < nblocks) widths[blk0 + b + lane] = (unsigned char)wv;
    }
    u32 tile_total;
    const u32 off = warp_offsets(total, &tile_total);
    if (threadIdx.x == 0) tile_words[tile] = tile_total;
    u32* dst = scratch + tile * (long long)(TILE_BLOCKS * W) + off;
#pragma unroll
    for (int b = 0; b < BPW; ++b) {
        u32 mine = 0;
        for (u32 j = 0; j < wd[b]; ++j) {
            const u32 word = __ballot_sync(FULL_MASK, (z[b] >> j) & 1u);
            if (lane == (int)j) mine = word;
        }
        if ((u32)lane < wd[b]) dst[lane] = mine;
        dst += wd[b];
    }
}

// Moves each tile's words from its scratch place to offsets[tile] (exclusive cumsum of counts).
__global__ void residual_compact(const u32* __restrict__ scratch, const u32* __restrict__ tile_words,
                                 const u64* __restrict__ offsets, u32* __restrict__ words, int tile_cap) {
    const long long tile = blockIdx.x;
    const u32 cnt = tile_words[tile];
    const u32* src = scratch + tile * (long long)tile_cap;
    u32* dst = words + offsets[tile];
    for (u32 i = threadIdx.x; i < cnt; i += blockDim.x) dst[i] = src[i];
}

// Per-tile sums of the widths (the unpack side's tile word counts).
__global__ void residual_tile_sums(const unsigned char* __restrict__ widths, long long nblocks,
                                   u32* __restrict__ tile_words, long long ntiles, int TILE_BLOCKS) {
    const long long tile = (long long)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (tile >= ntiles) return;
    u32 s = 0;
    for (int b = lane; b < TILE_BLOCKS; b += 32) {
        const long long blk = tile * TILE_BLOCKS + b;
        s += blk < nblocks ? (u32)widths[blk] : 0u;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
    if (lane == 0) tile_words[tile] = s;
}

template <typename U, int BPW>
__global__ void __launch_bounds__(WARPS * 32)
residual_unpack(const U* __restrict__ recomp, long long n, long long nblocks,
                const unsigned char* __restrict__ widths, const u32* __restrict__ words,
                const u64* __restrict__ offsets, U* __restrict__ out) {
    constexpr int TILE_BLOCKS = WARPS * BPW;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long tile = blockIdx.x;
    const long long blk0 = tile * TILE_BLOCKS + (long long)warp * BPW;
    u32 wd[BPW];
    u32 total = 0;
#pragma unroll
    for (int b = 0; b < BPW; b += 32) {
        const u32 mine = (b + lane < BPW && blk0 + b + lane < nblocks) ? (u32)widths[blk0 + b + lane] : 0u;
#pragma unroll
        for (int bb = 0; bb < 32 && b + bb < BPW; ++bb) wd[b + bb] = __shfl_sync(FULL_MASK, mine, bb);
    }
#pragma unroll
    for (int b = 0; b < BPW; ++b) total += wd[b];
    u32 tile_total;
    const u32 off = warp_offsets(total, &tile_total);
    const u32* src = words + offsets[tile] + off;
    u32 r[BPW];
    const long long e0 = blk0 * 32 + lane;
    const U* pr = recomp + e0;
    U* po = out + e0;
    const bool full = (blk0 + BPW) * 32 <= n;  // uniform
    if (full) {
#pragma unroll
        for (int b = 0; b < BPW; ++b) r[b] = (u32)pr[b * 32];
    } else {
#pragma unroll
        for (int b = 0; b < BPW; ++b) r[b] = e0 + b * 32 < n ? (u32)pr[b * 32] : 0u;
    }
#pragma unroll
    for (int b = 0; b < BPW; ++b) {
        const u32 myword = ((u32)lane < wd[b]) ? src[lane] : 0u;
        u32 z = 0;
        for (u32 j = 0; j < wd[b]; ++j) {
            const u32 word = __shfl_sync(FULL_MASK, myword, j);
            z |= ((word >> lane) & 1u) << j;
        }
        src += wd[b];
        if (full || e0 + b * 32 < n) po[b * 32] = (U)key_of<U>(unzig_add<U>(z, key_of<U>(r[b])));
    }
}

// Exclusive prefix sums of n u32 counts into u64 offsets, and the total: one block of 1024
// threads, each summing a contiguous chunk (one launch, no host round trip).
__global__ void __launch_bounds__(1024)
exclusive_scan_u32(const u32* __restrict__ in, long long n, u64* __restrict__ out, u64* __restrict__ total) {
    __shared__ u64 warp_sums[32];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const long long chunk = (n + 1023) / 1024;
    const long long lo = min(n, (long long)t * chunk), hi = min(n, lo + chunk);
    u64 s = 0;
    for (long long i = lo; i < hi; ++i) s += in[i];
    u64 x = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        u64 w = warp_sums[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 y = __shfl_up_sync(FULL_MASK, w, o);
            if (lane >= o) w += y;
        }
        warp_sums[lane] = w;
    }
    __syncthreads();
    u64 pre = (warp ? warp_sums[warp - 1] : 0ull) + x - s;
    for (long long i = lo; i < hi; ++i) {
        out[i] = pre;
        pre += in[i];
    }
    if (t == 1023) *total = warp_sums[31];
}
