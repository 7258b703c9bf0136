//! The values of one edge, one `u64` per token.
//!
//! Serving engines hand out consecutive values far more often than not (the KV slots of
//! one allocation; `SessionStore`'s `session << 32 | position`; the trie's own fresh
//! values), so an edge whose values are `first, first + 1, ...` keeps only `first`: a
//! match then writes those values without reading them and touches only the edge's
//! tokens, which halves and more the memory a read brings in from the shared caches.
//! Any other sequence is kept as a list. Both forms give the same values back.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EdgeValues {
    /// `first, first + 1, ..., first + len - 1` (wrapping, as `u64` addition wraps).
    Run {
        first: u64,
        len: usize,
    },
    List(Box<[u64]>),
}

impl EdgeValues {
    /// The compact form of `v`.
    pub(crate) fn from_slice(v: &[u64]) -> EdgeValues {
        match v.first() {
            Some(&first)
                if v.iter()
                    .enumerate()
                    .all(|(i, &x)| x == first.wrapping_add(i as u64)) =>
            {
                EdgeValues::Run {
                    first,
                    len: v.len(),
                }
            }
            None => EdgeValues::Run { first: 0, len: 0 },
            _ => EdgeValues::List(v.into()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            EdgeValues::Run { len, .. } => *len,
            EdgeValues::List(v) => v.len(),
        }
    }

    /// Appends the first `n` values (`n <= len`) to `out`.
    #[inline]
    pub(crate) fn extend_prefix(&self, n: usize, out: &mut Vec<u64>) {
        match self {
            EdgeValues::Run { first, len } => {
                debug_assert!(n <= *len);
                let first = *first;
                out.extend((0..n as u64).map(|i| first.wrapping_add(i)));
            }
            EdgeValues::List(v) => out.extend_from_slice(&v[..n]),
        }
    }

    /// Appends every value to `out`.
    pub(crate) fn extend_all(&self, out: &mut Vec<u64>) {
        self.extend_prefix(self.len(), out)
    }

    /// The values of positions `start..end` (a list that became a run is stored as one).
    pub(crate) fn slice(&self, start: usize, end: usize) -> EdgeValues {
        match self {
            EdgeValues::Run { first, .. } => EdgeValues::Run {
                first: first.wrapping_add(start as u64),
                len: end - start,
            },
            EdgeValues::List(v) => EdgeValues::from_slice(&v[start..end]),
        }
    }

    /// Every value, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(move |i| match self {
            EdgeValues::Run { first, .. } => first.wrapping_add(i as u64),
            EdgeValues::List(v) => v[i],
        })
    }

    /// Heap bytes (the list's; a run has none).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            EdgeValues::Run { .. } => 0,
            EdgeValues::List(v) => 8 * v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EdgeValues;
    use proptest::prelude::*;

    fn expand(e: &EdgeValues) -> Vec<u64> {
        let mut out = Vec::new();
        e.extend_all(&mut out);
        out
    }

    #[test]
    fn runs_are_recognised_including_wrap_around() {
        assert_eq!(
            EdgeValues::from_slice(&[5, 6, 7]),
            EdgeValues::Run { first: 5, len: 3 }
        );
        assert_eq!(
            EdgeValues::from_slice(&[u64::MAX, 0, 1]),
            EdgeValues::Run {
                first: u64::MAX,
                len: 3
            }
        );
        assert_eq!(
            EdgeValues::from_slice(&[9]),
            EdgeValues::Run { first: 9, len: 1 }
        );
        assert!(matches!(
            EdgeValues::from_slice(&[1, 3]),
            EdgeValues::List(_)
        ));
        assert!(matches!(
            EdgeValues::from_slice(&[2, 1]),
            EdgeValues::List(_)
        ));
        assert_eq!(
            expand(&EdgeValues::from_slice(&[u64::MAX, 0])),
            vec![u64::MAX, 0]
        );
    }

    proptest! {
        #[test]
        fn every_form_gives_the_values_back(
            base in any::<u64>(),
            steps in prop::collection::vec(prop_oneof![4 => Just(1u64), 1 => any::<u64>()], 0..64),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut v = Vec::with_capacity(steps.len());
            let mut x = base;
            for s in &steps {
                v.push(x);
                x = x.wrapping_add(*s);
            }
            let e = EdgeValues::from_slice(&v);
            prop_assert_eq!(e.len(), v.len());
            prop_assert_eq!(expand(&e), v.clone());
            prop_assert_eq!(e.iter().collect::<Vec<_>>(), v.clone());
            if !v.is_empty() {
                let c = cut.index(v.len() + 1);
                let mut head = Vec::new();
                e.extend_prefix(c, &mut head);
                prop_assert_eq!(&head[..], &v[..c]);
                prop_assert_eq!(expand(&e.slice(0, c)), v[..c].to_vec());
                prop_assert_eq!(expand(&e.slice(c, v.len())), v[c..].to_vec());
            }
        }
    }
}
