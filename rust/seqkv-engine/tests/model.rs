//! Whole-model invariance on a small random Llama: every schedule, every batch
//! composition and every ISA gives the same logits and KV bits.

mod common;

use common::{bits, kv_bits, values};
use proptest::prelude::*;
use seqkv_engine::model::{Activation, RopeTable, Tensor};
use seqkv_engine::{Config, Isa, KvDtype, Logits, Model, Sequence, WeightDtype};
use std::collections::HashMap;

fn tiny(dtype: WeightDtype, kv: KvDtype, page_tokens: usize) -> Model {
    tiny_with(dtype, kv, page_tokens, false)
}

/// The tiny model; `gemma_like` adds every feature beyond Llama: q/k norms, norms of the
/// attention and MLP outputs, `1 + w` norm weights, scaled embeddings, GELU-tanh, a sliding
/// window of 5 positions on layer 0 with its own RoPE table, logit soft-capping.
fn tiny_with(dtype: WeightDtype, kv: KvDtype, page_tokens: usize, gemma_like: bool) -> Model {
    let (v, h, i, layers, nh, nkv, hd) =
        (97usize, 48usize, 80usize, 2usize, 4usize, 2usize, 16usize);
    let inv_freq = |theta: f32| -> Vec<f32> {
        (0..hd / 2)
            .map(|j| 1.0 / theta.powf(2.0 * j as f32 / hd as f32))
            .collect()
    };
    let mut cfg = Config::llama(v, h, i, layers, (nh, nkv, hd), 1e-5, inv_freq(10000.0));
    if gemma_like {
        cfg.hidden_act = Activation::GeluTanh;
        cfg.embed_scale = Some((h as f32).sqrt());
        cfg.norm_weight_offset = 1.0;
        cfg.layer_windows = vec![5, 0];
        cfg.extra_rope = vec![RopeTable {
            inv_freq: inv_freq(500.0),
            attention_scaling: 1.0,
        }];
        cfg.layer_rope = vec![1, 0];
        cfg.final_logit_softcap = Some(3.0);
    }
    let mut t: HashMap<String, Vec<f32>> = HashMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, n: usize, scale: f32, offset: f32| {
        seed += 1;
        t.insert(
            name,
            values(seed, n, scale)
                .into_iter()
                .map(|x| x + offset)
                .collect(),
        );
    };
    add("embed".into(), v * h, 1.0, 0.0);
    add("norm".into(), h, 0.1, 1.0);
    for l in 0..layers {
        add(format!("layers.{l}.input_norm"), h, 0.1, 1.0);
        add(format!("layers.{l}.post_norm"), h, 0.1, 1.0);
        add(format!("layers.{l}.q"), nh * hd * h, 0.3, 0.0);
        add(format!("layers.{l}.k"), nkv * hd * h, 0.3, 0.0);
        add(format!("layers.{l}.v"), nkv * hd * h, 0.3, 0.0);
        add(format!("layers.{l}.q_bias"), nh * hd, 0.1, 0.0);
        add(format!("layers.{l}.o"), h * nh * hd, 0.2, 0.0);
        add(format!("layers.{l}.gate"), i * h, 0.2, 0.0);
        add(format!("layers.{l}.up"), i * h, 0.2, 0.0);
        add(format!("layers.{l}.down"), h * i, 0.2, 0.0);
        if gemma_like {
            add(format!("layers.{l}.q_norm"), hd, 0.1, 0.0);
            add(format!("layers.{l}.k_norm"), hd, 0.1, 0.0);
            add(format!("layers.{l}.attn_out_norm"), h, 0.1, 0.0);
            add(format!("layers.{l}.mlp_out_norm"), h, 0.1, 0.0);
        }
    }
    let get = |name: &str| t.get(name).map(|v| Tensor::F32(v.as_slice()));
    Model::new(cfg, &get, dtype, kv, page_tokens).unwrap()
}

