//! A Llama-family decoder whose per-token results do not depend on batching.
//!
//! Every operation is row-local (matmul, RMSNorm, RoPE, SiLU, residual adds)
//! or, for attention, reads only the query's own sequence's stored keys and
//! values `0..=pos` in a fixed order. So a token's hidden states, its KV and
//! its logits are the same bits whether it is computed in one prefill, in any
//! chunking of it, in single steps, alone or beside other sequences.

use crate::bf16::{bf16_to_f32, f32_to_bf16};
use crate::isa::Isa;
use crate::kv::{KvDtype, KvLayout, Sequence};
use crate::math::{self, sincos};
use crate::matmul::{matmul, PackedMatrix, Stored, WeightDtype};
use crate::ops::{self, KvView};
use crate::quant::{self, BlockType, QBlock, QK};
use crate::EngineError;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Architecture of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    /// RoPE inverse frequencies, `head_dim / 2` values (Hugging Face `rotary_emb.inv_freq`).
    pub rope_inv_freq: Vec<f32>,
    /// Factor applied to cos and sin (`rotary_emb.attention_scaling`, 1 for plain RoPE).
    pub rope_attention_scaling: f32,
    /// Scale of attention scores (`head_dim ** -0.5` for Llama).
    pub attention_scale: f32,
    /// What gates the MLP's up projection.
    pub hidden_act: Activation,
    /// Factor on every embedding value (Gemma: `f32(sqrt(hidden_size))`); `None` for none.
    pub embed_scale: Option<f32>,
    /// Added to every stored norm weight (Gemma stores `w` and scales by `1 + w`; 0 = none).
    pub norm_weight_offset: f32,
    /// Per layer, its attention window: a query at position `p` reads keys
    /// `p + 1 - w ..= p` (0 = every key). Empty: every layer reads every key.
    pub layer_windows: Vec<usize>,
    /// RoPE tables after the first (`rope_inv_freq`, `rope_attention_scaling`).
    pub extra_rope: Vec<RopeTable>,
    /// Per layer, the index of its RoPE table (0 = the first). Empty: every layer uses 0.
    pub layer_rope: Vec<usize>,
    /// `logit = tanh(logit / c) * c` on the final logits when set (Gemma's soft-capping).
    pub final_logit_softcap: Option<f32>,
}

/// The activation of the MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `g / (1 + exp(-g))` (Llama, Qwen, Mistral).
    Silu,
    /// [`crate::math::gelu_tanh`] (Gemma).
    GeluTanh,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "silu" => Some(Activation::Silu),
            "gelu_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }
}

/// One RoPE table: inverse frequencies (`head_dim / 2`) and the factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

impl Config {
    /// A Llama config (SiLU, no scaling, one RoPE table, every key attended, no soft-capping).
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        (num_heads, num_kv_heads, head_dim): (usize, usize, usize),
        rms_norm_eps: f32,
        rope_inv_freq: Vec<f32>,
    ) -> Config {
        Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_inv_freq,
            rope_attention_scaling: 1.0,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            hidden_act: Activation::Silu,
            embed_scale: None,
            norm_weight_offset: 0.0,
            layer_windows: Vec::new(),
            extra_rope: Vec::new(),
            layer_rope: Vec::new(),
            final_logit_softcap: None,
        }
    }

    /// The attention window of layer `l` (0 = every key).
    pub fn window(&self, l: usize) -> usize {
        self.layer_windows.get(l).copied().unwrap_or(0)
    }

    /// The RoPE table of layer `l`.
    pub fn rope_index(&self, l: usize) -> usize {
        self.layer_rope.get(l).copied().unwrap_or(0)
    }
}

impl Config {
    fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: &str| Err(EngineError::InvalidInput(m.to_string()));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_layers == 0
        {
            return bad("config: sizes must be positive");
        }
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0
        {
            return bad("config: num_heads must be a positive multiple of num_kv_heads");
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad("config: head_dim must be even");
        }
        if self.rope_inv_freq.len() != self.head_dim / 2
            || self
                .extra_rope
                .iter()
                .any(|t| t.inv_freq.len() != self.head_dim / 2)
        {
            return bad("config: every RoPE table must have head_dim / 2 values");
        }
        for (what, len) in [
            ("layer_windows", self.layer_windows.len()),
            ("layer_rope", self.layer_rope.len()),
        ] {
            if len != 0 && len != self.num_layers {
                return Err(EngineError::InvalidInput(format!(
                    "config: {what} must be empty or have one value per layer"
                )));
            }
        }
        if self.layer_rope.iter().any(|&t| t > self.extra_rope.len()) {
            return bad("config: layer_rope names a RoPE table that does not exist");
        }
        if self
            .final_logit_softcap
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return bad("config: final_logit_softcap must be positive and finite");
        }
        if self.embed_scale.is_some_and(|c| !c.is_finite()) {
            return bad("config: embed_scale must be finite");
        }
        Ok(())
    }
}

