//! One room's line as the state machine keeps it: occupants in order (holder first) in a
//! `VecDeque`, plus an index from occupant to place so that finding anyone costs O(1) however
//! long the line is.
//!
//! Places are kept as *slot numbers*: each occupant's slot minus the slot of the front is its
//! place. The holder leaving is then `pop_front` and one increment (nobody behind is renumbered);
//! a leave at the back or a join touches only its own entry; a leave in the middle renumbers the
//! shorter side (`VecDeque::remove` moves that side anyway). Short lines (the common case: a
//! document and one or two people) have no index at all: a scan of a few keys is cheaper than
//! hashing, and the room costs no extra allocation. The index is built when a line grows past
//! [`INDEX_FROM`] and dropped when it shrinks well below it.

use std::collections::{HashMap, VecDeque};

use crate::ids::{OccupantKey, Person};
use crate::state::{OccupantState, RoomState};

/// Lines at least this long carry an index (measured: below it a scan of the keys is faster
/// than a hash lookup; see the core benches).
pub(crate) const INDEX_FROM: usize = 16;

/// A room's line. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Line {
    occupants: VecDeque<OccupantState>,
    /// Occupant → slot; `slot - head` (wrapping) is the place. `None` for short lines.
    /// Boxed: most lines are short and have none, and a room's size counts for every idle
    /// connection that holds one (8 bytes instead of 48 in every room).
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<OccupantKey, u64, KeyHash>>>,
    /// The slot of the front of the line.
    head: u64,
}

/// The index's hasher: keyed with a random seed (foldhash), because a principal may be something a
/// user picked (a user name), so no unkeyed hash; several times cheaper than SipHash.
type KeyHash = foldhash::fast::RandomState;

impl Line {
    /// How many stand in line.
    pub(crate) fn len(&self) -> usize {
        self.occupants.len()
    }

    /// True when nobody stands in line.
    pub(crate) fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// The occupant at `place` (0 = the holder).
    pub(crate) fn get(&self, place: usize) -> Option<&OccupantState> {
        self.occupants.get(place)
    }

    /// The occupant at `place`, mutably. Its key must not be changed.
    pub(crate) fn get_mut(&mut self, place: usize) -> Option<&mut OccupantState> {
        self.occupants.get_mut(place)
    }

    /// The holder.
    pub(crate) fn front(&self) -> Option<&OccupantState> {
        self.occupants.front()
    }