/// Runs `tokens` through a fresh sequence with the given chunk sizes; returns all logits.
fn run_chunks(m: &Model, isa: Isa, tokens: &[u32], chunks: &[usize]) -> (Vec<f32>, Sequence) {
    let mut s = m.new_sequence();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in chunks {
        let end = (at + c).min(tokens.len());
        out.extend(
            m.forward(isa, &mut [&mut s], &[&tokens[at..end]], Logits::All)
                .unwrap(),
        );
        at = end;
    }
    if at < tokens.len() {
        out.extend(
            m.forward(isa, &mut [&mut s], &[&tokens[at..]], Logits::All)
                .unwrap(),
        );
    }
    (out, s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn schedules_batches_and_isas_agree(
        tokens in prop::collection::vec(0u32..97, 1..80),
        other in prop::collection::vec(0u32..97, 1..50),
        chunks in prop::collection::vec(1usize..20, 1..10),
        bf in any::<bool>(),
        kvbf in any::<bool>(),
        page in 1usize..40,
        gemma_like in any::<bool>(),
    ) {
        let dtype = if bf { WeightDtype::Bf16 } else { WeightDtype::F32 };
        let kvd = if kvbf { KvDtype::Bf16 } else { KvDtype::F32 };
        let m = tiny_with(dtype, kvd, page, gemma_like);
        let isa = Isa::detect();
        let n = tokens.len();
        let v = m.config().vocab_size;
        // 1. one prefill
        let (ref_logits, ref_seq) = run_chunks(&m, isa, &tokens, &[n]);
        let ref_kv = kv_bits(&m, &ref_seq);
        // 2. random chunking
        let (l2, s2) = run_chunks(&m, isa, &tokens, &chunks);
        prop_assert_eq!(bits(&l2), bits(&ref_logits));
        prop_assert_eq!(kv_bits(&m, &s2), ref_kv.clone());
        // 3. single steps, batched beside another sequence that prefills and steps
        let mut a = m.new_sequence();
        let mut b = m.new_sequence();
        let mut got = Vec::new();
        let half = other.len() / 2;
        m.forward(isa, &mut [&mut b], &[&other[..half]], Logits::None).unwrap();
        for (j, &t) in tokens.iter().enumerate() {
            let o = other[(half + j) % other.len()];
            let l = m.forward(isa, &mut [&mut b, &mut a], &[&[o, o], &[t]], Logits::Last).unwrap();
            got.extend_from_slice(&l[v..2 * v]);
        }
        prop_assert_eq!(bits(&got), bits(&ref_logits));
        prop_assert_eq!(kv_bits(&m, &a), ref_kv.clone());
        // 4. the scalar reference path gives the same bits
        if isa != Isa::Scalar {
            let (l4, s4) = run_chunks(&m, Isa::Scalar, &tokens, &[n / 2 + 1]);
            prop_assert_eq!(bits(&l4), bits(&ref_logits));
            prop_assert_eq!(kv_bits(&m, &s4), ref_kv.clone());
        }
        // 5. a fork continues like the original
        let cut = n / 2;
        let mut f = ref_seq.fork(cut, m.kv_layout());
        let lf = m.forward(isa, &mut [&mut f], &[&tokens[cut..]], Logits::All).unwrap();
        prop_assert_eq!(bits(&lf), bits(&ref_logits[cut * v..]));
        prop_assert_eq!(kv_bits(&m, &f), ref_kv);
    }
}

#[test]
fn last_and_none_select_rows() {
    let m = tiny(WeightDtype::Bf16, KvDtype::F32, 16);
    let isa = Isa::detect();
    let toks: Vec<u32> = (0..30).map(|i| (i * 7 % 97) as u32).collect();
    let (all, _) = run_chunks(&m, isa, &toks, &[30]);
    let mut s = m.new_sequence();
    let last = m
        .forward(isa, &mut [&mut s], &[&toks], Logits::Last)
        .unwrap();
    assert_eq!(bits(&last), bits(&all[29 * 97..]));
    let mut s2 = m.new_sequence();
    assert!(m
        .forward(isa, &mut [&mut s2], &[&toks], Logits::None)
        .unwrap()
        .is_empty());
    assert_eq!(s2.len(), 30);
}

#[test]
fn internal_pieces_give_same_bits() {
    let mut m = tiny(WeightDtype::Bf16, KvDtype::Bf16, 8);
    let isa = Isa::detect();
    let toks: Vec<u32> = (0..50).map(|i| (i * 13 % 97) as u32).collect();
    let (all, s) = run_chunks(&m, isa, &toks, &[50]);
    let kv = kv_bits(&m, &s);
    m.max_rows = 7;
    let (all2, s2) = run_chunks(&m, isa, &toks, &[50]);
    assert_eq!(bits(&all), bits(&all2));
    assert_eq!(kv, kv_bits(&m, &s2));
}

#[test]
fn rejects_bad_input() {
    let m = tiny(WeightDtype::F32, KvDtype::F32, 8);
    let other = tiny(WeightDtype::F32, KvDtype::F32, 8);
    let mut s = m.new_sequence();
    assert!(m
        .forward(Isa::detect(), &mut [&mut s], &[&[97]], Logits::All)
        .is_err());
    let mut s2 = other.new_sequence();
    assert!(m
        .forward(Isa::detect(), &mut [&mut s2], &[&[1]], Logits::All)
        .is_err());
}

#[test]
fn packed_state_rebuilds_the_same_model() {
    for (dtype, gemma_like) in [
        (WeightDtype::Bf16, false),
        (WeightDtype::F32, false),
        (WeightDtype::Bf16, true),
    ] {
        let m = tiny_with(dtype, KvDtype::F32, 8, gemma_like);
        let state: HashMap<String, seqkv_engine::Stored<'_>> =
            m.packed_state().into_iter().collect();
        let get = |name: &str| state.get(name).copied();
        let back =
            Model::from_packed_state(m.config().clone(), &get, dtype, KvDtype::F32, 8).unwrap();
        let toks: Vec<u32> = (0..40).map(|i| (i * 11 % 97) as u32).collect();
        let (a, sa) = run_chunks(&m, Isa::detect(), &toks, &[40]);
        let (b, sb) = run_chunks(&back, Isa::detect(), &toks, &[40]);
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(kv_bits(&m, &sa), kv_bits(&back, &sb));
        // A missing array, a wrong length or the other dtype is refused.
        let st = &state;
        let without = |skip: &'static str| {
            move |name: &str| {
                if name == skip {
                    None
                } else {
                    st.get(name).copied()
                }
            }
        };
        assert!(Model::from_packed_state(
            m.config().clone(),
            &without("layers.1.wgu"),
            dtype,
            KvDtype::F32,
            8
        )
        .is_err());
        let other = if dtype == WeightDtype::Bf16 {
            WeightDtype::F32
        } else {
            WeightDtype::Bf16
        };
        assert!(
            Model::from_packed_state(m.config().clone(), &get, other, KvDtype::F32, 8).is_err()
        );
        let short = |name: &str| match (name, state.get(name).copied()) {
            ("norm", Some(seqkv_engine::Stored::F32(v))) => {
                Some(seqkv_engine::Stored::F32(&v[1..]))
            }
            (_, s) => s,
        };
        assert!(
            Model::from_packed_state(m.config().clone(), &short, dtype, KvDtype::F32, 8).is_err()
        );
    }
}

