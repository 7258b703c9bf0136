//! A Fenwick (binary indexed) tree of u32 weights over `0..n`: prefix sums,
//! point updates and "which index holds cumulative position t" in O(log n).
//! The order -1 table of the model lives here, so that tokens seen before can be
//! removed from it (exclusion) at the cost of one update.

#[derive(Clone, Debug)]
pub struct Fenwick {
    tree: Vec<u32>,
    weights: Vec<u32>,
    total: u32,
}

impl Fenwick {
    /// Builds the tree over `weights` in O(n). The sum must fit in u32.
    pub fn new(weights: Vec<u32>) -> Self {
        let n = weights.len();
        let mut tree = vec![0u32; n + 1];
        let mut total = 0u32;
        for (i, &w) in weights.iter().enumerate() {
            total = total.checked_add(w).expect("fenwick total overflows u32");
            tree[i + 1] = tree[i + 1].wrapping_add(w);
            let parent = (i + 1) + ((i + 1) & (i + 1).wrapping_neg());
            if parent <= n {
                tree[parent] = tree[parent].wrapping_add(tree[i + 1]);
            }
        }
        Fenwick { tree, weights, total }
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// Sum of the weights of `0..i`.
    pub fn prefix(&self, i: usize) -> u32 {
        let mut i = i;
        let mut s = 0u32;
        while i > 0 {
            s = s.wrapping_add(self.tree[i]);
            i &= i - 1;
        }
        s
    }

    /// Adds `delta` to the weight of `i`.
    pub fn add(&mut self, i: usize, delta: u32) {
        self.weights[i] += delta;
        self.total += delta;
        let mut j = i + 1;
        while j < self.tree.len() {
            self.tree[j] = self.tree[j].wrapping_add(delta);
            j += j & j.wrapping_neg();
        }
    }

    /// Subtracts `delta` (at most the weight) from the weight of `i`.
    pub fn sub(&mut self, i: usize, delta: u32) {
        self.weights[i] -= delta;
        self.total -= delta;
        let mut j = i + 1;
        while j < self.tree.len() {
            self.tree[j] = self.tree[j].wrapping_sub(delta);
            j += j & j.wrapping_neg();
        }
    }

    /// Sets the weight of `i` to zero (removes it from the table).
    pub fn remove(&mut self, i: usize) {
        let w = self.weights[i];
        if w == 0 {
            return;
        }
        self.weights[i] = 0;
        self.total -= w;
        let mut j = i + 1;
        while j < self.tree.len() {
            self.tree[j] = self.tree[j].wrapping_sub(w);
            j += j & j.wrapping_neg();
        }
    }

    /// The index `i` with `prefix(i) <= t < prefix(i) + weight(i)`, for `t < total()`;
    /// returns `(i, prefix(i))`.
    pub fn find(&self, t: u32) -> (usize, u32) {
        debug_assert!(t < self.total);
        let n = self.tree.len() - 1;
        let mut pos = 0usize;
        let mut rem = t;
        let mut step = if n == 0 { 0 } else { 1usize << (usize::BITS - 1 - n.leading_zeros()) };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= rem {
                rem -= self.tree[next];
                pos = next;
            }
            step >>= 1;
        }
        // pos = number of leading entries whose cumulative sum <= t, i.e. the index.
        (pos, t - rem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_find_remove_agree_with_naive() {
        let weights: Vec<u32> = (0..1000u32).map(|i| (i * 7919 + 13) % 17).collect();
        let mut f = Fenwick::new(weights.clone());
        let mut w = weights;
        for step in 0..300usize {
            let idx = (step * 389) % w.len();
            f.remove(idx);
            w[idx] = 0;
            let total: u32 = w.iter().sum();
            assert_eq!(f.total(), total);
            let mut cum = 0u32;
            for (i, &wi) in w.iter().enumerate() {
                assert_eq!(f.prefix(i), cum);
                if wi > 0 && i % 7 == step % 7 {
                    assert_eq!(f.find(cum), (i, cum));
                    assert_eq!(f.find(cum + wi - 1), (i, cum));
                }
                cum += wi;
            }
        }
    }
}
