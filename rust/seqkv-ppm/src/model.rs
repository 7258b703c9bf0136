//! The context model (research version 2: interpolated Pitman-Yor / Kneser-Ney style
//! blending of orders K..0, then the static order -1 table; integer fixed point).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::channel::Channel;
use crate::fenwick::Fenwick;
use crate::Error;

#[derive(Default)]
pub struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!()
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type Map = HashMap<u64, u32, BuildHasherDefault<IdHasher>>;

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    let mut z = (h ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub const MAXK: usize = 8;
pub static DETSTATS: std::sync::Mutex<[(u32, u32, u32); 160]> = std::sync::Mutex::new([(0, 0, 0); 160]);

#[derive(Clone, Debug)]
pub struct Tuning {
    pub max_order: usize,
    /// 0 = full update, 1 = minimal path (continuation counts)
    pub update: u32,
    pub zipf_c: u32,
    /// discount per order, in 1/64 (for counts 1, 2, >=3)
    pub d1: [u32; MAXK + 1],
    pub d2: [u32; MAXK + 1],
    pub d3: [u32; MAXK + 1],
    /// strength per order, in 1/64
    pub theta: [u32; MAXK + 1],
    pub rb: u32,
    pub hl: u32,
    /// SEE: 0 = off; otherwise adaptation limit
    pub see: u32,
    pub see_lo: u32,
    /// context masks per level (bit j = token j+1 back), level 1 first; empty = orders 1..=max_order
    pub masks: Vec<u32>,
    pub transparent: Vec<u32>,
    pub ctx_mode: u32,
    pub aux_masks: Vec<u32>,
    pub aux_beta: Vec<u32>,
    /// APM mode: 0 off; weight of the refined probability in 1/4
    pub apm_w: u32,
    pub apm_limit: u32,
    pub lb: u32,
    pub raw_w: u32,
    pub rw2: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_order: 3,
            update: 1,
            zipf_c: 200,
            d1: [48; MAXK + 1],
            d2: [48; MAXK + 1],
            d3: [48; MAXK + 1],
            theta: [32; MAXK + 1],
            rb: 0,
            hl: 64,
            see: 0,
            see_lo: 64,
            masks: Vec::new(),
            transparent: Vec::new(),
            ctx_mode: 0,
            aux_masks: Vec::new(),
            aux_beta: Vec::new(),
            apm_w: 0,
            apm_limit: 255,
            lb: 0,
            raw_w: 0,
            rw2: 0,
        }
    }
}

#[derive(Default, Clone)]
struct Node {
    syms: Vec<u32>,
    counts: Vec<u32>,
    total: u32,
    last: u32,
}

pub struct Model {
    vocab: u32,
    t: Tuning,
    hist: Vec<u32>,
    map: Map,
    nodes: Vec<Node>,
    table: Fenwick,
    mark: Vec<u32>,
    acc: Vec<u64>,
    stamp: u32,
    cand: Vec<u32>,
    freq: Vec<u32>,
    found: Vec<Option<u32>>,
    keys: Vec<u64>,
    last: Vec<u32>,
    top: Vec<u8>,
    see: Vec<(u32, u32)>,
    used: Vec<Option<(usize, u64, u64, u32)>>,
    is_tr: Vec<bool>,
    fhist: Vec<u32>,
    mark2: Vec<u32>,
    boost: Vec<u32>,
    aux_found: Vec<Option<u32>>,
    aux_keys: Vec<u64>,
    st: crate::apm::Stretch,
    apm1: crate::apm::Apm,
    apm2: crate::apm::Apm,
    prev_novel: bool,
    raw0: Vec<u32>,
}

pub fn static_weights(vocab: u32, c: u32) -> Vec<u32> {
    (0..vocab).map(|i| static_weights_one(i, c)).collect()
}

pub fn static_weights_one(i: u32, c: u32) -> u32 {
    let a: u64 = 1 << 16;
    1 + (a * 64 / (i as u64 + c as u64)) as u32
}

fn bucket(x: u32) -> usize {
    match x {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4..=5 => 4,
        6..=8 => 5,
        9..=15 => 6,
        _ => 7,
    }
}

