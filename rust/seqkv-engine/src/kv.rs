//! KV storage: per sequence, fixed-size pages of `page_tokens` positions.
//!
//! A page holds every layer's keys and values for its positions, laid out
//! `[layer][k|v][position in page][kv head][head_dim]`, in f32 or bf16. Pages
//! are reference-counted: [`Sequence::fork`] shares the full pages of a prefix
//! (a trie node can hold the same `Arc`s), and a write into a shared page copies
//! it first. Keys are stored after RoPE, as Hugging Face caches keep them.

use std::sync::Arc;

/// Storage type of cached keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    Bf16,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(KvDtype::F32),
            "bf16" | "bfloat16" => Some(KvDtype::Bf16),
            _ => None,
        }
    }
}

/// Shape of the KV storage of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub page_tokens: usize,
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Elements in one position of one layer's keys (or values).
    pub fn row(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Elements of one page.
    pub fn page_elems(&self) -> usize {
        self.layers * 2 * self.page_tokens * self.row()
    }
    /// Element offset inside a page of `(layer, kind, position-in-page)`; kind 0 = keys, 1 = values.
    pub fn offset(&self, layer: usize, kind: usize, t: usize) -> usize {
        ((layer * 2 + kind) * self.page_tokens + t) * self.row()
    }
    /// Bytes of KV per position (all layers, keys and values).
    pub fn bytes_per_token(&self) -> usize {
        self.layers
            * 2
            * self.row()
            * match self.dtype {
                KvDtype::F32 => 4,
                KvDtype::Bf16 => 2,
            }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum PageBuf {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// One page of KV storage.
#[derive(Clone, Debug)]
pub struct Page {
    pub(crate) buf: PageBuf,
}

impl Page {
    fn new(layout: &KvLayout) -> Self {
        let n = layout.page_elems();
        Page {
            buf: match layout.dtype {
                KvDtype::F32 => PageBuf::F32(vec![0.0; n]),
                KvDtype::Bf16 => PageBuf::Bf16(vec![0; n]),
            },
        }
    }
    pub(crate) fn ptr(&self) -> *const u8 {
        match &self.buf {
            PageBuf::F32(v) => v.as_ptr() as *const u8,
            PageBuf::Bf16(v) => v.as_ptr() as *const u8,
        }
    }
    pub(crate) fn elem_bytes(&self) -> usize {
        match &self.buf {
            PageBuf::F32(_) => 4,
            PageBuf::Bf16(_) => 2,
        }
    }
    /// Stores `src` at element offset `off` (rounding to bf16 where the page is bf16).
    pub(crate) fn write(&mut self, off: usize, src: &[f32]) {
        match &mut self.buf {
            PageBuf::F32(v) => v[off..off + src.len()].copy_from_slice(src),
            PageBuf::Bf16(v) => {
                for (d, &x) in v[off..off + src.len()].iter_mut().zip(src) {
                    *d = crate::bf16::f32_to_bf16(x);
                }
            }
        }
    }
    /// Reads `dst.len()` elements from offset `off` as f32.
    pub(crate) fn read(&self, off: usize, dst: &mut [f32]) {
        match &self.buf {
            PageBuf::F32(v) => dst.copy_from_slice(&v[off..off + dst.len()]),
            PageBuf::Bf16(v) => {
                let n = dst.len();
                for (d, &h) in dst.iter_mut().zip(&v[off..off + n]) {
                    *d = crate::bf16::bf16_to_f32(h);
                }
            }
        }
    }
}

/// The cached state of one token sequence: its length and KV pages.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub(crate) owner: u64,
    pub(crate) len: usize,
    pub(crate) pages: Vec<Arc<Page>>,
}

impl Sequence {
    pub(crate) fn new(owner: u64) -> Self {
        Sequence {
            owner,
            len: 0,
            pages: Vec::new(),
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages (shared storage) of this sequence.
    pub fn pages(&self) -> &[Arc<Page>] {
        &self.pages
    }

    /// A new sequence holding the first `n` positions of this one; pages are
    /// shared, and copied on the first write of either sequence.
    pub fn fork(&self, n: usize, layout: &KvLayout) -> Sequence {
        let n = n.min(self.len);
        let pages = self.pages[..n.div_ceil(layout.page_tokens)].to_vec();
        Sequence {
            owner: self.owner,
            len: n,
            pages,
        }
    }

    /// Forgets positions `n..`.
    pub fn truncate(&mut self, n: usize, layout: &KvLayout) {
        if n < self.len {
            self.len = n;
            self.pages.truncate(n.div_ceil(layout.page_tokens));
        }
    }

    /// Makes room for `new_len` positions.
    pub(crate) fn reserve(&mut self, new_len: usize, layout: &KvLayout) {
        while self.pages.len() * layout.page_tokens < new_len {
            self.pages.push(Arc::new(Page::new(layout)));
        }
    }

    /// Writes the keys and values of position `pos` of `layer` (each `kv_heads * head_dim` values).
    pub(crate) fn write(
        &mut self,
        layout: &KvLayout,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let (p, t) = (pos / layout.page_tokens, pos % layout.page_tokens);
        let page = Arc::make_mut(&mut self.pages[p]);
        page.write(layout.offset(layer, 0, t), k);
        page.write(layout.offset(layer, 1, t), v);
    }

    /// One layer's keys and values as f32 in Hugging Face order `[kv_heads][len][head_dim]`.
    pub fn export_layer(&self, layout: &KvLayout, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let (hd, kvh, n) = (layout.head_dim, layout.kv_heads, self.len);
        let mut k = vec![0f32; kvh * n * hd];
        let mut v = vec![0f32; kvh * n * hd];
        let mut row = vec![0f32; layout.row()];
        for pos in 0..n {
            let (p, t) = (pos / layout.page_tokens, pos % layout.page_tokens);
            for (kind, dst) in [(0usize, &mut k), (1, &mut v)] {
                self.pages[p].read(layout.offset(layer, kind, t), &mut row);
                for g in 0..kvh {
                    dst[(g * n + pos) * hd..(g * n + pos + 1) * hd]
                        .copy_from_slice(&row[g * hd..(g + 1) * hd]);
                }
            }
        }
        (k, v)
    }
}
