//! The `plt` context model: orders `K..1` of hashed token contexts blended
//! Kneser-Ney / Pitman-Yor style into the order-0 distribution, then a static
//! order -1 table over the tokens never seen. Integer arithmetic only.
//!
//! One coding step (the decoder makes the same calls, reading instead of writing):
//!
//! 1. **Blend.** For each context of order `k = K..1` that exists, the weight
//!    `w` still unassigned is split: a share `(64·c(s) − D_k(c)) / den_k` of `w` goes
//!    to each symbol `s` seen there, the rest `w·b_k/den_k` to the lower orders,
//!    where `den_k = 64·n + θ_k` and `b_k = θ_k + Σ_s D_k(c(s))`. The order-0 level
//!    (continuation counts over every token seen) ends the chain. The symbols seen in
//!    the contexts are the *candidates*; their blended weights are their frequencies.
//! 2. **Match.** If the last `match_min`+ tokens occurred before, the token that
//!    followed them is predicted: one binary decision, whose probability is the blend's
//!    own probability of that token refined by an APM per match length. On a miss the
//!    token is excluded from the stages below.
//! 3. **Candidates.** "Not a candidate" gets the blended weight of everything else;
//!    its probability, refined by an adaptive probability map (APM), is coded as one
//!    binary decision; then a candidate (if not escaped) under the blended frequencies.
//! 4. **Order 0.** Among the seen tokens that are neither candidates nor the match's:
//!    weights `64·c0(s) − D_0(c0) + bonus · (occurrences of s in the last W tokens)` (a
//!    Fenwick tree, exclusions subtracted), or the escape `b_0` (APM-refined binary
//!    decision) to:
//! 5. **Order -1.** A static table over the tokens never seen, `w(i) ∝ 1/(i + C)`
//!    (BPE vocabularies number tokens roughly by frequency), seen tokens removed.
//!
//! Updates: the counts of the contexts follow the "minimal path" rule (a token
//! increments the highest-order context and goes down only while it is new there), so
//! lower orders hold continuation counts as in Kneser-Ney; counts are halved when a
//! context's total passes a bound, which keeps every total below 2^24.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::apm::{Apm, Stretch};
use crate::channel::Channel;
use crate::fenwick::Fenwick;
use crate::Error;

/// Highest supported order.
pub const MAX_ORDER: usize = 8;

/// Tunable constants of the model. A stream records the profile it was coded with
/// (see [`crate::Params`]); these values are part of the format of profile 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Discount of a symbol seen once / twice / three or more times, per order
    /// (index = order), in 1/64 of a count.
    pub d1: [u32; MAX_ORDER + 1],
    pub d2: [u32; MAX_ORDER + 1],
    pub d3: [u32; MAX_ORDER + 1],
    /// Strength θ per order, in 1/64.
    pub theta: [u32; MAX_ORDER + 1],
    /// Offset C of the static table `1/(i + C)`.
    pub zipf_c: u32,
    /// Recency window W (tokens) of the order-0 stage, and its bonus per occurrence (1/64).
    pub window: u32,
    pub bonus: u32,
    /// Weight (in 1/4) of the APM's refined probability against the model's own.
    pub apm_w: u32,
    /// Adaptation limit of the APM cells.
    pub apm_limit: u16,
    /// Match model: minimum match length (tokens) to predict; 0 = off.
    pub match_min: u32,
    /// A context's counts are halved when its total passes this (at most 60,000).
    pub node_limit: u32,
}

impl Tuning {
    /// Profile 1: tuned (coordinate descent on the ideal code length) on the license
    /// texts of /usr/share/common-licenses and CPython's pydoc topics, SmolLM2 tokenizer.
    pub fn profile1() -> Self {
        Tuning {
            d1: [40, 48, 52, 56, 52, 52, 52, 52, 52],
            d2: [64, 64, 56, 56, 56, 56, 56, 56, 56],
            d3: [60; MAX_ORDER + 1],
            theta: [32, 16, 16, 32, 32, 32, 32, 32, 32],
            zipf_c: 500,
            window: 128,
            bonus: 128,
            apm_w: 2,
            apm_limit: 30,
            match_min: 6,
            node_limit: NODE_LIMIT,
        }
    }

    #[inline]
    fn disc(&self, k: usize, c: u32) -> u32 {
        match c {
            0 => 0,
            1 => self.d1[k],
            2 => self.d2[k],
            _ => self.d3[k],
        }
    }