fn see_idx(k: usize, t: u32, n: u32) -> usize {
    let r = if n >= 2 * t { if n >= 4 * t { 2 } else { 1 } } else { 0 };
    k * 256 + bucket(t) * 32 + bucket(n) * 4 + r
}

impl Model {
    pub fn new(vocab: u32, mut t: Tuning) -> Self {
        if t.masks.is_empty() {
            t.masks = (1..=t.max_order).map(|k| (1u32 << k) - 1).collect();
        }
        t.max_order = t.masks.len();
        let table = Fenwick::new(static_weights(vocab, t.zipf_c));
        let k = t.max_order;
        let t_tr = t.transparent.clone();
        let t_aux = t.aux_masks.len();
        let t_lim = t.apm_limit as u16;
        Model {
            vocab,
            t,
            hist: Vec::new(),
            map: Map::default(),
            nodes: vec![Node::default()],
            table,
            mark: vec![0; vocab as usize],
            acc: vec![0; vocab as usize],
            stamp: 0,
            cand: Vec::new(),
            freq: Vec::new(),
            found: vec![None; k + 1],
            keys: vec![0; k + 1],
            last: vec![0; vocab as usize],
            top: vec![0; vocab as usize],
            see: vec![(0, 0); (MAXK + 1) * 256],
            used: vec![None; k + 1],
            is_tr: {
                let mut v = vec![false; vocab as usize];
                for &x in &t_tr {
                    v[x as usize] = true;
                }
                v
            },
            fhist: Vec::new(),
            mark2: vec![0; vocab as usize],
            boost: vec![0; vocab as usize],
            aux_found: vec![None; t_aux],
            aux_keys: vec![0; t_aux],
            st: crate::apm::Stretch::new(),
            apm1: crate::apm::Apm::new(64, t_lim),
            apm2: crate::apm::Apm::new(8, t_lim),
            prev_novel: false,
            raw0: vec![0; vocab as usize],
        }
    }

    fn lookup(&mut self) {
        self.found[0] = Some(0);
        for k in 1..=self.t.max_order {
            let mf = self.t.masks[k - 1];
            let hist = if mf >> 31 == 1 || self.t.ctx_mode == 1 { &self.fhist } else { &self.hist };
            let m = mf & 0x7fff_ffff;
            let n = hist.len();
            let span = 32 - m.leading_zeros() as usize;
            if span > n {
                self.found[k] = None;
                self.keys[k] = 0;
                continue;
            }
            let mut h = 0x1234_5678u64;
            for j in 0..span {
                if m >> j & 1 == 1 {
                    h = mix(h, hist[n - 1 - j] as u64 | (j as u64) << 32);
                }
            }
            let key = mix(h, m as u64);
            self.keys[k] = key;
            self.found[k] = self.map.get(&key).copied();
        }
        for k in 1..=self.t.max_order {
            if self.keys[k] != 0 && (k + 1..=self.t.max_order).any(|j| self.keys[j] == self.keys[k]) {
                self.keys[k] = 0;
                self.found[k] = None;
            }
        }
    }

    fn ctx_key(&self, m: u32) -> Option<u64> {
        let n = self.hist.len();
        let span = 32 - m.leading_zeros() as usize;
        if span > n {
            return None;
        }
        let mut h = 0x8765_4321u64;
        for j in 0..span {
            if m >> j & 1 == 1 {
                h = mix(h, self.hist[n - 1 - j] as u64 | (j as u64) << 32);
            }
        }
        Some(mix(h, m as u64 | 1 << 40))
    }

    #[inline]
    fn disc(&self, k: usize, c: u32) -> u32 {
        match c {
            1 => self.t.d1[k],
            2 => self.t.d2[k],
            _ => self.t.d3[k],
        }
    }

    /// (den, b): the node's denominator and its escape numerator, in 1/64 units.
    fn node_params(&self, k: usize, node: &Node) -> (u64, u64) {
        let mut dsum = 0u64;
        for &c in &node.counts {
            dsum += self.disc(k, c) as u64;
        }
        let theta = self.t.theta[k] as u64;
        let lb = if k > 0 && node.total > 0 { self.t.lb as u64 } else { 0 };
        (64 * node.total as u64 + theta + lb, theta + dsum)
    }

