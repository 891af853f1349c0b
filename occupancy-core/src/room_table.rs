//! The machine's table of rooms: a hash table of values that carry their own id, looked up by
//! `&str`.
//!
//! Why not `HashMap<RoomId, Room>`: a room keeps its id anyway (a lookup by `&str` must yield the
//! shared `RoomId`), so the map stored it twice — 16 bytes in every bucket, and at the table's
//! usual load about 26 bytes per room, which every idle connection holding a room pays
//! (DESIGN.md "Cost rules": memory per idle connection). Here each value is its own key.
//!
//! Room ids come from clients, so the hasher is keyed (foldhash, seeded at random per process):
//! nobody can choose ids that collide.

use std::hash::BuildHasher;
use std::ops::Index;

use hashbrown::HashTable;

use crate::ids::RoomId;

/// A value that carries its own room id.
pub(crate) trait Keyed {
    /// The id this value is filed under. Must not change while the value is in a table.
    fn id(&self) -> &RoomId;
}

/// A table of values filed under their own [`Keyed::id`]. See the module docs.
pub(crate) struct RoomTable<T> {
    table: HashTable<T>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for RoomTable<T> {
    fn default() -> Self {
        RoomTable {
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RoomTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.table.iter()).finish()
    }
}

impl<T: Keyed> RoomTable<T> {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The value filed under `id`.
    pub(crate) fn get(&self, id: &(impl AsRef<str> + ?Sized)) -> Option<&T> {
        let id = id.as_ref();
        self.table.find(self.hash(id), |v| v.id().as_str() == id)
    }

    /// The value filed under `id`, mutably.
    pub(crate) fn get_mut(&mut self, id: &(impl AsRef<str> + ?Sized)) -> Option<&mut T> {
        let id = id.as_ref();
        let hash = self.hash(id);
        self.table.find_mut(hash, |v| v.id().as_str() == id)
    }

    /// The value filed under `id`, made by `make` if there is none.
    pub(crate) fn get_or_insert_with(&mut self, id: &str, make: impl FnOnce() -> T) -> &mut T {
        let hash = self.hash(id);
        let hasher = &self.hasher;
        self.table
            .entry(
                hash,
                |v| v.id().as_str() == id,
                |v| hasher.hash_one(v.id().as_str()),
            )
            .or_insert_with(make)
            .into_mut()
    }

    /// Takes the value filed under `id` out.
    pub(crate) fn remove(&mut self, id: &(impl AsRef<str> + ?Sized)) -> Option<T> {
        let id = id.as_ref();
        let hash = self.hash(id);
        match self.table.find_entry(hash, |v| v.id().as_str() == id) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    /// How many values the table holds.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Every value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.table.iter()
    }
}

impl<T: Keyed, Q: AsRef<str> + ?Sized> Index<&Q> for RoomTable<T> {
    type Output = T;

    /// The value filed under `id`; panics when there is none (callers index only ids they
    /// found in a reverse index, which the invariants keep in step with the table).
    fn index(&self, id: &Q) -> &T {
        self.get(id).expect("a room the reverse index names")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(RoomId, u32);

    impl Keyed for V {
        fn id(&self) -> &RoomId {
            &self.0
        }
    }

    fn id(s: &str) -> RoomId {
        RoomId::parse(s, 64).unwrap()
    }

    #[test]
    fn values_are_found_by_their_own_id() {
        let mut t = RoomTable::default();
        for i in 0..1000 {
            t.get_or_insert_with(&format!("room-{i}"), || V(id(&format!("room-{i}")), i));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get("room-7"), Some(&V(id("room-7"), 7)));
        assert_eq!(t["room-999"].1, 999);
        assert_eq!(t.get("room-1000"), None);

        // An existing value is returned, not replaced.
        let v = t.get_or_insert_with("room-7", || unreachable!("exists"));
        v.1 = 70;
        assert_eq!(t.get("room-7").unwrap().1, 70);

        assert_eq!(t.remove("room-7"), Some(V(id("room-7"), 70)));
        assert_eq!(t.remove("room-7"), None);
        assert_eq!(t.get("room-7"), None);
        assert_eq!(t.len(), 999);
        let mut ids: Vec<u32> = t.iter().map(|v| v.1).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1000).filter(|&i| i != 7).collect::<Vec<_>>());
    }
}