struct Layer {
    input_norm: Vec<f32>,
    wqkv: PackedMatrix,
    bqkv: Option<Vec<f32>>,
    /// RMSNorm of every query / key head before RoPE (Qwen3, Gemma 3), `[head_dim]` each.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: PackedMatrix,
    bo: Option<Vec<f32>>,
    /// RMSNorm of the attention output before the residual add (Gemma).
    attn_out_norm: Option<Vec<f32>>,
    post_norm: Vec<f32>,
    /// RMSNorm of the MLP output before the residual add (Gemma).
    mlp_out_norm: Option<Vec<f32>>,
    /// gate and up fused: columns `[0, I)` gate, `[I, 2I)` up.
    wgu: PackedMatrix,
    bgu: Option<Vec<f32>>,
    wdown: PackedMatrix,
    bdown: Option<Vec<f32>>,
}

/// A tensor handed to [`Model::new`]: f32 values, or GGUF blocks (`[rows][K / 32]` raw blocks).
#[derive(Clone, Copy, Debug)]
pub enum Tensor<'a> {
    F32(&'a [f32]),
    Blocks(BlockType, &'a [u8]),
}

enum Table {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// Raw GGUF rows, de-quantized one row at a time on lookup.
    Blocks(BlockType, Vec<u8>),
}

impl Table {
    fn stored(&self) -> Stored<'_> {
        match self {
            Table::F32(v) => Stored::F32(v),
            Table::Bf16(v) => Stored::Bf16(v),
            Table::Blocks(_, v) => Stored::Blocks(v),
        }
    }

    fn format(&self) -> WeightDtype {
        match self {
            Table::F32(_) => WeightDtype::F32,
            Table::Bf16(_) => WeightDtype::Bf16,
            Table::Blocks(bt, _) => WeightDtype::Blocks(*bt),
        }
    }

    /// Bytes of one row of `h` values.
    fn row_bytes(&self, h: usize) -> usize {
        match self {
            Table::F32(_) => 4 * h,
            Table::Bf16(_) => 2 * h,
            Table::Blocks(bt, _) => h / QK * bt.raw_bytes(),
        }
    }

    /// Row `r` (of `h` values) as f32.
    fn row(&self, r: usize, h: usize, dst: &mut [f32]) {
        match self {
            Table::F32(v) => dst.copy_from_slice(&v[r * h..(r + 1) * h]),
            Table::Bf16(v) => {
                for (d, &b) in dst.iter_mut().zip(&v[r * h..(r + 1) * h]) {
                    *d = bf16_to_f32(b);
                }
            }
            Table::Blocks(bt, v) => {
                let rb = self.row_bytes(h);
                for (o, raw) in dst
                    .chunks_mut(QK)
                    .zip(v[r * rb..(r + 1) * rb].chunks(bt.raw_bytes()))
                {
                    QBlock::from_raw(*bt, raw).values(*bt, o);
                }
            }
        }
    }
}

/// The arrays of a built model as [`Model::packed_state`] lists them, and the matching
/// [`Model::from_packed_state`]. Bump when the names, the packing or what is rounded change.
pub const PACKED_STATE_VERSION: u32 = 2;

/// Which rows' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every input token's next-token logits.
    All,
    /// Only the last token of each sequence.
    Last,
    /// No logits (KV only).
    None,
}

