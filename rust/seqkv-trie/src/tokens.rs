//! The tokens of one edge.
//!
//! Most vocabularies fit 16 bits (SmolLM2 49,152 ids, Llama-2 32,000, GPT-2 50,257 does
//! not), so an edge whose ids are all below 2^16 keeps them as `u16`: half the bytes
//! stored per token, and half the edge bytes a match brings in from the shared caches,
//! which is what bounds read scaling once many cores match at once. Any other edge keeps
//! `u32`. Both forms compare against `u32` keys and give the same ids back.

use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EdgeTokens {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl EdgeTokens {
    /// The compact form of `t`.
    pub(crate) fn from_slice(t: &[u32]) -> EdgeTokens {
        if t.iter().all(|&x| x <= u16::MAX as u32) {
            EdgeTokens::Narrow(t.iter().map(|&x| x as u16).collect())
        } else {
            EdgeTokens::Wide(t.into())
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            EdgeTokens::Narrow(t) => t.len(),
            EdgeTokens::Wide(t) => t.len(),
        }
    }

    /// The id at position `i` (`i < len`).
    #[inline]
    pub(crate) fn at(&self, i: usize) -> u32 {
        match self {
            EdgeTokens::Narrow(t) => t[i] as u32,
            EdgeTokens::Wide(t) => t[i],
        }
    }

    /// Length of the common prefix of this edge and `key`.
    #[inline]
    pub(crate) fn lcp(&self, key: &[u32]) -> usize {
        match self {
            EdgeTokens::Narrow(t) => lcp_widened(t, key),
            EdgeTokens::Wide(t) => lcp_widened(t, key),
        }
    }

    /// Whether the edge begins with `prefix`.
    #[inline]
    pub(crate) fn starts_with(&self, prefix: &[u32]) -> bool {
        self.len() >= prefix.len() && self.lcp(prefix) == prefix.len()
    }

    /// Positions `start..end` (a wide run whose ids all fit 16 bits becomes narrow).
    pub(crate) fn slice(&self, start: usize, end: usize) -> EdgeTokens {
        match self {
            EdgeTokens::Narrow(t) => EdgeTokens::Narrow(t[start..end].into()),
            EdgeTokens::Wide(t) => EdgeTokens::from_slice(&t[start..end]),
        }
    }

    /// Every id, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(move |i| self.at(i))
    }

    /// Heap bytes of the ids.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            EdgeTokens::Narrow(t) => 2 * t.len(),
            EdgeTokens::Wide(t) => 4 * t.len(),
        }
    }

    /// Lexicographic order of the ids (what snapshots sort sibling edges by).
    pub(crate) fn cmp_ids(&self, other: &EdgeTokens) -> Ordering {
        self.iter().cmp(other.iter())
    }
}

/// Length of the common prefix of `a` (ids of any width up to 32 bits) and `b`. Compares
/// 16 ids per step without an early exit inside the step, so that the compiler turns the
/// step into a few vector instructions (a widening load for `u16`).
#[inline]
pub(crate) fn lcp_widened<T: Copy + Into<u32>>(a: &[T], b: &[u32]) -> usize {
    const W: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + W <= n {
        let x: &[T; W] = a[i..i + W].try_into().unwrap();
        let y: &[u32; W] = b[i..i + W].try_into().unwrap();
        let mut diff = 0u32;
        for j in 0..W {
            diff |= x[j].into() ^ y[j];
        }
        if diff != 0 {
            break;
        }
        i += W;
    }
    while i < n && a[i].into() == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::EdgeTokens;
    use proptest::prelude::*;

    #[test]
    fn width_follows_the_largest_id() {
        assert!(matches!(EdgeTokens::from_slice(&[0, 65535]), EdgeTokens::Narrow(_)));
        assert!(matches!(EdgeTokens::from_slice(&[0, 65536]), EdgeTokens::Wide(_)));
        assert!(matches!(EdgeTokens::from_slice(&[70000, 1, 2]).slice(1, 3), EdgeTokens::Narrow(_)));
        assert_eq!(EdgeTokens::from_slice(&[65536 + 7]).lcp(&[7]), 0, "no truncation to 16 bits");
    }

    fn ids() -> impl Strategy<Value = u32> {
        prop_oneof![4 => 0u32..8, 1 => 65530u32..65542, 1 => any::<u32>()]
    }

    proptest! {
        #[test]
        fn every_form_compares_and_gives_the_ids_back(
            t in prop::collection::vec(ids(), 0..80),
            key in prop::collection::vec(ids(), 0..80),
            share in 0usize..80,
            cut in any::<prop::sample::Index>(),
        ) {
            let e = EdgeTokens::from_slice(&t);
            prop_assert_eq!(e.len(), t.len());
            prop_assert_eq!(e.iter().collect::<Vec<_>>(), t.clone());
            // A key sharing a chosen prefix with the edge, then free.
            let s = share.min(t.len());
            let key: Vec<u32> = t[..s].iter().copied().chain(key).collect();
            let want = t.iter().zip(&key).take_while(|(a, b)| a == b).count();
            prop_assert_eq!(e.lcp(&key), want);
            prop_assert_eq!(e.starts_with(&key), want == key.len());
            let c = cut.index(t.len() + 1);
            prop_assert_eq!(e.slice(0, c).iter().collect::<Vec<_>>(), t[..c].to_vec());
            prop_assert_eq!(e.slice(c, t.len()).iter().collect::<Vec<_>>(), t[c..].to_vec());
            let other = EdgeTokens::from_slice(&key);
            prop_assert_eq!(e.cmp_ids(&other), t.cmp(&key));
        }
    }
}
