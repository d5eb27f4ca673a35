//! A folder's children in name order: a B+tree of names whose nodes are records of the
//! namespace's partition, so that listings need no ordered index in DRAM and a folder's
//! directory tiers to the far memory like any other record.
//!
//! Each folder has its own tree, keyed `ns | 0x02 | folder id | node number` (see the parent
//! module). Node 0 is the root; it exists exactly when the folder has children, and it holds
//! the counter from which new node numbers are taken, so a new node never takes the number of
//! a live one (a folder emptied and refilled starts counting again). A leaf maps names to child ids; an inner node maps separators to child node numbers,
//! child `i` holding the names from separator `i` up to separator `i + 1` (the first separator
//! bounds nothing: a name below it still goes to child 0). A node splits in two when its
//! encoding passes [`NODE_BYTES`]; a node left empty by a delete is removed from its parent, and
//! a root left empty is removed, so an empty folder has no record at all. Nodes are not merged
//! when they run low: a folder that shrank keeps some half-empty nodes until they empty.
//!
//! Encoding of a node: kind `u8` (0 leaf, 1 inner), next node number `u32` (used in the root),
//! item count `u16`, then one `u16` offset per item from the node's start (for binary search
//! without decoding), then the items: name length `u8`, name, value `u64`, all little-endian.
//!
//! The trees are read and written through [`Nodes`], which the metadata operations implement
//! over their transaction (with a write cache, since a transaction reads the state before its
//! own writes), and the unit tests over a plain map.

use super::{MetaError, MetaResult};

/// Largest encoding of a node before it splits, unless the database's values must be smaller.
pub(crate) const NODE_BYTES: usize = 4096;
/// The smallest node limit: names are at most 255 bytes, so a split of a node over this
/// always leaves at least one item on each side.
pub(crate) const MIN_NODE_BYTES: usize = 1024;
const HEAD: usize = 7;