/// The weights, in the engine's layout; immutable and shared between threads.
pub struct Model {
    id: u64,
    cfg: Config,
    dtype: WeightDtype,
    kv: KvLayout,
    embed: Table,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: PackedMatrix,
    /// Largest number of rows one internal pass computes (memory bound; no effect on results).
    pub max_rows: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Row pointers shared with worker threads; every task touches disjoint rows.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: a `SyncPtr` hands one buffer of `forward` to its rayon tasks, which finish before the
// buffer is used again or dropped; each task writes only its own rows.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as for `Send`: tasks sharing it write disjoint rows.
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

struct PagePtrs(Vec<Vec<(*const u8, *const u8)>>);
// SAFETY: the pointers address KV pages of the batch's sequences, which `forward` borrows
// mutably for the whole step and does not write while the attention tasks read them.
unsafe impl Send for PagePtrs {}
// SAFETY: as for `Send`: the tasks only read through the pointers.
unsafe impl Sync for PagePtrs {}

/// The checks both [`Model`] constructors start with, and the KV layout they give the model.
fn checked_kv_layout(
    cfg: &Config,
    kv_dtype: KvDtype,
    page_tokens: usize,
) -> Result<KvLayout, EngineError> {
    cfg.validate()?;
    if page_tokens == 0 {
        return Err(EngineError::InvalidInput(
            "page_tokens must be positive".into(),
        ));
    }
    Ok(KvLayout {
        layers: cfg.num_layers,
        kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        page_tokens,
        dtype: kv_dtype,
    })
}

impl Model {
    /// Builds a model from named tensors (row-major f32, or GGUF blocks for the matrices and
    /// `embed`). f32 values are rounded to `dtype` (kept exact unless it is bf16). Blocks are
    /// kept as blocks when `dtype` is a block type (any of them: a GGUF mixes types), else
    /// de-quantized exactly and stored as f32 values are.
    ///
    /// Names: `embed` `[V, H]`, `lm_head` `[V, H]` (absent = tied to `embed`), `norm` `[H]`,
    /// and per layer `layers.{i}.` + `input_norm` `[H]`, `q` `[nh*hd, H]`, `k`, `v` `[nkv*hd, H]`,
    /// `o` `[H, nh*hd]`, `post_norm` `[H]`, `gate`, `up` `[I, H]`, `down` `[H, I]`, and
    /// optional biases `q_bias`, `k_bias`, `v_bias`, `o_bias`, `gate_bias`, `up_bias`, `down_bias`.
    pub fn new<'a>(
        cfg: Config,
        get: &(dyn Fn(&str) -> Option<Tensor<'a>> + Sync),
        dtype: WeightDtype,
        kv_dtype: KvDtype,
        page_tokens: usize,
    ) -> Result<Model, EngineError> {
        let kv = checked_kv_layout(&cfg, kv_dtype, page_tokens)?;
        let (h, i_sz, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let keep_blocks = matches!(dtype, WeightDtype::Blocks(_));
        let float = dtype.float_storage();
        let tensor = |name: &str| {
            get(name).ok_or_else(|| EngineError::InvalidInput(format!("missing tensor {name}")))
        };
        let fetch = |name: &str, len: usize| -> Result<&'a [f32], EngineError> {
            let t = match tensor(name)? {
                Tensor::F32(t) => t,
                Tensor::Blocks(bt, _) => {
                    return Err(EngineError::InvalidInput(format!(
                        "tensor {name} must be f32 values, not {} blocks",
                        bt.name()
                    )))
                }
            };
            if t.len() != len {
                return Err(EngineError::InvalidInput(format!(
                    "tensor {name} has {} values, expected {len}",
                    t.len()
                )));
            }
            Ok(t)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, EngineError> {
            Ok(fetch(name, len)?.iter().map(|&x| dtype.round(x)).collect())
        };
        let opt_vector = |name: &str, len: usize| -> Result<Option<Vec<f32>>, EngineError> {
            match get(name) {
                None => Ok(None),
                Some(_) => vector(name, len).map(Some),
            }
        };
        // Norm weights: rounded like every weight, then the offset added in f32 (`1 + w` for
        // Gemma, as its RMSNorm computes it; no addition at all for offset 0).
        let offset = cfg.norm_weight_offset;
        let with_offset = |mut v: Vec<f32>| {
            if offset != 0.0 {
                v.iter_mut().for_each(|x| *x += offset);
            }
            v
        };
        let norm = |name: &str, len: usize| vector(name, len).map(with_offset);
        let opt_norm = |name: &str, len: usize| opt_vector(name, len).map(|o| o.map(with_offset));
        let blocks_err =
            |name: &str, e: String| EngineError::InvalidInput(format!("tensor {name}: {e}"));
        let mat = |name: &str, n: usize, k: usize| -> Result<PackedMatrix, EngineError> {
            match tensor(name)? {
                Tensor::Blocks(bt, raw) if keep_blocks => {
                    PackedMatrix::from_blocks(bt, raw, n, k).map_err(|e| blocks_err(name, e))
                }
                Tensor::Blocks(bt, raw) => {
                    let w = dequantize(bt, raw, n, k).map_err(|e| blocks_err(name, e))?;
                    Ok(PackedMatrix::from_nk(&w, n, k, float))
                }
                Tensor::F32(_) => Ok(PackedMatrix::from_nk(fetch(name, n * k)?, n, k, float)),
            }
        };
        let cat_bias = |parts: &[Option<Vec<f32>>], lens: &[usize]| -> Option<Vec<f32>> {
            if parts.iter().all(|p| p.is_none()) {
                return None;
            }
            let mut out = Vec::new();
            for (p, &l) in parts.iter().zip(lens) {
                match p {
                    Some(v) => out.extend_from_slice(v),
                    None => out.extend(std::iter::repeat_n(0.0, l)),
                }
            }
            Some(out)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |s: &str| format!("layers.{l}.{s}");
            let (q, k, v) = (
                mat(&p("q"), nq, h)?,
                mat(&p("k"), nkv, h)?,
                mat(&p("v"), nkv, h)?,
            );
            let wqkv = PackedMatrix::concat_n(&[&q, &k, &v]);
            drop((q, k, v));
            let bqkv = cat_bias(
                &[
                    opt_vector(&p("q_bias"), nq)?,
                    opt_vector(&p("k_bias"), nkv)?,
                    opt_vector(&p("v_bias"), nkv)?,
                ],
                &[nq, nkv, nkv],
            );
            let (g, u) = (mat(&p("gate"), i_sz, h)?, mat(&p("up"), i_sz, h)?);
            let wgu = PackedMatrix::concat_n(&[&g, &u]);
            drop((g, u));
            let bgu = cat_bias(
                &[
                    opt_vector(&p("gate_bias"), i_sz)?,
                    opt_vector(&p("up_bias"), i_sz)?,
                ],
                &[i_sz, i_sz],
            );
            layers.push(Layer {
                input_norm: norm(&p("input_norm"), h)?,
                wqkv,
                bqkv,
                q_norm: opt_norm(&p("q_norm"), hd)?,
                k_norm: opt_norm(&p("k_norm"), hd)?,
                wo: mat(&p("o"), h, nq)?,
                bo: opt_vector(&p("o_bias"), h)?,
                attn_out_norm: opt_norm(&p("attn_out_norm"), h)?,
                post_norm: norm(&p("post_norm"), h)?,
                mlp_out_norm: opt_norm(&p("mlp_out_norm"), h)?,
                wgu,
                bgu,
                wdown: mat(&p("down"), h, i_sz)?,
                bdown: opt_vector(&p("down_bias"), h)?,
            });
        }
        let v = cfg.vocab_size;
        let (embed, lm_head) = match tensor("embed")? {
            Tensor::Blocks(bt, raw) if keep_blocks => {
                let tied = match get("lm_head") {
                    Some(_) => None,
                    None => Some(
                        PackedMatrix::from_blocks(bt, raw, v, h)
                            .map_err(|e| blocks_err("embed", e))?,
                    ),
                };
                (Table::Blocks(bt, raw.to_vec()), tied)
            }
            t => {
                let owned;
                let embed_f: &[f32] = match t {
                    Tensor::F32(_) => fetch("embed", v * h)?,
                    Tensor::Blocks(bt, raw) => {
                        owned = dequantize(bt, raw, v, h).map_err(|e| blocks_err("embed", e))?;
                        &owned
                    }
                };
                let table = match float {
                    WeightDtype::Bf16 => {
                        Table::Bf16(embed_f.par_iter().map(|&x| f32_to_bf16(x)).collect())
                    }
                    _ => Table::F32(embed_f.to_vec()),
                };
                let tied = match get("lm_head") {
                    Some(_) => None,
                    None => Some(PackedMatrix::from_nk(embed_f, v, h, float)),
                };
                (table, tied)
            }
        };
        let lm_head = match lm_head {
            Some(m) => m,
            None => mat("lm_head", v, h)?,
        };
        let final_norm = norm("norm", h)?;
        Ok(Model::assemble(
            cfg, dtype, kv, embed, layers, final_norm, lm_head,
        ))
    }

    /// Every array of the built model as stored (weights packed and rounded to the model's
    /// dtype; norms and biases f32), by name: `embed`, `lm_head`, `norm` and per layer
    /// `layers.{i}.` + `input_norm`, `wqkv`, `bqkv`, `q_norm`, `k_norm`, `wo`, `bo`,
    /// `attn_out_norm`, `post_norm`, `wgu`, `bgu`, `wdown`, `bdown`, `mlp_out_norm` (optional
    /// ones only where present; norms with their offset added). [`Model::from_packed_state`] rebuilds the
    /// same model from them without rounding or packing again.
    pub fn packed_state(&self) -> Vec<(String, Stored<'_>)> {
        let mut out = vec![
            ("embed".to_string(), self.embed.stored()),
            ("lm_head".to_string(), self.lm_head.packed()),
            ("norm".to_string(), Stored::F32(&self.final_norm)),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("layers.{i}.{s}");
            out.push((p("input_norm"), Stored::F32(&l.input_norm)));
            out.push((p("post_norm"), Stored::F32(&l.post_norm)));
            for (name, m) in [
                ("wqkv", &l.wqkv),
                ("wo", &l.wo),
                ("wgu", &l.wgu),
                ("wdown", &l.wdown),
            ] {
                out.push((p(name), m.packed()));
            }
            for (name, b) in [
                ("bqkv", &l.bqkv),
                ("bo", &l.bo),
                ("bgu", &l.bgu),
                ("bdown", &l.bdown),
                ("q_norm", &l.q_norm),
                ("k_norm", &l.k_norm),
                ("attn_out_norm", &l.attn_out_norm),
                ("mlp_out_norm", &l.mlp_out_norm),
            ] {
                if let Some(b) = b {
                    out.push((p(name), Stored::F32(b)));
                }
            }
        }
        out
    }

    /// Rebuilds a model from the arrays [`Model::packed_state`] listed for the same config and
    /// dtype (every length and storage type is checked).
    pub fn from_packed_state<'a>(
        cfg: Config,
        get: &dyn Fn(&str) -> Option<Stored<'a>>,
        dtype: WeightDtype,
        kv_dtype: KvDtype,
        page_tokens: usize,
    ) -> Result<Model, EngineError> {
        let kv = checked_kv_layout(&cfg, kv_dtype, page_tokens)?;
        let bad = |m: String| EngineError::InvalidInput(format!("packed state: {m}"));
        let fetch = |name: &str| get(name).ok_or_else(|| bad(format!("missing {name}")));
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, EngineError> {
            match fetch(name)? {
                Stored::F32(v) if v.len() == len => Ok(v.to_vec()),
                other => Err(bad(format!(
                    "{name} must be {len} f32 values, got {} {}",
                    other.len(),
                    other.kind()
                ))),
            }
        };
        let opt_vector = |name: &str, len: usize| -> Result<Option<Vec<f32>>, EngineError> {
            match get(name) {
                None => Ok(None),
                Some(_) => vector(name, len).map(Some),
            }
        };
        let mat = |name: &str, k: usize, n: usize| -> Result<PackedMatrix, EngineError> {
            let data = fetch(name)?;
            let m =
                PackedMatrix::from_packed(k, n, data).map_err(|e| bad(format!("{name}: {e}")))?;
            // A block model holds blocks of any type and exact f32 values; a float model only its dtype.
            let fits = match dtype {
                WeightDtype::Blocks(_) => m.dtype() != WeightDtype::Bf16,
                d => m.dtype() == d,
            };
            if !fits {
                return Err(bad(format!(
                    "{name} is {}, the model is {}",
                    m.dtype().name(),
                    dtype.name()
                )));
            }
            Ok(m)
        };
        let (h, isz, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |s: &str| format!("layers.{l}.{s}");
            layers.push(Layer {
                input_norm: vector(&p("input_norm"), h)?,
                wqkv: mat(&p("wqkv"), h, nq + 2 * nkv)?,
                bqkv: opt_vector(&p("bqkv"), nq + 2 * nkv)?,
                q_norm: opt_vector(&p("q_norm"), hd)?,
                k_norm: opt_vector(&p("k_norm"), hd)?,
                wo: mat(&p("wo"), nq, h)?,
                bo: opt_vector(&p("bo"), h)?,
                attn_out_norm: opt_vector(&p("attn_out_norm"), h)?,
                post_norm: vector(&p("post_norm"), h)?,
                mlp_out_norm: opt_vector(&p("mlp_out_norm"), h)?,
                wgu: mat(&p("wgu"), h, 2 * isz)?,
                bgu: opt_vector(&p("bgu"), 2 * isz)?,
                wdown: mat(&p("wdown"), isz, h)?,
                bdown: opt_vector(&p("bdown"), h)?,
            });
        }
        let float = dtype.float_storage();
        let embed = match fetch("embed")? {
            Stored::F32(v) if float == WeightDtype::F32 && v.len() == cfg.vocab_size * h => {
                Table::F32(v.to_vec())
            }
            Stored::Bf16(v) if float == WeightDtype::Bf16 && v.len() == cfg.vocab_size * h => {
                Table::Bf16(v.to_vec())
            }
            Stored::Blocks(v) if matches!(dtype, WeightDtype::Blocks(_)) => {
                match BlockType::from_raw_len(cfg.vocab_size, h, v.len()) {
                    Some(bt) => Table::Blocks(bt, v.to_vec()),
                    None => {
                        return Err(bad(format!(
                            "embed: {} bytes are no block type's rows",
                            v.len()
                        )))
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "embed must be {} {} values, got {} {}",
                    cfg.vocab_size * h,
                    float.name(),
                    other.len(),
                    other.kind()
                )))
            }
        };
        let (final_norm, lm_head) = (vector("norm", h)?, mat("lm_head", h, cfg.vocab_size)?);
        Ok(Model::assemble(
            cfg, dtype, kv, embed, layers, final_norm, lm_head,
        ))
    }

