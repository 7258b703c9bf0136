// Drives the emulated kernels like seqkv.engine.GpuEngine._layers does, on arrays written by
// tests/test_engine.py; writes the logits of each pass and the KV buffer.
#include "cuda_emu.h"
#include "engine_emu.cu"
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

template <class T> std::vector<T> load(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    size_t n = f.tellg();
    std::vector<T> v(n / sizeof(T));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), n);
    return v;
}
template <class T> void save(const std::string& path, const std::vector<T>& v) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <int BM, int BN, int BK, int TM, int TN>
void gemm(const float* x, const u16* w, float* y, int M, int K, int N, int mode) {
    dim3e grid{(unsigned)((N + BN - 1) / BN), (unsigned)((M + BM - 1) / BM), 1};
    dim3e block{(unsigned)((BN / TN) * (BM / TM)), 1, 1};
    int vec = (K % 4 == 0 && N % 8 == 0) ? 1 : 0;
    size_t smem = 4 * 2 * BK * (BM + 4 + BN);
    if (mode == 2) {
        if constexpr (TN % 4 == 0) launch(grid, block, smem, [&] { eng_gemm<BM, BN, BK, TM, TN, 2>(x, w, y, M, N, K, vec); });
        else { std::fprintf(stderr, "driver: the SiLU epilogue needs TN %% 4 == 0\n"); std::exit(2); }
    } else if (mode == 1) launch(grid, block, smem, [&] { eng_gemm<BM, BN, BK, TM, TN, 1>(x, w, y, M, N, K, vec); });
    else launch(grid, block, smem, [&] { eng_gemm<BM, BN, BK, TM, TN, 0>(x, w, y, M, N, K, vec); });
}
// three of the GPU engine's tile shapes (any shape gives the same bits; all are exercised, the
// 16x72 one with its warp-aligned thread order and partial column tiles)
void gemm_any(const float* x, const u16* w, float* y, int M, int K, int N, int mode) {
    if (N >= 2048) gemm<64, 64, 16, 8, 8>(x, w, y, M, K, N, mode);
    else if (mode == 2) gemm<32, 32, 16, 2, 4>(x, w, y, M, K, N, mode);
    else gemm<16, 72, 16, 2, 2>(x, w, y, M, K, N, mode);
}

int main(int argc, char** argv) {
    std::string d = argv[1];
    auto cfg = load<int32_t>(d + "/config.i32");  // V H I L nh nkv hd max_len slots
    int V = cfg[0], H = cfg[1], I = cfg[2], L = cfg[3], nh = cfg[4], nkv = cfg[5], hd = cfg[6], max_len = cfg[7], slots = cfg[8];
    auto fl = load<float>(d + "/scalars.f32");  // eps scale
    float eps = fl[0], scale = fl[1];
    auto embed = load<u16>(d + "/embed.u16");
    auto lm = load<u16>(d + "/lm_head.u16");
    auto norm = load<float>(d + "/norm.f32");
    auto cosv = load<float>(d + "/cos.f32");
    auto sinv = load<float>(d + "/sin.f32");
    std::vector<std::vector<float>> in_norm(L), post_norm(L);
    std::vector<std::vector<u16>> qkv_w(L), o_w(L), gu_w(L), down_w(L);
    for (int l = 0; l < L; l++) {
        std::string p = d + "/layers." + std::to_string(l) + ".";
        in_norm[l] = load<float>(p + "in_norm.f32");
        post_norm[l] = load<float>(p + "post_norm.f32");
        qkv_w[l] = load<u16>(p + "qkv.u16");
        o_w[l] = load<u16>(p + "o.u16");
        gu_w[l] = load<u16>(p + "gu.u16");
        down_w[l] = load<u16>(p + "down.u16");
    }
    std::vector<float> kv((size_t)slots * L * 2 * max_len * nkv * hd, 0.0f);
    auto passes = load<int32_t>(d + "/passes.i32");  // [R, (slot, pos, token) * R] ...
    int W = (nh + 2 * nkv) * hd;
    int G = nh / nkv;
    size_t att_smem = 4 * (size_t)att_smem_floats(G, hd, max_len);
    size_t at = 0;
    int pass = 0;
    while (at < passes.size()) {
        int R = passes[at++];
        std::vector<int> slot(R), pos(R);
        std::vector<unsigned> tok(R);
        for (int r = 0; r < R; r++) { slot[r] = passes[at++]; pos[r] = passes[at++]; tok[r] = passes[at++]; }
        std::vector<float> x((size_t)R * H), xn((size_t)R * H), qkv((size_t)R * W), att((size_t)R * nh * hd),
            act((size_t)R * I), logits((size_t)R * V);
        launch({(unsigned)R, 1, 1}, {128, 1, 1}, 0, [&] { eng_embed(tok.data(), embed.data(), x.data(), R, H); });
        for (int l = 0; l < L; l++) {
            launch({(unsigned)R, 1, 1}, {128, 1, 1}, 8 * (size_t)H, [&] { eng_rmsnorm(x.data(), nullptr, in_norm[l].data(), eps, xn.data(), H); });
            gemm_any(xn.data(), qkv_w[l].data(), qkv.data(), R, H, W, 0);
            launch({(unsigned)R, 1, 1}, {128, 1, 1}, 0, [&] {
                eng_rope_kv(qkv.data(), cosv.data(), sinv.data(), slot.data(), pos.data(), kv.data(), l, L, max_len, nh, nkv, hd);
            });
            launch({(unsigned)(R * nkv), 1, 1}, {128, 1, 1}, att_smem, [&] {
                if (G == 2 && hd == 16) eng_attention<2, 16>(qkv.data(), kv.data(), slot.data(), pos.data(), att.data(), l, L, max_len, nh, nkv, scale);
                else { std::fprintf(stderr, "driver: attention <%d, %d> not instantiated\n", G, hd); std::exit(2); }
            });
            gemm_any(att.data(), o_w[l].data(), x.data(), R, nh * hd, H, 1);
            launch({(unsigned)R, 1, 1}, {128, 1, 1}, 8 * (size_t)H, [&] { eng_rmsnorm(x.data(), nullptr, post_norm[l].data(), eps, xn.data(), H); });
            gemm_any(xn.data(), gu_w[l].data(), act.data(), R, H, 2 * I, 2);  // SiLU gate in the epilogue
            gemm_any(act.data(), down_w[l].data(), x.data(), R, I, H, 1);
        }
        launch({(unsigned)R, 1, 1}, {128, 1, 1}, 8 * (size_t)H, [&] { eng_rmsnorm(x.data(), nullptr, norm.data(), eps, xn.data(), H); });
        gemm_any(xn.data(), lm.data(), logits.data(), R, H, V, 0);
        save(d + "/logits_" + std::to_string(pass) + ".f32", logits);
        // greedy helper kernels: argmax must pick the lowest index of the maximum
        std::vector<unsigned> am(R);
        launch({(unsigned)R, 1, 1}, {256, 1, 1}, 0, [&] { eng_argmax(logits.data(), V, am.data()); });
        save(d + "/argmax_" + std::to_string(pass) + ".u32", am);
        pass++;
    }
    save(d + "/kv.f32", kv);
    return 0;
}