/// Node records of one namespace's folder trees.
pub(crate) trait Nodes {
    /// Call `f` with the encoded node `no` of `folder`'s tree (`None` if it does not exist),
    /// without copying it.
    fn read<R>(
        &mut self,
        folder: u64,
        no: u32,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> MetaResult<R>;
    /// A copy of the encoded node `no` of `folder`'s tree, if it exists.
    fn load(&mut self, folder: u64, no: u32) -> MetaResult<Option<Vec<u8>>> {
        self.read(folder, no, |b| b.map(<[u8]>::to_vec))
    }
    /// Write node `no` of `folder`'s tree.
    fn store(&mut self, folder: u64, no: u32, node: Vec<u8>) -> MetaResult<()>;
    /// Remove node `no` of `folder`'s tree.
    fn remove(&mut self, folder: u64, no: u32) -> MetaResult<()>;
    /// The largest encoding of a node ([`NODE_BYTES`], or less where values must be smaller;
    /// at least [`MIN_NODE_BYTES`]).
    fn node_bytes(&self) -> usize {
        NODE_BYTES
    }
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Node {
    inner: bool,
    next_no: u32,
    keys: Vec<Vec<u8>>,
    vals: Vec<u64>,
}

fn damaged(folder: u64, no: u32) -> MetaError {
    MetaError::Engine(crate::Error::Keyspace {
        name: "meta".into(),
        reason: format!("node {no} of folder {folder}'s directory does not parse"),
    })
}

impl Node {
    fn leaf() -> Node {
        Node::default()
    }

    fn encoded_len(&self) -> usize {
        HEAD + self.keys.iter().map(|k| 2 + 1 + k.len() + 8).sum::<usize>()
    }

    fn encode(&self) -> Vec<u8> {
        let n = self.keys.len();
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(u8::from(self.inner));
        out.extend_from_slice(&self.next_no.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        let mut off = HEAD + 2 * n;
        for k in &self.keys {
            out.extend_from_slice(&(off as u16).to_le_bytes());
            off += 1 + k.len() + 8;
        }
        for (k, v) in self.keys.iter().zip(&self.vals) {
            out.push(k.len() as u8);
            out.extend_from_slice(k);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8], folder: u64, no: u32) -> MetaResult<Node> {
        let raw = Raw::new(b).ok_or_else(|| damaged(folder, no))?;
        let mut node = Node {
            inner: raw.inner,
            next_no: raw.next_no,
            keys: Vec::with_capacity(raw.len),
            vals: Vec::with_capacity(raw.len),
        };
        for i in 0..raw.len {
            let (k, v) = raw.item(i).ok_or_else(|| damaged(folder, no))?;
            node.keys.push(k.to_vec());
            node.vals.push(v);
        }
        Ok(node)
    }

    /// Index of the child of an inner node that covers `name`.
    fn child_index(&self, name: &[u8]) -> usize {
        self.keys
            .partition_point(|k| k.as_slice() <= name)
            .saturating_sub(1)
    }

    /// Move the upper half of the items (by bytes) into a new node, returning it.
    fn split(&mut self) -> Node {
        let total = self.encoded_len() - HEAD;
        let mut acc = 0;
        let mut at = 0;
        while at < self.keys.len() - 1 && acc < total / 2 {
            acc += 2 + 1 + self.keys[at].len() + 8;
            at += 1;
        }
        let at = at.max(1);
        Node {
            inner: self.inner,
            next_no: 0,
            keys: self.keys.split_off(at),
            vals: self.vals.split_off(at),
        }
    }
}

/// An encoded node read in place: binary search without decoding.
struct Raw<'a> {
    b: &'a [u8],
    inner: bool,
    next_no: u32,
    len: usize,
}

impl<'a> Raw<'a> {
    fn new(b: &'a [u8]) -> Option<Raw<'a>> {
        if b.len() < HEAD {
            return None;
        }
        let inner = match b[0] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let next_no = u32::from_le_bytes(b[1..5].try_into().ok()?);
        let len = u16::from_le_bytes(b[5..7].try_into().ok()?) as usize;
        if b.len() < HEAD + 2 * len {
            return None;
        }
        Some(Raw {
            b,
            inner,
            next_no,
            len,
        })
    }

    fn item(&self, i: usize) -> Option<(&'a [u8], u64)> {
        if i >= self.len {
            return None; // (an empty inner node is damage: nothing to descend to)
        }
        let o = HEAD + 2 * i;
        let off = u16::from_le_bytes(self.b.get(o..o + 2)?.try_into().ok()?) as usize;
        let n = *self.b.get(off)? as usize;
        let key = self.b.get(off + 1..off + 1 + n)?;
        let v = self.b.get(off + 1 + n..off + 1 + n + 8)?;
        Some((key, u64::from_le_bytes(v.try_into().ok()?)))
    }

    /// Number of items whose key is at most `name`.
    fn rank(&self, name: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.item(mid)?.0 <= name {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

/// What a lookup finds in one node.
enum Step {
    Child(u32),
    Found(Option<u64>),
}

/// The id of `folder`'s child `name`, if it has one. Reads each node of the path in place.
pub(crate) fn lookup(nodes: &mut impl Nodes, folder: u64, name: &[u8]) -> MetaResult<Option<u64>> {
    let mut no = 0;
    loop {
        let step = nodes.read(folder, no, |b| {
            let Some(b) = b else {
                return (no == 0).then_some(Step::Found(None));
            };
            let raw = Raw::new(b)?;
            let r = raw.rank(name)?;
            if raw.inner {
                let (_, child) = raw.item(r.saturating_sub(1))?;
                Some(Step::Child(child as u32))
            } else {
                Some(Step::Found(
                    match r.checked_sub(1).and_then(|i| raw.item(i)) {
                        Some((k, id)) if k == name => Some(id),
                        _ => None,
                    },
                ))
            }
        })?;
        match step {
            Some(Step::Child(c)) => no = c,
            Some(Step::Found(id)) => return Ok(id),
            None => return Err(damaged(folder, no)),
        }
    }
}

fn load_node(nodes: &mut impl Nodes, folder: u64, no: u32) -> MetaResult<Node> {
    match nodes.load(folder, no)? {
        Some(b) => Node::decode(&b, folder, no),
        None => Err(damaged(folder, no)),
    }
}

/// The way down to the leaf that covers a name: each inner node's number and the index of the
/// child taken, the leaf's number and decoded node, and the root's node counter.
struct Descent {
    path: Vec<(u32, usize)>,
    no: u32,
    leaf: Node,
    next_no: u32,
}

/// What one inner node of a descent says.
enum Down {
    Absent,
    Leaf,
    Inner {
        child: u32,
        index: usize,
        next_no: u32,
    },
}

/// Descend to the leaf that covers `name`, reading the inner nodes in place (only the leaf
/// is decoded: a write changes it, and its ancestors only when it splits or empties). An
/// empty folder gives an empty leaf root.
fn descend(nodes: &mut impl Nodes, folder: u64, name: &[u8]) -> MetaResult<Descent> {
    let mut path = Vec::new();
    let mut no = 0;
    let mut root_next = None;
    loop {
        let down = nodes.read(folder, no, |b| {
            let Some(b) = b else {
                return Some(Down::Absent);
            };
            let raw = Raw::new(b)?;
            if !raw.inner {
                return Some(Down::Leaf);
            }
            let index = raw.rank(name)?.saturating_sub(1);
            let (_, child) = raw.item(index)?;
            Some(Down::Inner {
                child: child as u32,
                index,
                next_no: raw.next_no,
            })
        })?;
        match down {
            Some(Down::Absent) if no == 0 => {
                return Ok(Descent {
                    path,
                    no,
                    leaf: Node::leaf(),
                    next_no: 1,
                })
            }
            Some(Down::Leaf) => {
                let leaf = load_node(nodes, folder, no)?;
                let next_no = root_next.unwrap_or(leaf.next_no);
                return Ok(Descent {
                    path,
                    no,
                    leaf,
                    next_no,
                });
            }
            Some(Down::Inner {
                child,
                index,
                next_no,
            }) => {
                root_next.get_or_insert(next_no);
                path.push((no, index));
                no = child;
            }
            Some(Down::Absent) | None => return Err(damaged(folder, no)),
        }
    }
}

/// The next node number of `folder` from its root's counter. Numbers are not reused while
/// the folder has children, so a folder that has split 2^32 - 1 times refuses to grow (the
/// mutation fails whole) rather than wrap onto node 0.
fn take_no(next_no: &mut u32, folder: u64) -> MetaResult<u32> {
    let no = *next_no;
    *next_no = no.checked_add(1).ok_or_else(|| {
        MetaError::OutOfBounds(format!(
            "folder {folder} has used all 2^32 of its directory node numbers; move its entries into a new folder"
        ))
    })?;
    Ok(no)
}

/// Add (or repoint) `folder`'s child `name` to `id`.
pub(crate) fn insert(nodes: &mut impl Nodes, folder: u64, name: &[u8], id: u64) -> MetaResult<()> {
    let Descent {
        mut path,
        mut no,
        leaf: mut node,
        mut next_no,
    } = descend(nodes, folder, name)?;
    let counter = next_no;
    match node.keys.binary_search_by(|k| k.as_slice().cmp(name)) {
        Ok(i) => node.vals[i] = id,
        Err(i) => {
            node.keys.insert(i, name.to_vec());
            node.vals.insert(i, id);
        }
    }
    // Split upward while a node is too big: the new right half gets a number from the
    // root's counter and its first name becomes a separator in the parent.
    loop {
        if node.encoded_len() <= nodes.node_bytes() {
            break;
        }
        let right = node.split();
        let sep = right.keys[0].clone();
        let right_no = take_no(&mut next_no, folder)?;
        nodes.store(folder, right_no, right.encode())?;
        match path.pop() {
            Some((pno, i)) => {
                nodes.store(folder, no, node.encode())?;
                let mut parent = load_node(nodes, folder, pno)?;
                parent.keys.insert(i + 1, sep);
                parent.vals.insert(i + 1, u64::from(right_no));
                no = pno;
                node = parent;
            }
            None => {
                // The root split: its left half moves to a new node and the root becomes an
                // inner node over the two halves (the root keeps number 0).
                let left_no = take_no(&mut next_no, folder)?;
                node.next_no = 0;
                nodes.store(folder, left_no, node.encode())?;
                node = Node {
                    inner: true,
                    next_no,
                    keys: vec![Vec::new(), sep],
                    vals: vec![u64::from(left_no), u64::from(right_no)],
                };
                break;
            }
        }
    }
    // Write the node the loop stopped at; the root also if its counter moved.
    if no == 0 {
        node.next_no = next_no;
        nodes.store(folder, 0, node.encode())?;
    } else {
        nodes.store(folder, no, node.encode())?;
        if next_no != counter {
            let mut root = load_node(nodes, folder, 0)?;
            root.next_no = next_no;
            nodes.store(folder, 0, root.encode())?;
        }
    }
    Ok(())
}

/// Remove `folder`'s child `name`; returns whether it was there.
pub(crate) fn remove(nodes: &mut impl Nodes, folder: u64, name: &[u8]) -> MetaResult<bool> {
    let Descent {
        mut path,
        mut no,
        leaf: mut node,
        ..
    } = descend(nodes, folder, name)?;
    let Ok(i) = node.keys.binary_search_by(|k| k.as_slice().cmp(name)) else {
        return Ok(false);
    };
    node.keys.remove(i);
    node.vals.remove(i);
    // Remove empty nodes upward; the first non-empty one is rewritten.
    while node.keys.is_empty() {
        nodes.remove(folder, no)?;
        match path.pop() {
            Some((pno, i)) => {
                let mut parent = load_node(nodes, folder, pno)?;
                parent.keys.remove(i);
                parent.vals.remove(i);
                no = pno;
                node = parent;
            }
            None => return Ok(true), // the root emptied: the folder has no children
        }
    }
    nodes.store(folder, no, node.encode())?;
    Ok(true)
}

/// Visit up to `limit` children of `folder` after `after` (from the first without it), in
/// name order: `f(name, id)`. Returns how many were visited.
pub(crate) fn scan(
    nodes: &mut impl Nodes,
    folder: u64,
    after: Option<&[u8]>,
    limit: usize,
    mut f: impl FnMut(&[u8], u64),
) -> MetaResult<usize> {
    let mut seen = 0;
    if limit == 0 {
        return Ok(0);
    }
    // The inner nodes above the current leaf, decoded, with the child taken in each.
    let mut path: Vec<(Node, usize)> = Vec::new();
    let mut no = 0;
    let mut leaf = loop {
        let Some(b) = nodes.load(folder, no)? else {
            return if no == 0 {
                Ok(0)
            } else {
                Err(damaged(folder, no))
            };
        };
        if b.first() != Some(&1) {
            break b;
        }
        let node = Node::decode(&b, folder, no)?;
        if node.keys.is_empty() {
            return Err(damaged(folder, no));
        }
        let i = match after {
            Some(a) => node.child_index(a),
            None => 0,
        };
        no = node.vals[i] as u32;
        path.push((node, i));
    };
    let mut first = true;
    loop {
        let raw = Raw::new(&leaf).ok_or_else(|| damaged(folder, no))?;
        let start = match after {
            Some(a) if first => raw.rank(a).ok_or_else(|| damaged(folder, no))?,
            _ => 0,
        };
        first = false;
        for i in start..raw.len {
            let (k, v) = raw.item(i).ok_or_else(|| damaged(folder, no))?;
            f(k, v);
            seen += 1;
            if seen == limit {
                return Ok(seen);
            }
        }
        // The next leaf: up to the nearest ancestor with a child to the right, then down its
        // leftmost path.
        loop {
            let Some((parent, i)) = path.last_mut() else {
                return Ok(seen);
            };
            if *i + 1 < parent.keys.len() {
                *i += 1;
                no = parent.vals[*i] as u32;
                break;
            }
            path.pop();
        }
        leaf = loop {
            let b = nodes.load(folder, no)?.ok_or_else(|| damaged(folder, no))?;
            if b.first() != Some(&1) {
                break b;
            }
            let node = Node::decode(&b, folder, no)?;
            if node.keys.is_empty() {
                return Err(damaged(folder, no));
            }
            no = node.vals[0] as u32;
            path.push((node, 0));
        };
    }
}

/// Whether `folder` has no children.
pub(crate) fn is_empty(nodes: &mut impl Nodes, folder: u64) -> MetaResult<bool> {
    nodes.read(folder, 0, |b| b.is_none())
}

/// Remove node `no` of `folder`'s directory and return what it held: for an inner node the
/// numbers of its child nodes (`true, nodes`), for a leaf the ids of its entries (`false,
/// ids`); `None` if there is no such node. A recursive delete takes a detached folder's
/// directory apart this way, a node at a time, so that no step holds more than a node.
pub(crate) fn take_node(
    nodes: &mut impl Nodes,
    folder: u64,
    no: u32,
) -> MetaResult<Option<(bool, Vec<u64>)>> {
    if nodes.read(folder, no, |b| b.is_none())? {
        return Ok(None);
    }
    let node = load_node(nodes, folder, no)?;
    nodes.remove(folder, no)?;
    Ok(Some((node.inner, node.vals)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Default)]
    struct Map(HashMap<(u64, u32), Vec<u8>>);

    impl Nodes for Map {
        fn read<R>(
            &mut self,
            folder: u64,
            no: u32,
            f: impl FnOnce(Option<&[u8]>) -> R,
        ) -> MetaResult<R> {
            Ok(f(self.0.get(&(folder, no)).map(Vec::as_slice)))
        }
        fn store(&mut self, folder: u64, no: u32, node: Vec<u8>) -> MetaResult<()> {
            assert!(
                node.len() <= NODE_BYTES,
                "node {no} stored at {} bytes",
                node.len()
            );
            self.0.insert((folder, no), node);
            Ok(())
        }
        fn remove(&mut self, folder: u64, no: u32) -> MetaResult<()> {
            assert!(
                self.0.remove(&(folder, no)).is_some(),
                "removed a missing node"
            );
            Ok(())
        }
    }

    fn collect(
        m: &mut Map,
        folder: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        let n = scan(m, folder, after, limit, |k, v| out.push((k.to_vec(), v)))?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    fn name(i: u64, long: bool) -> Vec<u8> {
        let mut n = format!("{:08}", (i * 7919) % 100_003).into_bytes();
        if long {
            n.extend(std::iter::repeat_n(b'x', (i % 240) as usize));
        }
        n
    }

    /// Check the tree against `model`: every name found, scans in every page size equal to
    /// the model, and nodes reachable from the root are exactly the stored ones.
    fn check(m: &mut Map, folder: u64, model: &BTreeMap<Vec<u8>, u64>) {
        for (k, v) in model {
            assert_eq!(lookup(m, folder, k).unwrap(), Some(*v));
        }
        assert_eq!(lookup(m, folder, b"not there").unwrap(), None);
        let all = collect(m, folder, None, usize::MAX).unwrap();
        let want: Vec<(Vec<u8>, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(all, want);
        for page in [1, 7, 100] {
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let p = collect(m, folder, after.as_deref(), page).unwrap();
                if p.is_empty() {
                    break;
                }
                after = Some(p.last().unwrap().0.clone());
                got.extend(p);
            }
            assert_eq!(got, want, "paged by {page}");
        }
        assert_eq!(is_empty(m, folder).unwrap(), model.is_empty());
        let stored = m.0.keys().filter(|(f, _)| *f == folder).count();
        let mut reach = 0;
        if m.0.contains_key(&(folder, 0)) {
            let mut stack = vec![0u32];
            while let Some(no) = stack.pop() {
                reach += 1;
                let n = load_node(m, folder, no).unwrap();
                assert!(!n.keys.is_empty(), "empty node {no} left in the tree");
                if n.inner {
                    stack.extend(n.vals.iter().map(|&v| v as u32));
                }
            }
        }
        assert_eq!(reach, stored, "unreachable or missing nodes");
    }

    #[test]
    fn grows_splits_shrinks_and_empties() {
        for long in [false, true] {
            let mut m = Map::default();
            let mut model = BTreeMap::new();
            for i in 0..3000 {
                let n = name(i, long);
                insert(&mut m, 5, &n, i).unwrap();
                model.insert(n, i);
                if i % 500 == 0 {
                    check(&mut m, 5, &model);
                }
            }
            check(&mut m, 5, &model);
            let root = load_node(&mut m, 5, 0).unwrap();
            assert!(root.inner, "3000 names must have split the root");
            // Another folder's tree is separate.
            insert(&mut m, 6, b"a", 1).unwrap();
            assert_eq!(lookup(&mut m, 5, b"a").unwrap(), None);
            // Repointing keeps one entry.
            let first = model.keys().next().unwrap().clone();
            insert(&mut m, 5, &first, 99_999).unwrap();
            model.insert(first, 99_999);
            check(&mut m, 5, &model);
            // Remove every other name, then the rest, in a scattered order.
            for i in (0..3000).step_by(2) {
                assert!(remove(&mut m, 5, &name(i, long)).unwrap());
                model.remove(&name(i, long));
            }
            assert!(!remove(&mut m, 5, &name(0, long)).unwrap());
            check(&mut m, 5, &model);
            for i in (1..3000u64).rev().step_by(2) {
                assert!(remove(&mut m, 5, &name(i, long)).unwrap());
                model.remove(&name(i, long));
            }
            check(&mut m, 5, &model);
            assert!(!m.0.contains_key(&(5, 0)), "an empty folder keeps no node");
            assert_eq!(take_node(&mut m, 6, 0).unwrap(), Some((false, vec![1])));
            assert_eq!(take_node(&mut m, 6, 0).unwrap(), None);
            assert!(m.0.is_empty());
        }
    }

    #[test]
    fn damaged_nodes_are_errors_not_panics() {
        let mut m = Map::default();
        for i in 0..2000 {
            insert(&mut m, 1, &name(i, false), i).unwrap();
        }
        let mut broken = m.0.clone();
        for v in broken.values_mut() {
            v.truncate(v.len() / 2);
        }
        let mut b = Map(broken);
        // A lookup may still find a name in a surviving half; it must not panic.
        let _ = lookup(&mut b, 1, &name(3, false));
        assert!(collect(&mut b, 1, None, usize::MAX).is_err());
        let mut junk = Map::default();
        junk.0.insert((1, 0), vec![9; 3]);
        assert!(matches!(
            lookup(&mut junk, 1, b"a"),
            Err(MetaError::Engine(_))
        ));
        // An inner node with no items: nothing to descend to.
        let mut empty = Map::default();
        empty.0.insert((1, 0), vec![1, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            lookup(&mut empty, 1, b"a"),
            Err(MetaError::Engine(_))
        ));
        assert!(insert(&mut empty, 1, b"a", 1).is_err());
    }

    /// A folder whose node counter is used up refuses the insert that would split a node
    /// (instead of wrapping onto node 0), and keeps every name it had.
    #[test]
    fn a_used_up_node_counter_refuses_to_split() {
        let mut m = Map::default();
        insert(&mut m, 1, &name(0, false), 0).unwrap();
        let root = m.0.get_mut(&(1, 0)).unwrap();
        root[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut refused = None;
        for i in 1..10_000 {
            if let Err(e) = insert(&mut m, 1, &name(i, false), i) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("a split comes within 10,000 names");
        assert!(matches!(e, MetaError::OutOfBounds(_)), "{e:?}");
        assert!(e.to_string().contains("directory node numbers"), "{e}");
        for j in 0..i {
            assert_eq!(lookup(&mut m, 1, &name(j, false)).unwrap(), Some(j));
        }
    }
}
