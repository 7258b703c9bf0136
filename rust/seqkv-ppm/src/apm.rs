//! Integer logistic helpers and an adaptive probability map (APM, "secondary
//! estimation"): a learned correction of a probability given a small context.
//!
//! Probabilities are 16-bit (`p / 65536`). [`squash`] maps the logistic domain
//! `x = ln(p / (1 - p))` in units of 1/256 (clamped to ±2047) to a probability by
//! interpolating 33 integer knots; [`Stretch`] is its inverse on a 4096-entry grid,
//! built from `squash` by integer search. No floating point anywhere, so every
//! machine computes the same tables and the same updates.

/// `65536 / (1 + e^(-x/256))` at `x = -2048, -1920, ..., 2048` (rounded).
const KNOTS: [u32; 33] = [
    22, 36, 60, 98, 162, 267, 439, 720, 1179, 1921, 3108, 4971, 7812, 11955, 17625, 24743, 32768, 40793, 47911, 53581,
    57724, 60565, 62428, 63615, 64357, 64816, 65097, 65269, 65374, 65438, 65476, 65500, 65514,
];

/// The logistic function on the 1/256 grid, as a 16-bit probability.
#[inline]
pub fn squash(x: i32) -> u32 {
    let x = x.clamp(-2047, 2047);
    let w = (x & 127) as u32;
    let i = ((x >> 7) + 16) as usize;
    (KNOTS[i] * (128 - w) + KNOTS[i + 1] * w + 64) >> 7
}

/// The inverse of [`squash`]: `stretch(p)` is the smallest `x` with `squash(x) >= p`,
/// tabulated for the 4096 values of `p >> 4`.
#[derive(Clone, Debug)]
pub struct Stretch {
    table: Vec<i16>,
}

impl Stretch {
    pub fn new() -> Self {
        let mut table = Vec::with_capacity(4096);
        let mut x = -2047i32;
        for p12 in 0..4096u32 {
            while x < 2047 && squash(x) >> 4 < p12 {
                x += 1;
            }
            table.push(x as i16);
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

/// Per context, 33 knots over the stretched input probability, interpolated; after
/// the outcome both knots move toward it at rate `1 / (n + 2)` (n = the knot's
/// update count, capped at `limit`).
#[derive(Clone, Debug)]
pub struct Apm {
    /// (probability, update count) per knot.
    t: Vec<(u32, u16)>,
    idx: usize,
    wt: u32,
    limit: u16,
}

impl Apm {
    /// Knots start on the identity map (output = input).
    pub fn new(contexts: usize, limit: u16) -> Self {
        let knots = (0..33).map(|j| (squash((j - 16) * 128), 0u16));
        let t = (0..contexts).flat_map(|_| knots.clone()).collect();
        Apm { t, idx: 0, wt: 0, limit }
    }

    /// The refined probability of `p16` in context `cx`.
    pub fn refine(&mut self, st: &Stretch, p16: u32, cx: usize) -> u32 {
        let pos = (st.get(p16) + 2048) as u32 * 32; // knot position in units of 1/4096
        let j = (pos >> 12) as usize;
        self.wt = pos & 4095;
        self.idx = cx * 33 + j;
        let a = self.t[self.idx].0 as u64;
        let b = self.t[(self.idx + 1).min(self.t.len() - 1)].0 as u64;
        ((a * (4096 - self.wt as u64) + b * self.wt as u64) >> 12) as u32
    }

    /// Moves the knots of the last [`refine`](Self::refine) toward the outcome.
    pub fn update(&mut self, bit: bool) {
        let target: i64 = if bit { 65535 } else { 1 };
        for (k, share) in [(self.idx, 4096 - self.wt), (self.idx + 1, self.wt)] {
            // only the knot(s) the input was near: a knot with less than a quarter of
            // the interpolation weight stays
            if k >= self.t.len() || share < 1024 {
                continue;
            }
            let (p, n) = &mut self.t[k];
            let v = *p as i64 + (target - *p as i64) / (*n as i64 + 2);
            *p = v.clamp(1, 65535) as u32;
            if *n < self.limit {
                *n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squash_is_monotone_and_stretch_inverts_it() {
        let st = Stretch::new();
        let mut prev = 0;
        for x in -2047..=2047 {
            let p = squash(x);
            assert!(p >= prev);
            prev = p;
        }
        assert_eq!(squash(0), 32768);
        for p in (64..65472).step_by(97) {
            let x = st.get(p);
            // stretch(p) is within one grid step of the exact inverse on the 12-bit grid
            assert!(squash(x) >> 4 >= p >> 4, "p {p} x {x}");
            assert!(x == -2047 || squash(x - 1) >> 4 < p >> 4, "p {p} x {x}");
        }
    }

    #[test]
    fn apm_starts_near_identity_and_learns() {
        let st = Stretch::new();
        let mut apm = Apm::new(2, 255);
        for p in [1000u32, 16384, 32768, 50000, 64000] {
            let r = apm.refine(&st, p, 1);
            assert!((r as i64 - p as i64).abs() < p as i64 / 8 + 64, "p {p} r {r}");
        }
        // an input of 0.5 that is always followed by 1 is pushed up
        for _ in 0..200 {
            apm.refine(&st, 32768, 0);
            apm.update(true);
        }
        assert!(apm.refine(&st, 32768, 0) > 60000);
        // the other context is untouched
        assert!((apm.refine(&st, 32768, 1) as i64 - 32768).abs() < 64);
    }
}