#[test]
fn sliding_window_and_features_change_results() {
    // Each feature is live: the gemma-like model differs from the plain one, and a window
    // only matters once a sequence is longer than it.
    let plain = tiny(WeightDtype::F32, KvDtype::F32, 8);
    let gem = tiny_with(WeightDtype::F32, KvDtype::F32, 8, true);
    let toks: Vec<u32> = (0..12).map(|i| (i * 5 % 97) as u32).collect();
    let (a, _) = run_chunks(&plain, Isa::detect(), &toks, &[12]);
    let (b, _) = run_chunks(&gem, Isa::detect(), &toks, &[12]);
    assert_ne!(bits(&a), bits(&b));
    assert!(
        b.iter().all(|x| x.abs() <= 3.0),
        "soft-capped logits stay within the cap"
    );
    let mut wide = gem.config().clone();
    wide.layer_windows = vec![100, 0];
    let with_cfg = |cfg: Config| {
        // Same weights under another config: rebuilt from the packed state.
        let state: HashMap<String, seqkv_engine::Stored<'_>> =
            gem.packed_state().into_iter().collect();
        let get = |name: &str| state.get(name).copied();
        let g = Model::from_packed_state(cfg, &get, WeightDtype::F32, KvDtype::F32, 8).unwrap();
        run_chunks(&g, Isa::detect(), &toks, &[12]).0
    };
    let c = with_cfg(wide);
    let v = gem.config().vocab_size;
    assert_eq!(
        bits(&b[..5 * v]),
        bits(&c[..5 * v]),
        "positions inside the window agree"
    );
    assert_ne!(
        bits(&b[5 * v..]),
        bits(&c[5 * v..]),
        "later positions see fewer keys"
    );
}