    fn validate(&self) -> Result<(), Error> {
        for k in 0..=MAX_ORDER {
            if self.d1[k] > 63 || self.d2[k] > 127 || self.d3[k] > 191 {
                return Err(Error::InvalidInput("discounts must be below the count they discount".into()));
            }
        }
        if self.zipf_c == 0 || self.apm_w > 4 || self.node_limit == 0 || self.window > 1 << 16 || self.bonus > 1 << 12 {
            return Err(Error::InvalidInput("tuning constant out of range".into()));
        }
        Ok(())
    }
}

/// Identity hasher: the keys are already mixed 64-bit hashes. (No per-process
/// random state: the map's contents do not depend on it anyway, since it is never iterated.)
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0, b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Map = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    let mut z = (h ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The symbols seen in one context and their counts, in order of first appearance.
/// Most contexts only ever see one symbol: the first entry lives inline, the others
/// in `rest` (which allocates only when a second symbol arrives).
#[derive(Clone, Debug)]
struct Node {
    first: (u32, u32),
    rest: Vec<(u32, u32)>,
    total: u32,
    /// Σ D_k(count) over the node's symbols.
    dsum: u32,
}

impl Node {
    fn new(sym: u32, dsum: u32) -> Self {
        Node { first: (sym, 1), rest: Vec::new(), total: 1, dsum }
    }

    /// (symbol, count) pairs.
    #[inline]
    fn entries(&self) -> impl Iterator<Item = &(u32, u32)> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    #[inline]
    fn entries_mut(&mut self) -> impl Iterator<Item = &mut (u32, u32)> {
        std::iter::once(&mut self.first).chain(self.rest.iter_mut())
    }
}

/// A context's total is halved past this (keeps `64·total` and every product in range).
const NODE_LIMIT: u32 = 60_000;
/// Order-0 weights (Fenwick total) are halved past this.
const ORDER0_LIMIT: u32 = 1 << 23;
/// Match lengths are bucketed for the match model's APM.
const MATCH_BUCKETS: usize = 16;
/// Matches are verified (and their length measured) up to this many tokens back.
const MATCH_VERIFY: usize = 64;
/// Fixed-point one of the blend weights.
const ONE: u64 = 1 << 32;
/// Blend weights are coded at 2^-20 resolution (totals stay below 2^21).
const FREQ_SHIFT: u32 = 12;

/// The static order -1 weights `1 + floor(A / (i + C))`, with `A` the largest power of
/// two (at most 2^21) that keeps the total at most `max(2^23, vocab)` (<= 2^24).
pub fn static_weights(vocab: u32, zipf_c: u32) -> Vec<u32> {
    let mut a: u64 = 1 << 21;
    loop {
        let w: Vec<u32> = (0..vocab as u64).map(|i| 1 + (a / (i + zipf_c as u64)) as u32).collect();
        let total: u64 = w.iter().map(|&x| x as u64).sum();
        if total <= 1 << 23 || a == 0 {
            return w;
        }
        a >>= 1;
    }
}

/// The model state. `Clone` is the way to reuse a primed model for many messages.
#[derive(Clone)]
pub struct Model {
    vocab: u32,
    order: usize,
    t: Tuning,
    /// Every token seen (primer included), most recent last, and the CRC-32C of their
    /// ids (u32 LE).
    hist: Vec<u32>,
    history_crc: u32,
    /// Match model: hash of the `match_min` tokens before a position -> that position;
    /// the current match (position of the predicted token) and its length (0 = none).
    mm_map: Map,
    mm_ptr: usize,
    mm_len: u32,
    apm_m: Apm,
    map: Map,
    nodes: Vec<Node>,
    /// Order 0: continuation counts, their total, Σ D_0, and the Fenwick tree of the
    /// order-0 stage weights (count part + recency bonus) over the vocabulary.
    cnt0: Vec<u32>,
    n0: u32,
    dsum0: u32,
    occ: Vec<u16>,
    f0: Fenwick,
    /// Order -1: static weights of the tokens never seen.
    table: Fenwick,
    st: Stretch,
    apm1: Apm,
    apm2: Apm,
    prev_novel: bool,
    // scratch
    stamp: u32,
    mark: Vec<u32>,
    acc: Vec<u64>,
    cand: Vec<u32>,
    freq: Vec<u32>,
    found: [Option<u32>; MAX_ORDER + 1],
    keys: [u64; MAX_ORDER + 1],
    excl: Vec<(u32, u32)>,
}

impl Model {
    /// A fresh model over `0..vocab` with contexts of orders `1..=order`.
    pub fn new(vocab: u32, order: usize, t: Tuning) -> Result<Self, Error> {
        if vocab == 0 || vocab > (1 << 24) {
            return Err(Error::InvalidInput(format!("vocab_size must be in 1..=2^24, got {vocab}")));
        }
        if order > MAX_ORDER {
            return Err(Error::InvalidInput(format!("order must be in 0..={MAX_ORDER}, got {order}")));
        }
        t.validate()?;
        let v = vocab as usize;
        Ok(Model {
            vocab,
            order,
            hist: Vec::new(),
            history_crc: 0,
            mm_map: Map::default(),
            mm_ptr: 0,
            mm_len: 0,
            apm_m: Apm::new(MATCH_BUCKETS * 2, t.apm_limit),
            map: Map::default(),
            nodes: Vec::new(),
            cnt0: vec![0; v],
            n0: 0,
            dsum0: 0,
            occ: vec![0; v],
            f0: Fenwick::new(vec![0; v]),
            table: Fenwick::new(static_weights(vocab, t.zipf_c)),
            st: Stretch::new(),
            apm1: Apm::new((MAX_ORDER + 1) * 4, t.apm_limit),
            apm2: Apm::new(4, t.apm_limit),
            prev_novel: false,
            stamp: 0,
            mark: vec![0; v],
            acc: vec![0; v],
            cand: Vec::new(),
            freq: Vec::new(),
            found: [None; MAX_ORDER + 1],
            keys: [0; MAX_ORDER + 1],
            excl: Vec::new(),
            t,
        })
    }

    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    pub fn order(&self) -> usize {
        self.order
    }

    /// Number of tokens the model has seen (primed or coded).
    pub fn seen_tokens(&self) -> u64 {
        self.hist.len() as u64
    }

    /// CRC-32C of the ids of every token the model has seen, as `u32` little-endian.
    pub fn history_crc32c(&self) -> u32 {
        self.history_crc
    }

    /// Number of distinct contexts stored.
    pub fn contexts(&self) -> usize {
        self.nodes.len()
    }

    /// Looks up the contexts of orders 1..=K of the current position.
    fn lookup(&mut self) {
        let n = self.hist.len();
        let mut h = 0x5EED_F5E9u64;
        for k in 1..=self.order {
            if k > n {
                self.found[k] = None;
                self.keys[k] = 0;
                continue;
            }
            h = mix(h, self.hist[n - k] as u64);
            let key = mix(h, k as u64) | 1; // never 0, which marks "no context"
            self.keys[k] = key;
            self.found[k] = self.map.get(&key).copied();
        }
    }

    /// Hash of the last `match_min` tokens (None while the history is shorter or the
    /// match model is off).
    fn match_key(&self) -> Option<u64> {
        let m = self.t.match_min as usize;
        let n = self.hist.len();
        if m == 0 || n < m {
            return None;
        }
        let mut h = 0x4D41_5443u64;
        for &t in &self.hist[n - m..] {
            h = mix(h, t as u64);
        }
        Some(h)
    }

    /// Starts a match if none is active: the last position that followed the same
    /// `match_min` tokens, kept if the tokens really agree for at least that long.
    fn find_match(&mut self) {
        if self.mm_len > 0 {
            return;
        }
        let Some(key) = self.match_key() else { return };
        let Some(&p) = self.mm_map.get(&key) else { return };
        let (p, n) = (p as usize, self.hist.len());
        let mut len = 0usize;
        while len < MATCH_VERIFY && len < p && self.hist[p - 1 - len] == self.hist[n - 1 - len] {
            len += 1;
        }
        if len >= self.t.match_min as usize {
            self.mm_ptr = p;
            self.mm_len = len as u32;
        }
    }

    #[inline]
    fn a0(&self, c: u32) -> u64 {
        64 * c as u64 - self.t.disc(0, c) as u64
    }

    /// Codes (or decodes) one token through `ch` and updates the model.
    pub fn step<C: Channel>(&mut self, ch: &mut C) -> Result<u32, Error> {
        self.lookup();
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        let stamp = self.stamp;

        // 1. Blend orders K..1.
        let mut w: u64 = ONE;
        let mut top = 0usize;
        self.cand.clear();
        for k in (1..=self.order).rev() {
            let Some(ni) = self.found[k] else { continue };
            let node = &self.nodes[ni as usize];
            if top == 0 {
                top = k;
            }
            let theta = self.t.theta[k] as u64;
            let den = 64 * node.total as u64 + theta;
            for &(s, c) in node.entries() {
                let a = 64 * c as u64 - self.t.disc(k, c) as u64;
                let contrib = w * a / den;
                let si = s as usize;
                if self.mark[si] != stamp {
                    self.mark[si] = stamp;
                    self.acc[si] = contrib;
                    self.cand.push(s);
                } else {
                    self.acc[si] += contrib;
                }
            }
            w = w * (theta + node.dsum as u64) / den;
        }
        let theta0 = self.t.theta[0] as u64;
        let den0 = 64 * self.n0 as u64 + theta0;
        let b0 = theta0 + self.dsum0 as u64;
        let mut coded = None;

        // The candidates' blend weights (order-0 share included) and the rest's.
        let mut rest = 0u64;
        let mut sum = 0u64;
        self.freq.clear();
        if !self.cand.is_empty() {
            let mut a0_cand = 0u64;
            for &s in &self.cand {
                let a = self.a0(self.cnt0[s as usize]);
                a0_cand += a;
                let f = (((self.acc[s as usize] + w * a / den0) >> FREQ_SHIFT) as u32).max(1);
                self.freq.push(f);
                sum += f as u64;
            }
            let a0_all = 64 * self.n0 as u64 - self.dsum0 as u64;
            rest = ((w * (a0_all - a0_cand + b0) / den0) >> FREQ_SHIFT).max(1);
        }

        // 2. Match model: "is it the token that followed the last occurrence of this
        // context?", with the blend's own probability of that token refined by an APM
        // per match length.
        let mut pred = None;
        self.find_match();
        if self.mm_len > 0 {
            let ps = self.hist[self.mm_ptr];
            let in_cand = self.cand.iter().position(|&s| s == ps);
            let p_model = match in_cand {
                Some(i) => self.freq[i] as u64 * 65536 / (sum + rest),
                None => {
                    let share = if self.cand.is_empty() { 65536 } else { rest * 65536 / (sum + rest) };
                    let excl: u64 = self.cand.iter().map(|&s| self.f0.weight(s as usize) as u64).sum();
                    let avail = self.f0.total() as u64 - excl;
                    share * self.f0.weight(ps as usize) as u64 / (avail + b0)
                }
            };
            let bucket = (self.mm_len as usize).min(2 * MATCH_BUCKETS - 1) / 2;
            let r = self.apm_m.refine(&self.st, clamp_p(p_model), bucket * 2 + in_cand.is_some() as usize);
            let p_hit = clamp_p(r as u64);
            ch.note(self.order + 2);
            let missed = ch.escape(65536 - p_hit, &|s| s != ps)?;
            self.apm_m.update(!missed);
            if !missed {
                coded = Some(ps);
            } else {
                pred = Some(ps);
                if let Some(i) = in_cand {
                    sum -= self.freq[i] as u64;
                    self.cand.remove(i);
                    self.freq.remove(i);
                }
            }
        }

        // 3. A candidate, or escape. The escape is coded even where nothing is left
        // outside (every token of the vocabulary seen): at a clamped probability every
        // token costs at least -log2(65504/65536) bits, which bounds how many tokens a
        // payload can hold (`crate::max_tokens_for_payload`).
        if coded.is_none() && !self.cand.is_empty() {
            let p = clamp_p(rest * 65536 / (sum + rest));
            let nc = match self.cand.len() {
                1 => 0,
                2..=3 => 1,
                4..=15 => 2,
                _ => 3,
            };
            let r = self.apm1.refine(&self.st, p, top * 4 + nc);
            let pf = clamp_p(((p * (4 - self.t.apm_w) + r * self.t.apm_w) / 4) as u64);
            ch.note(1);
            let cand = &self.cand;
            let escaped = ch.escape(pf, &|s| !cand.contains(&s))?;
            self.apm1.update(escaped);
            if !escaped {
                coded = Some(self.cand[ch.choose(&self.cand, &self.freq)?]);
            }
        }

        // 4. Order 0 over the seen tokens that are neither candidates nor the match's,
        // or escape.
        if coded.is_none() {
            self.excl.clear();
            let mut excl_sum = 0u64;
            for &s in self.cand.iter().chain(pred.iter()) {
                let f = self.f0.weight(s as usize);
                self.excl.push((s, f));
                excl_sum += f as u64;
            }
            let avail = self.f0.total() as u64 - excl_sum;
            if avail > 0 {
                let p = clamp_p(b0 * 65536 / (avail + b0));
                let cx = (self.prev_novel as usize) * 2 + self.cand.is_empty() as usize;
                let r = self.apm2.refine(&self.st, p, cx);
                let pf = clamp_p(((p * (4 - self.t.apm_w) + r * self.t.apm_w) / 4) as u64);
                ch.note(0);
                let f0 = &self.f0;
                let escaped = ch.escape(pf, &|s| f0.weight(s as usize) == 0)?;
                self.apm2.update(escaped);
                if !escaped {
                    coded = Some(ch.choose_excluding(&self.f0, &mut self.excl, avail as u32)?);
                }
            }
        }

        // 5. Order -1.
        let sym = match coded {
            Some(s) => s,
            None => {
                ch.note(self.order + 1);
                let s = ch.choose_static(&self.table)?;
                if self.cnt0[s as usize] != 0 {
                    return Err(Error::CorruptStream("order -1 coded a token already seen".into()));
                }
                s
            }
        };
        self.prev_novel = coded.is_none();
        self.update(sym);
        Ok(sym)
    }

    /// Adds `sym` to the model without coding it (priming), as if it had been coded.
    pub fn observe(&mut self, sym: u32) -> Result<(), Error> {
        if sym >= self.vocab {
            return Err(Error::InvalidInput(format!("token id {sym} is out of range for vocab size {}", self.vocab)));
        }
        self.lookup();
        self.find_match();
        self.prev_novel = self.cnt0[sym as usize] == 0;
        self.update(sym);
        Ok(())
    }

    fn update(&mut self, sym: u32) {
        let si = sym as usize;
        let mut reached_order0 = true;
        for k in (1..=self.order).rev() {
            let key = self.keys[k];
            if key == 0 {
                continue;
            }
            let t = &self.t;
            let Some(ni) = self.found[k] else {
                self.map.insert(key, self.nodes.len() as u32);
                self.nodes.push(Node::new(sym, t.disc(k, 1)));
                continue; // new context: new symbol, go on down
            };
            let node = &mut self.nodes[ni as usize];
            let seen = node.entries_mut().find(|e| e.0 == sym).map(|e| {
                e.1 += 1;
                e.1 - 1
            });
            let existed = match seen {
                Some(c) => {
                    node.dsum = node.dsum + t.disc(k, c + 1) - t.disc(k, c);
                    true
                }
                None => {
                    node.rest.push((sym, 1));
                    node.dsum += t.disc(k, 1);
                    false
                }
            };
            node.total += 1;
            if node.total > t.node_limit.min(NODE_LIMIT) {
                let (mut total, mut dsum) = (0, 0);
                for e in node.entries_mut() {
                    e.1 = e.1.div_ceil(2);
                    total += e.1;
                    dsum += t.disc(k, e.1);
                }
                node.total = total;
                node.dsum = dsum;
            }
            if existed {
                reached_order0 = false;
                break;
            }
        }
        let novel = self.cnt0[si] == 0;
        if reached_order0 {
            let c = self.cnt0[si];
            self.dsum0 = self.dsum0 + self.t.disc(0, c + 1) - self.t.disc(0, c);
            self.cnt0[si] = c + 1;
            self.n0 += 1;
            let delta = (self.a0(c + 1) - self.a0(c)) as u32;
            self.f0.add(si, delta);
        }
        if novel {
            self.table.remove(si);
        }
        // Recency window.
        if self.t.window > 0 {
            self.occ[si] = self.occ[si].saturating_add(1);
            self.f0.add(si, self.t.bonus);
            if self.hist.len() >= self.t.window as usize {
                let old = self.hist[self.hist.len() - self.t.window as usize] as usize;
                self.occ[old] -= 1;
                self.f0.sub(old, self.t.bonus);
            }
        }
        if self.f0.total() > ORDER0_LIMIT {
            self.halve_order0();
        }
        // Match model: follow or drop the current match, index this position.
        if self.mm_len > 0 {
            if self.hist[self.mm_ptr] == sym {
                self.mm_len = self.mm_len.saturating_add(1);
                self.mm_ptr += 1;
            } else {
                self.mm_len = 0;
            }
        }
        if let Some(key) = self.match_key() {
            self.mm_map.insert(key, self.hist.len() as u32);
        }
        self.hist.push(sym);
        self.history_crc = seqkv_coder::crc32c::crc32c_append(self.history_crc, &sym.to_le_bytes());
    }

    fn halve_order0(&mut self) {
        self.n0 = 0;
        self.dsum0 = 0;
        let mut weights = vec![0u32; self.vocab as usize];
        for (s, c) in self.cnt0.iter_mut().enumerate() {
            if *c == 0 {
                continue;
            }
            *c = c.div_ceil(2);
            self.n0 += *c;
            self.dsum0 += self.t.disc(0, *c);
            weights[s] = (64 * *c - self.t.disc(0, *c)) + self.occ[s] as u32 * self.t.bonus;
        }
        self.f0 = Fenwick::new(weights);
    }
}

#[inline]
fn clamp_p(p: u64) -> u32 {
    p.clamp(32, 65536 - 32) as u32
}
