//! The bisection of a batch the store refused for the values of some of its rows: which
//! pieces to insert, in which order, so that every other row lands once and each refused row
//! is found — the same pieces whichever member splits the batch, and however often.
//!
//! The pieces are the nodes of a binary tree over the batch's offset range (for a re-cut batch,
//! the range the first member recorded), halved at the middle offset and visited depth first,
//! left before right: a piece lands, or is refused and its halves come next, or is refused
//! holding one row — the culprit. Pieces land in offset order, so the store's high-water mark
//! stays meaningful: every row at or below it has landed or been dead-lettered.
//!
//! A member taking the partition over in the middle of a split meets the same tree again, from
//! the recorded range, with the high-water mark it read as the floor ([`crate::Recut`]):
//! - a node wholly above the floor is tried as the first member tried it — so in a store that
//!   drops a block it has seen, the piece the crashed member had in flight is dropped if it
//!   lands after all;
//! - a node holding the floor was refused before (some of its rows landed in a smaller piece):
//!   its halves come next, without trying it again;
//! - nodes at or below the floor are done (the re-cut batch has no rows there).

use std::ops::Range;

/// The split of one batch: the pieces to try, in order.
#[derive(Debug)]
pub struct Split {
    /// Each row's key, ascending: its offset (or its index, where offsets do not ascend).
    keys: Vec<u64>,
    floor: Option<u64>,
    /// Key ranges still to visit, the next one last.
    todo: Vec<(u64, u64)>,
    /// The key range last handed out.
    current: Option<(u64, u64)>,
}

impl Split {
    /// `offsets`: each row's bus offset, in batch order. `root`: the range the tree spans —
    /// the recorded range of a re-cut batch; the batch's own range if `None` or if a row lies
    /// outside it. `floor`: the high-water mark a re-cut batch was cut above. Rows without
    /// ascending offsets (Kinesis sequence numbers are not offsets) are split by index.
    pub fn new(offsets: Vec<u64>, root: Option<(u64, u64)>, floor: Option<u64>) -> Self {
        let ascending = offsets.windows(2).all(|w| w[0] < w[1]);
        let (keys, root, floor) = match (offsets.first(), offsets.last()) {
            (Some(&first), Some(&last)) if ascending => match root {
                Some((lo, hi)) if lo <= first && last <= hi => (offsets, (lo, hi), floor),
                _ => (offsets, (first, last), None),
            },
            _ => {
                let n = offsets.len() as u64;
                ((0..n).collect(), (0, n.saturating_sub(1)), None)
            }
        };
        let todo = if keys.is_empty() {
            Vec::new()
        } else {
            vec![root]
        };
        Split {
            keys,
            floor,
            todo,
            current: None,
        }
    }

    /// The next piece to try (a range of row indices); `None` once every row has landed or
    /// been found refused.
    pub fn next_piece(&mut self) -> Option<Range<usize>> {
        while let Some((lo, hi)) = self.todo.pop() {
            let rows = self.rows(lo, hi);
            if rows.is_empty() {
                continue;
            }
            if lo < hi && self.floor.is_some_and(|floor| lo <= floor) {
                self.halve(lo, hi);
                continue;
            }
            self.current = Some((lo, hi));
            return Some(rows);
        }
        None
    }

    /// The piece last handed out was refused: its halves come next (true). A piece of one row
    /// cannot be halved: that row is refused on its own (false).
    pub fn refused(&mut self) -> bool {
        match self.current.take() {
            Some((lo, hi)) if self.rows(lo, hi).len() > 1 => {
                self.halve(lo, hi);
                true
            }
            _ => false,
        }
    }

    fn halve(&mut self, lo: u64, hi: u64) {
        let mid = lo + (hi - lo) / 2;
        self.todo.push((mid + 1, hi));
        self.todo.push((lo, mid));
    }

