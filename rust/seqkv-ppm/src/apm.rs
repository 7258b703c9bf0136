//! Integer logistic helpers and an adaptive probability map (secondary estimation).
//!
//! Probabilities are 16-bit (`1..65535` of 65536). `stretch` maps them to the
//! logistic domain `ln(p/(1-p))` in 1/256 units, clamped to ±2047·... all by
//! tables built with integer arithmetic only, so every machine gets the same bits.

/// squash(x) for x in [-2048, 2047] (units of 1/256 nat... the lpaq convention
/// scaled to 16-bit outputs): `65536 / (1 + e^(-x/256))`, interpolated from 33 knots.
const KNOTS: [u32; 33] = [
    16, 32, 48, 96, 160, 256, 432, 720, 1168, 1920, 3104, 4960, 7808, 11952, 17616, 24736, 32768,
    40800, 47920, 53584, 57728, 60576, 62416, 63600, 64352, 64800, 65088, 65264, 65360, 65424,
    65472, 65488, 65504,
];

#[inline]
pub fn squash(x: i32) -> u32 {
    if x >= 2047 {
        return KNOTS[32];
    }
    if x <= -2047 {
        return KNOTS[0];
    }
    let w = (x & 127) as u32;
    let i = ((x >> 7) + 16) as usize;
    (KNOTS[i] * (128 - w) + KNOTS[i + 1] * w + 64) >> 7
}

/// Inverse of [`squash`] on a 4096-entry grid of 16-bit probabilities.
pub struct Stretch {
    table: Vec<i16>,
}

impl Stretch {
    pub fn new() -> Self {
        let mut table = vec![0i16; 4096];
        let mut pi = 0usize;
        for x in -2047..=2047i32 {
            let v = (squash(x) >> 4) as usize; // 12-bit
            for j in pi..=v.min(4095) {
                table[j] = x as i16;
            }
            pi = pi.max(v + 1);
        }
        for j in pi..4096 {
            table[j] = 2047;
        }
        Stretch { table }
    }

    #[inline]
    pub fn get(&self, p16: u32) -> i32 {
        self.table[(p16 >> 4).min(4095) as usize] as i32
    }
}

impl Default for Stretch {
    fn default() -> Self {
        Self::new()
    }
}

/// Adaptive probability map: per context, 33 knots over the stretched input,
/// interpolated; both neighbours move toward the outcome at a count-based rate.
pub struct Apm {
    t: Vec<(u32, u16)>,
    idx: usize,
    wt: u32,
    limit: u16,
}

impl Apm {
    pub fn new(contexts: usize, limit: u16) -> Self {
        let mut t = Vec::with_capacity(contexts * 33);
        for _ in 0..contexts {
            for j in 0..33 {
                t.push((squash((j as i32 - 16) * 128), 0));
            }
        }
        Apm { t, idx: 0, wt: 0, limit }
    }

    /// Refined probability of the input `p16` in context `cx`.
    pub fn refine(&mut self, st: &Stretch, p16: u32, cx: usize) -> u32 {
        let s = st.get(p16) + 2048; // 1..4095
        let pos = (s as u32) * 32; // 0..131040 in units of 1/4096 knot
        let j = (pos >> 12) as usize;
        let wt = pos & 4095;
        self.idx = cx * 33 + j;
        self.wt = wt;
        let a = self.t[self.idx].0 as u64;
        let b = self.t[(self.idx + 1).min(self.t.len() - 1)].0 as u64;
        ((a * (4096 - wt as u64) + b * wt as u64) >> 12) as u32
    }

    /// Updates the knots used by the last `refine` with the outcome.
    pub fn update(&mut self, bit: bool) {
        let target: i64 = if bit { 65535 } else { 1 };
        for (k, share) in [(self.idx, 4096 - self.wt), (self.idx + 1, self.wt)] {
            if k >= self.t.len() || share < 1024 {
                continue;
            }
            let e = &mut self.t[k];
            let n = e.1 as i64;
            let v = e.0 as i64 + (target - e.0 as i64) / (n + 2);
            e.0 = v.clamp(1, 65535) as u32;
            if e.1 < self.limit {
                e.1 += 1;
            }
        }
    }
}
