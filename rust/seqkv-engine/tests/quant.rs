//! GGUF block weights: a matrix or model on Q4_0 / Q4_1 / Q8_0 blocks gives exactly the bits of
//! the f32 engine on the de-quantized weights, for every row split, schedule and ISA.

mod common;

use common::{bits, isas, kv_bits, values};
use proptest::prelude::*;
use seqkv_engine::model::Tensor;
use seqkv_engine::quant::{dequantize, quantize};
use seqkv_engine::{
    matmul, BlockType, Config, Isa, KvDtype, Logits, Model, PackedMatrix, Stored, WeightDtype,
};
use std::collections::HashMap;

fn block_type(i: usize) -> BlockType {
    BlockType::ALL[i % 3]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every row of a block product, computed in any batch and with any ISA, is the f32
    /// product on the de-quantized weights, bit for bit.
    #[test]
    fn block_matmul_is_the_f32_matmul(kb in 1usize..40, n in 1usize..70, rows in 1usize..30,
                                      seed in any::<u64>(), bt in 0usize..3) {
        let (bt, k) = (block_type(bt), kb * 32);
        let raw = quantize(bt, &values(seed, n * k, 0.7), n, k);
        let wq = PackedMatrix::from_blocks(bt, &raw, n, k).unwrap();
        let wf = PackedMatrix::from_nk(&dequantize(bt, &raw, n, k), n, k, WeightDtype::F32);
        let x = values(seed ^ 3, rows * k, 2.0);
        let mut want = vec![0f32; rows * n];
        matmul(Isa::Scalar, &x, rows, &wf, &mut want);
        for isa in isas() {
            let mut all = vec![0f32; rows * n];
            matmul(isa, &x, rows, &wq, &mut all);
            prop_assert_eq!(bits(&all), bits(&want), "{:?} {:?}", bt, isa);
            for r in [0, rows / 2, rows - 1] {
                let mut one = vec![0f32; n];
                matmul(isa, &x[r * k..(r + 1) * k], 1, &wq, &mut one);
                prop_assert_eq!(bits(&one), bits(&want[r * n..(r + 1) * n]));
            }
            let (a, b) = (rows / 3, rows.min(rows / 3 + 4));
            let mut sub = vec![0f32; (b - a) * n];
            matmul(isa, &x[a * k..b * k], b - a, &wq, &mut sub);
            prop_assert_eq!(bits(&sub), bits(&want[a * n..b * n]));
        }
        // the stored weights read back as the de-quantized values, and the tiles round-trip
        for c in [0, n - 1] {
            prop_assert_eq!(wq.get(k - 1, c).to_bits(), wf.get(k - 1, c).to_bits());
        }
        let back = PackedMatrix::from_packed(k, n, wq.packed()).unwrap();
        prop_assert_eq!(back.dtype(), WeightDtype::Blocks(bt));
    }
}

/// `(rows, K, values)` of each named tensor.
type Tensors = HashMap<String, (usize, usize, Vec<f32>)>;

/// A Llama-shaped model whose matrices and embedding are `[rows][K]` f32 values.
fn tensors() -> (Config, Tensors) {
    let (v, h, i, layers, nh, nkv, hd) =
        (97usize, 64usize, 96usize, 2usize, 4usize, 2usize, 16usize);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|j| 1.0 / 10000f32.powf(2.0 * j as f32 / hd as f32))
        .collect();
    let cfg = Config::llama(v, h, i, layers, (nh, nkv, hd), 1e-5, inv);
    let mut t = HashMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, rows: usize, k: usize, scale: f32, offset: f32| {
        seed += 1;
        let vals = values(seed, rows * k, scale)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        t.insert(name, (rows, k, vals));
    };
    add("embed".into(), v, h, 1.0, 0.0);
    add("norm".into(), 1, h, 0.1, 1.0);
    for l in 0..layers {
        add(format!("layers.{l}.input_norm"), 1, h, 0.1, 1.0);
        add(format!("layers.{l}.post_norm"), 1, h, 0.1, 1.0);
        add(format!("layers.{l}.q"), nh * hd, h, 0.3, 0.0);
        add(format!("layers.{l}.k"), nkv * hd, h, 0.3, 0.0);
        add(format!("layers.{l}.v"), nkv * hd, h, 0.3, 0.0);
        add(format!("layers.{l}.o"), h, nh * hd, 0.2, 0.0);
        add(format!("layers.{l}.gate"), i, h, 0.2, 0.0);
        add(format!("layers.{l}.up"), i, h, 0.2, 0.0);
        add(format!("layers.{l}.down"), h, i, 0.2, 0.0);
    }
    (cfg, t)
}