    /// The model both constructors end with: a fresh id and the default row cap.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: Config,
        dtype: WeightDtype,
        kv: KvLayout,
        embed: Table,
        layers: Vec<Layer>,
        final_norm: Vec<f32>,
        lm_head: PackedMatrix,
    ) -> Model {
        Model {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cfg,
            dtype,
            kv,
            embed,
            layers,
            final_norm,
            lm_head,
            max_rows: 512,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }
    pub fn kv_layout(&self) -> &KvLayout {
        &self.kv
    }

    /// The storage of every weight matrix and of the embedding table, by
    /// [`Model::packed_state`] name (a block model may mix block types and f32).
    pub fn weight_formats(&self) -> Vec<(String, WeightDtype)> {
        let mut out = vec![
            ("embed".to_string(), self.embed.format()),
            ("lm_head".to_string(), self.lm_head.dtype()),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            for (name, m) in [
                ("wqkv", &l.wqkv),
                ("wo", &l.wo),
                ("wgu", &l.wgu),
                ("wdown", &l.wdown),
            ] {
                out.push((format!("layers.{i}.{name}"), m.dtype()));
            }
        }
        out
    }

    /// Bytes of weights one decode step reads (all matrices plus one embedding row).
    pub fn step_weight_bytes(&self) -> usize {
        let mut b = self.lm_head.nbytes() + self.embed.row_bytes(self.cfg.hidden_size);
        for l in &self.layers {
            b += l.wqkv.nbytes() + l.wo.nbytes() + l.wgu.nbytes() + l.wdown.nbytes();
            b += (l.input_norm.len() + l.post_norm.len()) * 4;
        }
        b
    }

    /// Feeds canonical bytes of every weight (as stored) to `sink`, for fingerprints.
    pub fn weight_bytes(&self, mut sink: impl FnMut(&[u8])) {
        let f32s = |v: &[f32], sink: &mut dyn FnMut(&[u8])| {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            sink(&b);
        };
        match &self.embed {
            Table::F32(v) => f32s(v, &mut sink),
            Table::Bf16(v) => sink(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            Table::Blocks(_, v) => sink(v),
        }
        for l in &self.layers {
            f32s(&l.input_norm, &mut sink);
            l.wqkv.canonical_bytes(&mut sink);
            if let Some(b) = &l.bqkv {
                f32s(b, &mut sink);
            }
            l.wo.canonical_bytes(&mut sink);
            if let Some(b) = &l.bo {
                f32s(b, &mut sink);
            }
            f32s(&l.post_norm, &mut sink);
            l.wgu.canonical_bytes(&mut sink);
            if let Some(b) = &l.bgu {
                f32s(b, &mut sink);
            }
            l.wdown.canonical_bytes(&mut sink);
            if let Some(b) = &l.bdown {
                f32s(b, &mut sink);
            }
            for v in [&l.q_norm, &l.k_norm, &l.attn_out_norm, &l.mlp_out_norm]
                .into_iter()
                .flatten()
            {
                f32s(v, &mut sink);
            }
        }
        f32s(&self.final_norm, &mut sink);
        self.lm_head.canonical_bytes(&mut sink);
    }

    /// RoPE cos/sin of position `pos` (`head_dim / 2` values each): angle
    /// `f32(pos * inv_freq[i])`, cos/sin in f64 ([`sincos`]) rounded to f32, times the
    /// attention scaling.
    pub fn rope_row(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        self.rope_row_of(0, pos, cos, sin)
    }

    /// [`Model::rope_row`] of RoPE table `table` (0 = the first, then `extra_rope`).
    pub fn rope_row_of(&self, table: usize, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let (inv_freq, scaling) = match table {
            0 => (&self.cfg.rope_inv_freq, self.cfg.rope_attention_scaling),
            t => (
                &self.cfg.extra_rope[t - 1].inv_freq,
                self.cfg.extra_rope[t - 1].attention_scaling,
            ),
        };
        let p = pos as f32;
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = p * f;
            let (s, c) = sincos(angle as f64);
            cos[i] = (c as f32) * scaling;
            sin[i] = (s as f32) * scaling;
        }
    }

    /// A new, empty sequence of this model.
    pub fn new_sequence(&self) -> Sequence {
        Sequence::new(self.id)
    }

    /// Whether `seq` was created by this model.
    pub fn owns(&self, seq: &Sequence) -> bool {
        seq.owner == self.id
    }

    /// Runs `tokens[i]` through sequence `seqs[i]` (appending their KV) and
    /// returns the selected rows of logits, `[rows][vocab]` in input order.
    pub fn forward(
        &self,
        isa: Isa,
        seqs: &mut [&mut Sequence],
        tokens: &[&[u32]],
        logits: Logits,
    ) -> Result<Vec<f32>, EngineError> {
        if seqs.len() != tokens.len() {
            return Err(EngineError::InvalidInput(
                "one token list per sequence is required".into(),
            ));
        }
        for (s, t) in seqs.iter().zip(tokens) {
            if !self.owns(s) {
                return Err(EngineError::InvalidInput(
                    "sequence belongs to another engine".into(),
                ));
            }
            if let Some(&bad) = t.iter().find(|&&x| x as usize >= self.cfg.vocab_size) {
                return Err(EngineError::InvalidInput(format!(
                    "token id {bad} out of range for vocab size {}",
                    self.cfg.vocab_size
                )));
            }
        }
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        if total <= self.max_rows {
            return Ok(self.forward_pass(isa, seqs, tokens, logits));
        }
        // Too many rows for one pass: process each sequence in pieces. Row
        // invariance makes this give exactly the bits of a single pass.
        let mut out = Vec::new();
        for (s, t) in seqs.iter_mut().zip(tokens) {
            let pieces: Vec<&[u32]> = t.chunks(self.max_rows).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let sel = match logits {
                    Logits::Last if i + 1 < pieces.len() => Logits::None,
                    other => other,
                };
                out.extend(self.forward_pass(isa, &mut [&mut **s], &[piece], sel));
            }
        }
        Ok(out)
    }

    fn forward_pass(
        &self,
        isa: Isa,
        seqs: &mut [&mut Sequence],
        tokens: &[&[u32]],
        logits: Logits,
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let (h, isz, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let (nq, nk) = (nh * hd, nkv * hd);
        let qkv_w = nq + 2 * nk;
        let half = hd / 2;
        let rows: usize = tokens.iter().map(|t| t.len()).sum();
        if rows == 0 {
            return Vec::new();
        }
        // Row bookkeeping: sequence index and absolute position of each row.
        let mut row_seq = Vec::with_capacity(rows);
        let mut row_pos = Vec::with_capacity(rows);
        let mut row_tok = Vec::with_capacity(rows);
        for (i, (s, t)) in seqs.iter_mut().zip(tokens).enumerate() {
            for (j, &tok) in t.iter().enumerate() {
                row_seq.push(i);
                row_pos.push(s.len + j);
                row_tok.push(tok);
            }
            let new_len = s.len + t.len();
            s.reserve(new_len, &self.kv);
        }
        let par = rows > 1;

        // Embeddings.
        let mut x = vec![0f32; rows * h];
        for (r, &tok) in row_tok.iter().enumerate() {
            let dst = &mut x[r * h..(r + 1) * h];
            self.embed.row(tok as usize, h, dst);
            if let Some(scale) = cfg.embed_scale {
                dst.iter_mut().for_each(|d| *d *= scale);
            }
        }
        // Per RoPE table, cos and sin of every row's position.
        let tables: Vec<(Vec<f32>, Vec<f32>)> = (0..=cfg.extra_rope.len())
            .map(|t| {
                let mut cos = vec![0f32; rows * half];
                let mut sin = vec![0f32; rows * half];
                if t == 0 || cfg.layer_rope.contains(&t) {
                    for r in 0..rows {
                        self.rope_row_of(
                            t,
                            row_pos[r],
                            &mut cos[r * half..(r + 1) * half],
                            &mut sin[r * half..(r + 1) * half],
                        );
                    }
                }
                (cos, sin)
            })
            .collect();

        let mut xn = vec![0f32; rows * h];
        let mut qkv = vec![0f32; rows * qkv_w];
        let mut attn = vec![0f32; rows * nq];
        let mut proj = vec![0f32; rows * h];
        let mut projn = vec![0f32; rows * h];
        let mut gu = vec![0f32; rows * 2 * isz];
        let mut act = vec![0f32; rows * isz];
        let tasks: Vec<(usize, usize)> = (0..rows)
            .flat_map(|r| (0..nh).map(move |hh| (r, hh)))
            .collect();
        let group = nh / nkv;

        for (li, layer) in self.layers.iter().enumerate() {
            norm_rows(
                isa,
                &x,
                &layer.input_norm,
                cfg.rms_norm_eps,
                &mut xn,
                h,
                par,
            );
            matmul(isa, &xn, rows, &layer.wqkv, &mut qkv);
            add_bias(&mut qkv, layer.bqkv.as_deref(), qkv_w);
            // Per-head q/k RMSNorm where the model has it, then RoPE on q and k heads.
            let (cos, sin) = &tables[cfg.rope_index(li)];
            let (q_norm, k_norm) = (layer.q_norm.as_deref(), layer.k_norm.as_deref());
            let rope_row = |(r, row): (usize, &mut [f32])| {
                if q_norm.is_some() || k_norm.is_some() {
                    let mut head_in = vec![0f32; hd];
                    for head in 0..nh + nkv {
                        let w = if head < nh { q_norm } else { k_norm };
                        if let Some(w) = w {
                            let x = &mut row[head * hd..(head + 1) * hd];
                            head_in.copy_from_slice(x);
                            ops::rmsnorm(isa, &head_in, w, cfg.rms_norm_eps, x);
                        }
                    }
                }
                let (c, s) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                for head in 0..nh + nkv {
                    ops::rope(&mut row[head * hd..(head + 1) * hd], c, s);
                }
            };
            if par {
                qkv.par_chunks_mut(qkv_w).enumerate().for_each(rope_row);
            } else {
                qkv.chunks_mut(qkv_w).enumerate().for_each(rope_row);
            }
            // Store K and V (rounded to the KV dtype) before any query reads them.
            for r in 0..rows {
                let row = &qkv[r * qkv_w..(r + 1) * qkv_w];
                seqs[row_seq[r]].write(
                    &self.kv,
                    li,
                    row_pos[r],
                    &row[nq..nq + nk],
                    &row[nq + nk..],
                );
            }
            // Attention: one task per (row, head), reading that row's own sequence.
            let ptrs = PagePtrs(
                seqs.iter()
                    .flat_map(|s| {
                        (0..nkv).map(move |g| {
                            s.pages
                                .iter()
                                .map(|pg| {
                                    let base = pg.ptr();
                                    let eb = pg.elem_bytes();
                                    let ko = (self.kv.offset(li, 0, 0) + g * hd) * eb;
                                    let vo = (self.kv.offset(li, 1, 0) + g * hd) * eb;
                                    // SAFETY: `kv.offset(li, _, 0) + g * hd` is within one
                                    // page row, so both offsets stay inside the page buffer.
                                    unsafe { (base.add(ko), base.add(vo)) }
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect(),
            );
            let attn_ptr = SyncPtr(attn.as_mut_ptr());
            let bf = self.kv.dtype == KvDtype::Bf16;
            let kv = &self.kv;
            let window = cfg.window(li);
            let (qkv_ref, row_seq_ref, row_pos_ref, ptrs_ref) = (&qkv, &row_seq, &row_pos, &ptrs);
            let run = move |scratch: &mut Vec<f32>, &(r, hh): &(usize, usize)| {
                let g = hh / group;
                let view = KvView {
                    pages: &ptrs_ref.0[row_seq_ref[r] * nkv + g],
                    page_tokens: kv.page_tokens,
                    stride: nk,
                    head_dim: hd,
                    bf16: bf,
                };
                let q = &qkv_ref[r * qkv_w + hh * hd..r * qkv_w + (hh + 1) * hd];
                // SAFETY: each task writes its own (row, head) slice of `attn`.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(attn_ptr.get().add(r * nq + hh * hd), hd)
                };
                let n_keys = row_pos_ref[r] + 1;
                ops::attend(
                    isa,
                    q,
                    &view,
                    if window == 0 {
                        0
                    } else {
                        n_keys.saturating_sub(window)
                    },
                    n_keys,
                    cfg.attention_scale,
                    scratch,
                    out,
                );
            };
            if tasks.len() > 1 {
                tasks.par_iter().for_each_init(Vec::new, run);
            } else {
                let mut scratch = Vec::new();
                tasks.iter().for_each(|t| run(&mut scratch, t));
            }
            matmul(isa, &attn, rows, &layer.wo, &mut proj);
            add_bias(&mut proj, layer.bo.as_deref(), h);
            add_normed_rows(
                isa,
                &mut x,
                &proj,
                layer.attn_out_norm.as_deref(),
                cfg.rms_norm_eps,
                &mut projn,
                h,
                par,
            );
            // MLP.
            norm_rows(isa, &x, &layer.post_norm, cfg.rms_norm_eps, &mut xn, h, par);
            matmul(isa, &xn, rows, &layer.wgu, &mut gu);
            add_bias(&mut gu, layer.bgu.as_deref(), 2 * isz);
            let act_row = |(a, g): (&mut [f32], &[f32])| match cfg.hidden_act {
                Activation::Silu => ops::silu_mul(isa, &g[..isz], &g[isz..], a),
                Activation::GeluTanh => ops::gelu_tanh_mul(&g[..isz], &g[isz..], a),
            };
            if par {
                act.par_chunks_mut(isz)
                    .zip(gu.par_chunks(2 * isz))
                    .for_each(act_row);
            } else {
                act.chunks_mut(isz)
                    .zip(gu.chunks(2 * isz))
                    .for_each(act_row);
            }
            matmul(isa, &act, rows, &layer.wdown, &mut proj);
            add_bias(&mut proj, layer.bdown.as_deref(), h);
            add_normed_rows(
                isa,
                &mut x,
                &proj,
                layer.mlp_out_norm.as_deref(),
                cfg.rms_norm_eps,
                &mut projn,
                h,
                par,
            );
        }
        for (s, t) in seqs.iter_mut().zip(tokens) {
            s.len += t.len();
        }

        // Logits of the selected rows.
        let sel: Vec<usize> = match logits {
            Logits::None => Vec::new(),
            Logits::All => (0..rows).collect(),
            Logits::Last => {
                let mut v = Vec::new();
                let mut end = 0;
                for t in tokens {
                    end += t.len();
                    if !t.is_empty() {
                        v.push(end - 1);
                    }
                }
                v
            }
        };
        if sel.is_empty() {
            return Vec::new();
        }
        let xs: Vec<f32> = if sel.len() == rows {
            x
        } else {
            sel.iter()
                .flat_map(|&r| x[r * h..(r + 1) * h].to_vec())
                .collect()
        };
        let mut xsn = vec![0f32; sel.len() * h];
        norm_rows(
            isa,
            &xs,
            &self.final_norm,
            cfg.rms_norm_eps,
            &mut xsn,
            h,
            sel.len() > 1,
        );
        let mut out = vec![0f32; sel.len() * cfg.vocab_size];
        matmul(isa, &xsn, sel.len(), &self.lm_head, &mut out);
        if let Some(cap) = cfg.final_logit_softcap {
            out.iter_mut().for_each(|v| *v = math::tanh(*v / cap) * cap);
        }
        out
    }
}

/// `x += y` row by row, through RMSNorm (weights `w`) first when the model has that norm.
fn add_normed_rows(
    isa: Isa,
    x: &mut [f32],
    y: &[f32],
    w: Option<&[f32]>,
    eps: f32,
    tmp: &mut [f32],
    h: usize,
    par: bool,
) {
    match w {
        None => add_rows(x, y),
        Some(w) => {
            norm_rows(isa, y, w, eps, tmp, h, par);
            add_rows(x, tmp);
        }
    }
}

fn norm_rows(isa: Isa, x: &[f32], w: &[f32], eps: f32, out: &mut [f32], h: usize, par: bool) {
    let f = |(o, xr): (&mut [f32], &[f32])| ops::rmsnorm(isa, xr, w, eps, o);
    if par {
        out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(f);
    } else {
        out.chunks_mut(h).zip(x.chunks(h)).for_each(f);
    }
}

fn add_bias(y: &mut [f32], b: Option<&[f32]>, width: usize) {
    if let Some(b) = b {
        for row in y.chunks_mut(width) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

fn add_rows(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// [`quant::dequantize`] with the shape checked.
fn dequantize(bt: BlockType, raw: &[u8], rows: usize, k: usize) -> Result<Vec<f32>, String> {
    if k % QK != 0 || raw.len() != rows * (k / QK) * bt.raw_bytes() {
        return Err(format!(
            "{rows}x{k} {} blocks take {} bytes (K a multiple of {QK}), got {}",
            bt.name(),
            rows * (k / QK.max(1)) * bt.raw_bytes(),
            raw.len()
        ));
    }
    Ok(quant::dequantize(bt, raw, rows, k))
}