    /// Codes (or decodes) one token through `ch`.
    pub fn step<C: Channel>(&mut self, ch: &mut C) -> Result<u32, Error> {
        self.lookup();
        for j in 0..self.t.aux_masks.len() {
            match self.ctx_key(self.t.aux_masks[j]) {
                Some(key) => {
                    self.aux_keys[j] = key;
                    self.aux_found[j] = self.map.get(&key).copied();
                }
                None => {
                    self.aux_keys[j] = 0;
                    self.aux_found[j] = None;
                }
            }
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|e| *e = 0);
            self.stamp = 1;
        }
        let stamp = self.stamp;
        const ONE: u64 = 1 << 32;
        // Weight of the current order, in 2^-32 units.
        let mut w: u64 = ONE;
        self.cand.clear();
        for k in (1..=self.t.max_order).rev() {
            let Some(ni) = self.found[k] else { continue };
            let node = &self.nodes[ni as usize];
            if node.total == 0 {
                continue;
            }
            let (den, b) = self.node_params(k, node);
            if self.t.see > 0 {
                let p_py = (b << 16) / den;
                let idx = see_idx(k, node.syms.len() as u32, node.total);
                let cell = &mut self.see[idx];
                if cell.1 == 0 {
                    *cell = (p_py as u32, 1);
                }
                let e = (cell.0 as u64).clamp(self.t.see_lo as u64, 65536 - 64);
                self.used[k] = Some((idx, e, (den - b).max(1), ni));
                let asum = den - self.t.theta[k] as u64 - b + self.t.theta[k] as u64;
                let asum = asum.max(1);
                let ws = (w * (65536 - e)) >> 16;
                for (&s, &c) in node.syms.iter().zip(&node.counts) {
                    let a = 64 * c as u64 - self.disc(k, c) as u64;
                    let contrib = ws * a / asum;
                    let si = s as usize;
                    if self.mark[si] != stamp {
                        self.mark[si] = stamp;
                        self.acc[si] = contrib;
                        self.top[si] = k as u8;
                        self.cand.push(s);
                    } else {
                        self.acc[si] += contrib;
                    }
                }
                w = (w * e) >> 16;
                continue;
            }
            for (&s, &c) in node.syms.iter().zip(&node.counts) {
                let mut a = 64 * c as u64 - self.disc(k, c) as u64;
                if s == node.last {
                    a += self.t.lb as u64;
                }
                let contrib = w * a / den;
                let si = s as usize;
                if self.mark[si] != stamp {
                    self.mark[si] = stamp;
                    self.acc[si] = contrib;
                    self.top[si] = k as u8;
                    self.cand.push(s);
                } else {
                    self.acc[si] += contrib;
                }
            }
            w = w * b / den;
        }
        // order 0
        let node0 = &self.nodes[0];
        let (den0, b0) = self.node_params(0, node0);
        let mut coded = None;
        if !self.cand.is_empty() {
            // order-0 contributions of the candidates, and the rest mass.
            let mut a0_u = 0u64;
            let mut a0_all = 0u64;
            for (&s, &c) in node0.syms.iter().zip(&node0.counts) {
                let a = 64 * c as u64 - self.disc(0, c) as u64;
                a0_all += a;
                if self.mark[s as usize] == stamp {
                    a0_u += a;
                    self.acc[s as usize] += w * a / den0;
                }
            }
            let rest = w * (a0_all - a0_u + b0) / den0;
            self.freq.clear();
            for &s in &self.cand {
                self.freq.push(((self.acc[s as usize] >> 12) as u32).max(1));
            }
            let esc = ((rest >> 12) as u32).max(1);
            ch.note(1);
            if self.t.apm_w > 0 {
                let sum: u64 = self.freq.iter().map(|&f| f as u64).sum();
                let p = ((esc as u64 * 65536) / (sum + esc as u64)).clamp(32, 65504) as u32;
                let top = (1..=self.t.max_order).rev().find(|&k| self.found[k].is_some()).unwrap_or(0);
                let nc = match self.cand.len() {
                    1 => 0,
                    2..=3 => 1,
                    4..=15 => 2,
                    _ => 3,
                };
                let cx = top.min(7) * 4 + nc;
                let r = self.apm1.refine(&self.st, p, cx);
                let pf = ((p * (4 - self.t.apm_w) + r * self.t.apm_w) / 4).clamp(32, 65504);
                let escaped = ch.escape(pf, &self.cand)?;
                self.apm1.update(escaped);
                if !escaped {
                    let i = ch.choose(&self.cand, &self.freq, 0)?.ok_or(Error::Corrupt("no candidate"))?;
                    coded = Some(self.cand[i]);
                }
            } else if let Some(i) = ch.choose(&self.cand, &self.freq, esc)? {
                coded = Some(self.cand[i]);
            }
        }
        if coded.is_none() && node0.total > 0 {
            // order 0 over the symbols not offered above, escape to order -1
            let mut syms = std::mem::take(&mut self.cand);
            syms.clear();
            self.freq.clear();
            for j in 0..self.aux_found.len() {
                if let Some(ni) = self.aux_found[j] {
                    let node = &self.nodes[ni as usize];
                    for (&s, &c) in node.syms.iter().zip(&node.counts) {
                        let si = s as usize;
                        if self.mark2[si] != stamp {
                            self.mark2[si] = stamp;
                            self.boost[si] = 0;
                        }
                        self.boost[si] += self.t.aux_beta[j] * c;
                    }
                }
            }
            for (&s, &c) in node0.syms.iter().zip(&node0.counts) {
                if self.mark[s as usize] != stamp {
                    syms.push(s);
                    let bonus = if self.t.rw2 > 0 {
                        let n = self.hist.len();
                        let lo = n.saturating_sub(self.t.rw2 as usize);
                        self.hist[lo..].iter().filter(|&&x| x == s).count() as u32 * self.t.rb * 64 / 4
                    } else {
                        let dist = (self.hist.len() as u32 - self.last[s as usize]) / self.t.hl;
                        if dist < 31 { (self.t.rb * 64) >> dist } else { 0 }
                    };
                    let bo = if self.mark2[s as usize] == stamp { self.boost[s as usize] } else { 0 };
                    let c = if self.t.raw_w > 0 { (self.raw0[s as usize] * self.t.raw_w + c * 16) / 16 } else { c };
                    self.freq.push((64 * c - self.disc(0, c)) as u32 + bonus + bo);
                }
            }
            let esc = b0 as u32;
            ch.note(0);
            if self.t.apm_w > 0 && !syms.is_empty() {
                let sum: u64 = self.freq.iter().map(|&f| f as u64).sum();
                let p = ((esc as u64 * 65536) / (sum + esc as u64)).clamp(32, 65504) as u32;
                let cx = (self.prev_novel as usize) * 2 + (self.cand.is_empty() as usize);
                let r = self.apm2.refine(&self.st, p, cx);
                let pf = ((p * (4 - self.t.apm_w) + r * self.t.apm_w) / 4).clamp(32, 65504);
                let escaped = ch.escape(pf, &syms)?;
                self.apm2.update(escaped);
                if !escaped {
                    let i = ch.choose(&syms, &self.freq, 0)?.ok_or(Error::Corrupt("no candidate"))?;
                    coded = Some(syms[i]);
                }
            } else if let Some(i) = ch.choose(&syms, &self.freq, esc)? {
                coded = Some(syms[i]);
            }
            self.cand = syms;
        }
        let sym = match coded {
            Some(s) => s,
            None => {
                ch.note(self.t.max_order + 1);
                let s = ch.choose_static(&self.table)?;
                self.table.remove(s as usize);
                s
            }
        };
        self.prev_novel = coded.is_none();
        if self.t.see > 0 {
            // P_0(sym) in 2^-32 units
            let node0 = &self.nodes[0];
            let mut p_low: u64 = match node0.syms.iter().position(|&x| x == sym) {
                Some(i) => {
                    let c = node0.counts[i];
                    ((64 * c - self.disc(0, c)) as u64) * (1u64 << 32) / den0
                }
                None => {
                    let wsym = static_weights_one(sym, self.t.zipf_c) as u64;
                    let tot = self.table.total() as u64 + wsym;
                    (b0 << 32) / den0 * wsym / tot
                }
            }
            .max(1);
            for k in 1..=self.t.max_order {
                if let Some((idx, e, asum, ni)) = self.used[k].take() {
                    let node = &self.nodes[ni as usize];
                    let q = match node.syms.iter().position(|&x| x == sym) {
                        Some(i) => {
                            let c = node.counts[i];
                            (64 * c as u64 - self.disc(k, c) as u64) * (1u64 << 32) / asum
                        }
                        None => 0,
                    };
                    let low = (e * p_low) >> 16;
                    let pk = (((65536 - e) * q) >> 16) + low;
                    let pk = pk.max(1);
                    let r = ((low as u128 * 65536) / pk as u128) as i64;
                    let cell = &mut self.see[idx];
                    let n = cell.1.min(self.t.see);
                    let p = cell.0 as i64 + (r - cell.0 as i64) / (n as i64 + 1);
                    cell.0 = p as u32;
                    cell.1 += 1;
                    p_low = pk;
                }
            }
        }
        if std::env::var("DET").is_ok() {
            for k in 1..=self.t.max_order {
                if let Some(ni) = self.found[k] {
                    let node = &self.nodes[ni as usize];
                    let t = node.syms.len().min(3);
                    if t >= 1 {
                        let n = node.total.min(4) as usize;
                        let hit = node.syms.iter().zip(&node.counts).max_by_key(|x| *x.1).map(|x| *x.0 == sym).unwrap();
                        let anyhit = node.syms.contains(&sym);
                        let e = &mut DETSTATS.lock().unwrap()[k * 16 + t * 4 + (n - 1).min(3)];
                        e.0 += 1;
                        e.1 += hit as u32;
                        e.2 += anyhit as u32;
                    }
                }
            }
        }
        self.update(sym);
        Ok(sym)
    }

    fn update(&mut self, sym: u32) {
        for j in 0..self.aux_found.len() {
            if self.aux_keys[j] == 0 {
                continue;
            }
            let ni = match self.aux_found[j] {
                Some(ni) => ni,
                None => {
                    let ni = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.map.insert(self.aux_keys[j], ni);
                    ni
                }
            };
            let node = &mut self.nodes[ni as usize];
            match node.syms.iter().position(|&s| s == sym) {
                Some(i) => node.counts[i] += 1,
                None => {
                    node.syms.push(sym);
                    node.counts.push(1);
                }
            }
            node.total += 1;
        }
        let n = self.hist.len();
        for k in (0..=self.t.max_order).rev() {
            if k > 0 && self.found[k].is_none() && self.keys[k] == 0 {
                continue;
            }
            let ni = match self.found[k] {
                Some(ni) => ni,
                None => {
                    let ni = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.map.insert(self.keys[k], ni);
                    ni
                }
            };
            let node = &mut self.nodes[ni as usize];
            let existed = match node.syms.iter().position(|&s| s == sym) {
                Some(i) => {
                    node.counts[i] += 1;
                    true
                }
                None => {
                    node.syms.push(sym);
                    node.counts.push(1);
                    false
                }
            };
            node.total += 1;
            node.last = sym;
            if node.total > 60000 {
                node.total = 0;
                for c in node.counts.iter_mut() {
                    *c = (*c + 1) / 2;
                    node.total += *c;
                }
            }
            if existed && self.t.update == 1 {
                break;
            }
        }
        self.hist.push(sym);
        self.raw0[sym as usize] += 1;
        if !self.is_tr[sym as usize] {
            self.fhist.push(sym);
        }
        self.last[sym as usize] = self.hist.len() as u32 - 1;
    }

    pub fn vocab(&self) -> u32 {
        self.vocab
    }
}
