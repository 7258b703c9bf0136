// Runs seqkv/cuda/kernels/engine.cu on the CPU: every block's threads are real threads with a real
// barrier for __syncthreads, so the kernels' synchronization and arithmetic are exercised as
// written. Built with -ffp-contract=off: a*b+c is never fused, fmaf is the correctly rounded
// libm fma, __f*_rn are single IEEE operations — the semantics nvcc gives those intrinsics.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3e { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3e threadIdx;
inline dim3e blockIdx, blockDim, gridDim;
inline std::barrier<>* g_bar = nullptr;
inline std::vector<std::barrier<>*> g_warp_bar;  // one per warp: shuffles only wait for their warp
inline float* g_dynsmem = nullptr;
inline float g_shfl_f[1024];
inline int g_shfl_i[1024];

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
#define __syncthreads() g_bar->arrive_and_wait()
using std::min;

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
// full-warp shuffles: every lane of the calling thread's warp takes part (as the kernels ensure)
inline void warp_sync() { g_warp_bar[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    g_shfl_f[threadIdx.x] = v; warp_sync();
    float r = g_shfl_f[threadIdx.x ^ o]; warp_sync();
    return r;
}
inline int __shfl_xor_sync(unsigned, int v, int o) {
    g_shfl_i[threadIdx.x] = v; warp_sync();
    int r = g_shfl_i[threadIdx.x ^ o]; warp_sync();
    return r;
}

// Launch: blocks one after another, each block's threads concurrently.
inline void launch(dim3e grid, dim3e block, size_t dyn_smem_bytes, const std::function<void()>& body) {
    std::vector<float> dyn(dyn_smem_bytes / 4 + 1);
    g_dynsmem = dyn.data();
    gridDim = grid;
    blockDim = block;
    unsigned n = block.x * block.y * block.z;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            blockIdx = {bx, by, 1};
            std::barrier<> bar(n);
            g_bar = &bar;
            std::vector<std::unique_ptr<std::barrier<>>> wb;
            g_warp_bar.clear();
            for (unsigned w = 0; w * 32 < n; w++) {
                wb.emplace_back(new std::barrier<>(std::min(32u, n - w * 32)));
                g_warp_bar.push_back(wb.back().get());
            }
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < n; t++)
                ts.emplace_back([t, &body] { threadIdx = {t, 0, 0}; body(); });
            for (auto& th : ts) th.join();
        }
}