    /// The line in order, holder first.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &OccupantState> + '_ {
        self.occupants.iter()
    }

    /// The occupants from `place` on, with their places.
    pub(crate) fn iter_from(
        &self,
        place: usize,
    ) -> impl Iterator<Item = (usize, &OccupantState)> + '_ {
        self.occupants
            .range(place.min(self.len())..)
            .enumerate()
            .map(move |(i, o)| (place + i, o))
    }

    /// The first `k` occupants as others see them.
    pub(crate) fn top(&self, k: usize) -> Vec<Person> {
        self.occupants
            .iter()
            .take(k)
            .map(OccupantState::person)
            .collect()
    }

    /// The place of `key` in line. O(1) (a scan of at most [`INDEX_FROM`] keys for short lines).
    pub(crate) fn position(&self, key: &OccupantKey) -> Option<usize> {
        match &self.index {
            Some(index) => index
                .get(key)
                .map(|&slot| slot.wrapping_sub(self.head) as usize),
            None => {
                // A short line: scan the (at most two) contiguous halves directly, cheaper than
                // the deque's chained iterator on the hottest path (a join into a small room).
                let (a, b) = self.occupants.as_slices();
                match a.iter().position(|o| &o.key == key) {
                    Some(p) => Some(p),
                    None => b.iter().position(|o| &o.key == key).map(|p| a.len() + p),
                }
            }
        }
    }

    /// Puts a new occupant at the back (its key must not be in line yet). O(1) amortized.
    pub(crate) fn push_back(&mut self, occupant: OccupantState) {
        let slot = self.head.wrapping_add(self.occupants.len() as u64);
        if let Some(index) = &mut self.index {
            index.insert(occupant.key.clone(), slot);
        }
        if self.occupants.capacity() == 0 {
            // Most rooms hold one occupant for their whole life (a document open in one tab):
            // room for one, not the default four (192 bytes per idle connection's room).
            self.occupants.reserve_exact(1);
        }
        self.occupants.push_back(occupant);
        if self.index.is_none() && self.occupants.len() >= INDEX_FROM {
            self.build_index();
        }
    }

    /// Takes the occupant at `place` out of line. O(1) at either end; O(min(place, len - place))
    /// in the middle.
    pub(crate) fn remove(&mut self, place: usize) -> Option<OccupantState> {
        let n = self.occupants.len();
        if place >= n {
            return None;
        }
        let occupant = if place == 0 {
            self.head = self.head.wrapping_add(1);
            self.occupants.pop_front()?
        } else if place == n - 1 {
            self.occupants.pop_back()?
        } else if place < n - place {
            // The front side is shorter: everyone before `place` moves one slot back.
            let occupant = self.occupants.remove(place)?;
            self.head = self.head.wrapping_add(1);
            if let Some(index) = &mut self.index {
                for o in self.occupants.range(..place) {
                    if let Some(slot) = index.get_mut(&o.key) {
                        *slot = slot.wrapping_add(1);
                    }
                }
            }
            occupant
        } else {
            let occupant = self.occupants.remove(place)?;
            if let Some(index) = &mut self.index {
                for o in self.occupants.range(place..) {
                    if let Some(slot) = index.get_mut(&o.key) {
                        *slot = slot.wrapping_sub(1);
                    }
                }
            }
            occupant
        };
        if let Some(index) = &mut self.index {
            index.remove(&occupant.key);
        }
        self.maybe_drop_index();
        Some(occupant)
    }

    /// Moves the occupant at `place` to the front. O(place).
    pub(crate) fn move_to_front(&mut self, place: usize) {
        if place == 0 || place >= self.occupants.len() {
            return;
        }
        // Everyone before `place` moves one slot back; the mover takes the old front slot.
        let occupant = self.occupants.remove(place).expect("checked above");
        let front = self.head;
        if let Some(index) = &mut self.index {
            for o in self.occupants.range(..place) {
                if let Some(slot) = index.get_mut(&o.key) {
                    *slot = slot.wrapping_add(1);
                }
            }
            index.insert(occupant.key.clone(), front);
        }
        self.occupants.push_front(occupant);
    }

    /// Drops every occupant whose session list is empty, in one pass from `from` (the first
    /// place that may hold one) to the back, and renumbers the rest. O(len - from). Returns how
    /// many were dropped.
    pub(crate) fn drop_emptied(&mut self, from: usize) -> usize {
        let n = self.occupants.len();
        let mut write = from;
        for read in from..n {
            if self.occupants[read].sessions.is_empty() {
                if let Some(index) = &mut self.index {
                    index.remove(&self.occupants[read].key);
                }
                continue;
            }
            if write != read {
                self.occupants.swap(write, read);
                if let Some(index) = &mut self.index {
                    let slot = self.head.wrapping_add(write as u64);
                    if let Some(s) = index.get_mut(&self.occupants[write].key) {
                        *s = slot;
                    }
                }
            }
            write += 1;
        }
        self.occupants.truncate(write);
        self.maybe_drop_index();
        n - write
    }

    /// A copy of the line as plain data (for reads and tests; O(len)).
    pub(crate) fn snapshot(&self, version: u64, held_since: Option<u64>) -> RoomState {
        RoomState {
            version,
            occupants: self.occupants.iter().cloned().collect(),
            held_since: self.front().and(held_since),
            reason: Default::default(),
        }
    }

    /// Checks that the index agrees with the line (for `Machine::check_invariants`). O(len).
    pub(crate) fn check(&self) -> Result<(), String> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        if index.len() != self.occupants.len() {
            return Err(format!(
                "the line's index has {} entries for {} occupants",
                index.len(),
                self.occupants.len()
            ));
        }
        for (place, o) in self.occupants.iter().enumerate() {
            let slot = index.get(&o.key).copied();
            if slot != Some(self.head.wrapping_add(place as u64)) {
                return Err(format!(
                    "the line's index puts {:?} at {:?}, it stands at {place}",
                    o.key,
                    slot.map(|s| s.wrapping_sub(self.head))
                ));
            }
        }
        Ok(())
    }

    fn build_index(&mut self) {
        let mut index =
            HashMap::with_capacity_and_hasher(self.occupants.len() * 2, KeyHash::default());
        for (place, o) in self.occupants.iter().enumerate() {
            index.insert(o.key.clone(), self.head.wrapping_add(place as u64));
        }
        self.index = Some(Box::new(index));
    }

    fn maybe_drop_index(&mut self) {
        // Hysteresis: a line hovering around INDEX_FROM does not build and drop it every time.
        if self.index.is_some() && self.occupants.len() < INDEX_FROM / 2 {
            self.index = None;
        }
    }

    /// Test hook: corrupts the index (moves `key` one place back), as a mutation would.
    #[cfg(test)]
    pub(crate) fn corrupt(&mut self, key: &OccupantKey) {
        if let Some(slot) = self.index.as_mut().and_then(|i| i.get_mut(key)) {
            *slot = slot.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Meta, SessionId};

    fn occ(i: u64) -> OccupantState {
        OccupantState {
            key: OccupantKey::Anonymous(SessionId(i)),
            meta: Meta::empty(),
            sessions: crate::Sessions::one(SessionId(i)),
            since: 0,
        }
    }

    fn ids(line: &Line) -> Vec<u64> {
        line.iter()
            .map(|o| match o.key {
                OccupantKey::Anonymous(s) => s.0,
                OccupantKey::User(_) => unreachable!(),
            })
            .collect()
    }

    /// Every edit, on a line long enough to carry an index, against a plain `Vec` doing the same.
    #[test]
    fn edits_keep_places_and_index_in_step_with_a_plain_vec() {
        let mut line = Line::default();
        let mut model: Vec<u64> = Vec::new();
        let mut next = 0u64;
        // A fixed pseudo-random walk: pushes, removals at the front, back, both halves of the
        // middle, moves to the front and batch drops, through the index's build and drop sizes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..4_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let grow = (step / 500) % 2 == 0;
            match x % 7 {
                0..=2 if grow || model.len() < 3 => {
                    line.push_back(occ(next));
                    model.push(next);
                    next += 1;
                }
                3 if !model.is_empty() => {
                    let p = (x >> 8) as usize % model.len();
                    let o = line.remove(p).unwrap();
                    assert_eq!(OccupantKey::Anonymous(SessionId(model.remove(p))), o.key);
                }
                4 if !model.is_empty() => {
                    let p = (x >> 8) as usize % model.len();
                    line.move_to_front(p);
                    let v = model.remove(p);
                    model.insert(0, v);
                }
                5 if !model.is_empty() => {
                    // Empty a few occupants' session lists, then drop them in one pass.
                    let mut from = usize::MAX;
                    for j in 0..3u64 {
                        let p = ((x >> (8 + 8 * j)) as usize) % model.len();
                        line.get_mut(p).unwrap().sessions.clear();
                        from = from.min(p);
                    }
                    let before = model.len();
                    let emptied: Vec<u64> = line
                        .iter()
                        .filter(|o| o.sessions.is_empty())
                        .map(|o| match o.key {
                            OccupantKey::Anonymous(s) => s.0,
                            OccupantKey::User(_) => unreachable!(),
                        })
                        .collect();
                    model.retain(|v| !emptied.contains(v));
                    assert_eq!(line.drop_emptied(from), before - model.len());
                }
                _ => {}
            }
            assert_eq!(ids(&line), model, "step {step}");
            line.check().unwrap();
            for (p, &v) in model.iter().enumerate() {
                assert_eq!(
                    line.position(&OccupantKey::Anonymous(SessionId(v))),
                    Some(p)
                );
            }
        }
        assert!(
            next > 2 * INDEX_FROM as u64,
            "the walk went past the index size"
        );
    }

    #[test]
    fn the_check_catches_a_corrupted_index() {
        let mut line = Line::default();
        for i in 0..40 {
            line.push_back(occ(i));
        }
        line.check().unwrap();
        let key = OccupantKey::Anonymous(SessionId(7));
        line.corrupt(&key);
        assert_eq!(
            line.check(),
            Err(format!(
                "the line's index puts {key:?} at Some(8), it stands at 7"
            ))
        );
    }
}