/// The block model (each matrix in a block type picked by `pick`, norms f32) and the f32
/// model on its de-quantized weights.
fn models(pick: impl Fn(usize) -> BlockType) -> (Model, Model) {
    let (cfg, t) = tensors();
    let mut raw: HashMap<String, (BlockType, Vec<u8>)> = HashMap::new();
    let mut deq: HashMap<String, Vec<f32>> = HashMap::new();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    for (j, name) in names.into_iter().enumerate() {
        let (rows, k, v) = &t[name];
        if name.ends_with("norm") {
            deq.insert(name.clone(), v.clone());
            continue;
        }
        let bt = pick(j);
        let r = quantize(bt, v, *rows, *k);
        deq.insert(name.clone(), dequantize(bt, &r, *rows, *k));
        raw.insert(name.clone(), (bt, r));
    }
    let get_q = |name: &str| match raw.get(name) {
        Some((bt, r)) => Some(Tensor::Blocks(*bt, r.as_slice())),
        None => deq.get(name).map(|v| Tensor::F32(v.as_slice())),
    };
    let get_f = |name: &str| deq.get(name).map(|v| Tensor::F32(v.as_slice()));
    let q = Model::new(
        cfg.clone(),
        &get_q,
        WeightDtype::Blocks(BlockType::Q4_1),
        KvDtype::F32,
        8,
    )
    .unwrap();
    let f = Model::new(cfg, &get_f, WeightDtype::F32, KvDtype::F32, 8).unwrap();
    (q, f)
}

fn run(m: &Model, isa: Isa, tokens: &[u32], chunk: usize) -> (Vec<u32>, Vec<u32>) {
    let mut s = m.new_sequence();
    let mut out = Vec::new();
    for c in tokens.chunks(chunk) {
        out.extend(m.forward(isa, &mut [&mut s], &[c], Logits::All).unwrap());
    }
    (bits(&out), kv_bits(m, &s))
}

#[test]
fn block_model_is_the_f32_model_of_its_weights() {
    let toks: Vec<u32> = (0..45).map(|i| (i * 29 % 97) as u32).collect();
    for (label, pick) in [
        ("q4_0", (|_| BlockType::Q4_0) as fn(usize) -> BlockType),
        ("q4_1", |_| BlockType::Q4_1),
        ("q8_0", |_| BlockType::Q8_0),
        ("mixed", block_type),
    ] {
        let (q, f) = models(pick);
        let want = run(&f, Isa::Scalar, &toks, 45);
        for isa in isas() {
            for chunk in [45, 7, 1] {
                assert_eq!(
                    run(&q, isa, &toks, chunk),
                    want,
                    "{label} {isa:?} chunk {chunk}"
                );
            }
        }
        // a batch of two sequences, one decoding, one prefilling
        let mut a = q.new_sequence();
        let mut b = q.new_sequence();
        q.forward(Isa::detect(), &mut [&mut a], &[&toks[..20]], Logits::None)
            .unwrap();
        let rows = q
            .forward(
                Isa::detect(),
                &mut [&mut b, &mut a],
                &[&toks[..9], &toks[20..21]],
                Logits::Last,
            )
            .unwrap();
        let v = q.config().vocab_size;
        assert_eq!(
            bits(&rows[v..]),
            want.0[20 * v..21 * v].to_vec(),
            "{label} batched"
        );
        // the packed state rebuilds the same block model
        let state: HashMap<String, Stored<'_>> = q.packed_state().into_iter().collect();
        let get = |name: &str| state.get(name).copied();
        let back =
            Model::from_packed_state(q.config().clone(), &get, q.dtype(), KvDtype::F32, 8).unwrap();
        assert_eq!(
            run(&back, Isa::detect(), &toks, 10),
            want,
            "{label} packed state"
        );
        assert_eq!(back.weight_formats(), q.weight_formats());
        assert!(q.step_weight_bytes() < f.step_weight_bytes());
    }
}

#[test]
fn blocks_of_the_wrong_size_are_refused() {
    let (cfg, t) = tensors();
    let (rows, k, v) = &t["layers.0.q"];
    let raw = quantize(BlockType::Q4_1, v, *rows, *k);
    let get = |name: &str| {
        if name == "layers.0.q" {
            Some(Tensor::Blocks(BlockType::Q8_0, raw.as_slice()))
        } else {
            t.get(name).map(|(_, _, v)| Tensor::F32(v.as_slice()))
        }
    };
    let err = Model::new(
        cfg,
        &get,
        WeightDtype::Blocks(BlockType::Q4_1),
        KvDtype::F32,
        8,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("layers.0.q"), "{err}");
}