    fn rows(&self, lo: u64, hi: u64) -> Range<usize> {
        self.keys.partition_point(|k| *k < lo)..self.keys.partition_point(|k| *k <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Plays a split against a store that refuses every piece holding a bad offset: the
    /// pieces tried (as offsets), what landed, and the rows found refused.
    fn play(
        offsets: &[u64],
        bad: &BTreeSet<u64>,
        root: Option<(u64, u64)>,
        floor: Option<u64>,
    ) -> (Vec<Vec<u64>>, Vec<u64>, Vec<u64>) {
        let mut split = Split::new(offsets.to_vec(), root, floor);
        let (mut tried, mut landed, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(piece) = split.next_piece() {
            let rows = offsets[piece].to_vec();
            tried.push(rows.clone());
            if rows.iter().any(|o| bad.contains(o)) {
                if !split.refused() {
                    refused.extend(rows);
                }
            } else {
                landed.extend(rows);
            }
        }
        (tried, landed, refused)
    }

    #[test]
    fn a_batch_without_bad_rows_is_one_piece() {
        let offsets: Vec<u64> = (10..20).collect();
        let (tried, landed, refused) = play(&offsets, &BTreeSet::new(), None, None);
        assert_eq!(tried, vec![offsets.clone()]);
        assert_eq!((landed, refused), (offsets, vec![]));
    }

    #[test]
    fn bad_rows_are_found_and_the_rest_lands_once_in_offset_order() {
        // Offsets with gaps (records that yielded no row) and bad rows at both ends.
        let offsets: Vec<u64> = (0..200).filter(|o| o % 7 != 3).collect();
        let bad: BTreeSet<u64> = [0, 57, 58, 198].into();
        let (tried, landed, refused) = play(&offsets, &bad, None, None);
        assert_eq!(refused, vec![0, 57, 58, 198]);
        let good: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|o| !bad.contains(o))
            .collect();
        assert_eq!(landed, good, "each good row once, ascending");
        // About 2·log2(n) tries per bad row, not one per row.
        assert!(tried.len() < 4 * 8 * 2 + 1, "{}", tried.len());
        assert_eq!(tried[0], offsets, "the whole batch first");
    }

    #[test]
    fn rows_without_ascending_offsets_are_split_by_index() {
        let offsets = vec![0; 8]; // Kinesis: no offsets
        let mut split = Split::new(offsets, None, None);
        assert_eq!(split.next_piece(), Some(0..8));
        assert!(split.refused());
        assert_eq!(split.next_piece(), Some(0..4));
        assert!(split.refused());
        assert_eq!(split.next_piece(), Some(0..2));
        assert!(split.refused());
        assert_eq!(split.next_piece(), Some(0..1));
        assert!(!split.refused(), "one row: the culprit");
        assert_eq!(split.next_piece(), Some(1..2));
        assert_eq!(split.next_piece(), Some(2..4));
        assert_eq!(split.next_piece(), Some(4..8));
        assert_eq!(split.next_piece(), None);
    }

    /// Every way a member can die in the middle of a split: the next member, re-cutting the
    /// rows above the mark with the recorded range and the mark as floor, tries exactly the
    /// piece the first one had in flight (so a store that drops seen blocks drops one of the
    /// two), lands every row not yet landed once, and finds the same bad rows.
    #[test]
    fn a_member_taking_over_mid_split_tries_the_same_pieces() {
        let offsets: Vec<u64> = (100..164).filter(|o| o % 5 != 0).collect();
        for bad in [
            BTreeSet::from([101]),
            BTreeSet::from([130, 131]),
            BTreeSet::from([102, 117, 148, 163]),
            offsets.iter().copied().filter(|o| o % 3 == 0).collect(),
        ] {
            let root = (offsets[0], offsets[offsets.len() - 1]);
            let (tried, _, refused) = play(&offsets, &bad, None, None);
            // The first member dies with piece `k` in flight.
            for (k, in_flight) in tried.iter().enumerate() {
                let before = &tried[..k];
                let landed: Vec<u64> = before
                    .iter()
                    .filter(|p| !p.iter().any(|o| bad.contains(o)))
                    .flatten()
                    .copied()
                    .collect();
                let mark = landed.iter().max().copied();
                let replayed: Vec<u64> = offsets
                    .iter()
                    .copied()
                    .filter(|o| mark.is_none_or(|m| *o > m))
                    .collect();
                let (tried2, landed2, refused2) = play(&replayed, &bad, Some(root), mark);
                assert!(
                    tried2.contains(in_flight),
                    "bad {bad:?}, dying at {k}: {in_flight:?} not among {tried2:?}"
                );
                let mut all: Vec<u64> = landed.iter().chain(&landed2).copied().collect();
                all.sort_unstable();
                let good: Vec<u64> = offsets
                    .iter()
                    .copied()
                    .filter(|o| !bad.contains(o))
                    .collect();
                assert_eq!(all, good, "bad {bad:?}, dying at {k}: each good row once");
                // Rows the first member had found refused above the mark are found again.
                let above: Vec<u64> = refused
                    .iter()
                    .copied()
                    .filter(|o| mark.is_none_or(|m| *o > m))
                    .collect();
                assert_eq!(refused2, above, "bad {bad:?}, dying at {k}");
            }
        }
    }

    #[test]
    fn a_split_over_its_own_range_would_not_meet_the_piece_in_flight() {
        // Why the re-cut batch carries the recorded range: the first member's tree over
        // [0, 99], bad rows 10 and 70, dies while inserting [13, 24] (12 landed). Split over
        // its own rows [13, 99], the next member would land [13, 56] in one piece — a
        // different block, so [13, 24] would be written twice if it landed late.
        let offsets: Vec<u64> = (0..100).collect();
        let bad = BTreeSet::from([10, 70]);
        let (tried, _, _) = play(&offsets, &bad, None, None);
        let in_flight: Vec<u64> = (13..=24).collect();
        assert!(tried.contains(&in_flight), "{tried:?}");
        let rest: Vec<u64> = (13..100).collect();
        let (own, _, _) = play(&rest, &bad, None, None);
        assert!(!own.contains(&in_flight));
        assert!(own.contains(&(13..=56).collect::<Vec<u64>>()));
        let (recut, _, _) = play(&rest, &bad, Some((0, 99)), Some(12));
        assert!(recut.contains(&in_flight));
    }
}
