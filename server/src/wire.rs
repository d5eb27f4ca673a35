//! Hand-written protobuf for the one message whose encoding dominates a call: `ListResponse`
//! (a page of up to 1,000 `Entry` messages). build.rs maps `tera.meta.v1.ListResponse` here
//! (`extern_path`), so the generated server and client use this type; its wire form is
//! exactly the proto's, and clients decode it as any other message.
//!
//! What is different is how terad builds one. Going through the generated `Entry` would copy
//! every string of every entry out of the engine's record (name, etag, checksum, MIME type,
//! attributes), encode it, and free it again: for a 100-entry page, about 500 allocations and
//! as many frees, a third of the call's CPU. [`ListBuilder`] instead encodes each
//! [`EntryView`] (the entry read in place from its stored bytes, see
//! `MetaStore::list_with`) straight into the response's bytes, and [`ListResponse::encode_raw`]
//! writes those bytes out as they are. The result is the same bytes, field for field, as
//! prost's encoding of the generated `Entry` built by `meta_rpc::entry_pb` (the tests here
//! check it, attributes aside, whose order in a map is unspecified).

use crate::proto::meta::{Entry, Kind as PbKind};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{encoded_len_varint, message, skip_field, string, DecodeContext, WireType};
use prost::DecodeError;
use tera_engine::meta::{EntryView, Kind};

/// `tera.meta.v1.ListResponse`: a page of a folder's entries.
///
/// Equality compares the fields as they are held: a built response and the same response
/// decoded are equal on the wire but not as values (decode the built one to compare).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListResponse {
    /// The entries, decoded (a client's side) or built as messages.
    pub entries: Vec<Entry>,
    /// Pass as page_token to continue; empty on the last page.
    pub next_page_token: String,
    /// Entries already encoded as field 1 (key, length, `Entry`), written before `entries`.
    /// Only [`ListBuilder`] fills it; decoding never does.
    encoded_entries: Vec<u8>,
}

impl ListResponse {
    /// Whether the entries are all encoded already (a [`ListBuilder`]'s response): encoding
    /// it is then a copy of bytes.
    pub fn is_pre_encoded(&self) -> bool {
        self.entries.is_empty()
    }
}

impl prost::Message for ListResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded_entries);
        message::encode_repeated(1, &self.entries, buf);
        if !self.next_page_token.is_empty() {
            string::encode(2, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                message::merge_repeated(wire_type, &mut self.entries, buf, ctx).map_err(|mut e| {
                    e.push("ListResponse", "entries");
                    e
                })
            }
            2 => string::merge(wire_type, &mut self.next_page_token, buf, ctx).map_err(|mut e| {
                e.push("ListResponse", "next_page_token");
                e
            }),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.encoded_entries.len()
            + message::encoded_len_repeated(1, &self.entries)
            + if self.next_page_token.is_empty() {
                0
            } else {
                string::encoded_len(2, &self.next_page_token)
            }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.next_page_token.clear();
        self.encoded_entries.clear();
    }
}

/// Builds a [`ListResponse`] from entry views, encoding each as it comes, up to a byte budget.
#[derive(Debug)]
pub struct ListBuilder {
    out: Vec<u8>,
    /// Entries the page is expected to hold (what its buffer is sized for).
    expect: usize,
    budget: usize,
}

impl Default for ListBuilder {
    fn default() -> ListBuilder {
        ListBuilder::with_capacity(0, usize::MAX)
    }
}

impl ListBuilder {
    /// A builder for about `entries` entries, that asks for no more once its entries take
    /// `budget` bytes (see [`ListBuilder::push`]).
    pub fn with_capacity(entries: usize, budget: usize) -> ListBuilder {
        ListBuilder {
            out: Vec::new(),
            expect: entries.min(1 << 14),
            budget,
        }
    }

    /// Append one entry; returns whether there is room for more (the entries so far take
    /// less than the budget). A page that stops there ends with this entry, so one entry
    /// always fits, however large.
    pub fn push(&mut self, e: &EntryView<'_>) -> bool {
        // The message's length goes before it, so it is summed first from the fields'
        // lengths (cheap arithmetic), and the fields are then written straight into place.
        let etag = e.etag_hex();
        let len = entry_len(e, &etag);
        if self.out.capacity() == 0 {
            // Room for the page, sized by its first entry and a quarter more (names and
            // checksums of a folder's entries tend to be alike), up to the budget and
            // `FIRST_RESERVE_MAX`: most pages then never grow their buffer (a copy of all of
            // it each time). `expect` is the page size asked for, not what the folder holds,
            // hence the cap.
            let guess = self.expect.max(1) * (3 + len + len / 4);
            let cap = self.budget.saturating_add(len + 3).min(FIRST_RESERVE_MAX);
            self.out.reserve(guess.min(cap));
        }
        // The room is zeroed, then written through a cursor: a store and an index bump a
        // byte, where `Vec::push` also checks the capacity and stores the length (a tenth
        // less time encoding a 100-entry listing, docs/benchmarks.md).
        let at = self.out.len();
        let head = 1 + encoded_len_varint(len as u64);
        self.out.resize(at + head + len, 0);
        let mut w = Cursor {
            buf: &mut self.out[at..],
            at: 0,
        };
        w.byte(key(1, WireType::LengthDelimited));
        w.varint(len as u64);
        encode_entry(e, &etag, &mut w);
        assert_eq!(w.at, head + len, "entry_len and encode_entry disagree");
        self.out.len() < self.budget
    }

    /// The response, with `next_page_token`.
    pub fn finish(self, next_page_token: String) -> ListResponse {
        ListResponse {
            entries: Vec::new(),
            next_page_token,
            encoded_entries: self.out,
        }
    }
}

/// The most a listing's buffer reserves before it has seen more than one entry: under
/// glibc's mmap threshold (256 KiB, `metrics::tune_malloc`), so that it comes from the heap.
const FIRST_RESERVE_MAX: usize = 192 << 10;

/// The key of field `tag` (every tag of `Entry` is under 16, so a key is one byte).
const fn key(tag: u32, wire_type: WireType) -> u8 {
    assert!(tag < 16);
    ((tag << 3) | wire_type as u32) as u8
}

/// Writes an entry into room made for it: `ListBuilder::push` sizes the room exactly, and a
/// write past it panics (as the length check after it would).
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    /// `v` as a varint: 7 bits a byte, low first, the top bit set on all but the last.
    /// Inlined into the entry's writer (a 100-entry page writes about 1,500 varints).
    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline(always)]
    fn bytes(&mut self, s: &[u8]) {
        self.buf[self.at..self.at + s.len()].copy_from_slice(s);
        self.at += s.len();
    }
}

fn put_varint_field(tag: u32, v: u64, buf: &mut Cursor<'_>) {
    if v != 0 {
        buf.byte(key(tag, WireType::Varint));
        buf.varint(v);
    }
}

fn varint_field_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

/// A string field (its bytes, which the caller knows to be UTF-8), left out when empty.
fn put_str_field(tag: u32, s: &[u8], buf: &mut Cursor<'_>) {
    if !s.is_empty() {
        buf.byte(key(tag, WireType::LengthDelimited));
        buf.varint(s.len() as u64);
        buf.bytes(s);
    }
}

fn str_field_len(s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// A field holding a message of two string fields (tags 1 and 2): the checksum, and each
/// attribute (a map entry), whose length is that of the two strings'.
fn pair_len(a: &str, b: &str) -> usize {
    str_field_len(a.as_bytes()) + str_field_len(b.as_bytes())
}

fn put_pair_field(tag: u32, a: &str, b: &str, buf: &mut Cursor<'_>) {
    buf.byte(key(tag, WireType::LengthDelimited));
    buf.varint(pair_len(a, b) as u64);
    put_str_field(1, a.as_bytes(), buf);
    put_str_field(2, b.as_bytes(), buf);
}

fn pb_kind(kind: Kind) -> u64 {
    let k = match kind {
        Kind::File => PbKind::File,
        Kind::Folder => PbKind::Folder,
    };
    k as i32 as u64
}

/// The length of `e` as an `Entry` message: what [`encode_entry`] writes.
fn entry_len(e: &EntryView<'_>, etag: &[u8]) -> usize {
    let (algorithm, value) = e.checksum;
    let checksum = if algorithm.is_empty() && value.is_empty() {
        0
    } else {
        let n = pair_len(algorithm, value);
        1 + encoded_len_varint(n as u64) + n
    };
    let attrs: usize = e
        .attrs()
        .map(|(k, v)| {
            let n = pair_len(k, v);
            1 + encoded_len_varint(n as u64) + n
        })
        .sum();
    varint_field_len(e.id)
        + varint_field_len(e.parent)
        + str_field_len(e.name.as_bytes())
        + varint_field_len(pb_kind(e.kind))
        + varint_field_len(e.size)
        + varint_field_len(e.mtime as u64)
        + str_field_len(etag)
        + checksum
        + str_field_len(e.mime.as_bytes())
        + varint_field_len(e.tree_size)
        + varint_field_len(e.tree_mtime as u64)
        + attrs
}

/// An `Entry` message's fields, in tag order, as prost writes them (proto3: fields at their
/// default are left out; int64 as the two's-complement varint).
fn encode_entry(e: &EntryView<'_>, etag: &[u8], buf: &mut Cursor<'_>) {
    put_varint_field(1, e.id, buf);
    put_varint_field(2, e.parent, buf);
    put_str_field(3, e.name.as_bytes(), buf);
    put_varint_field(4, pb_kind(e.kind), buf);
    put_varint_field(5, e.size, buf);
    put_varint_field(6, e.mtime as u64, buf);
    put_str_field(7, etag, buf);
    let (algorithm, value) = e.checksum;
    if !algorithm.is_empty() || !value.is_empty() {
        put_pair_field(8, algorithm, value, buf);
    }
    put_str_field(9, e.mime.as_bytes(), buf);
    put_varint_field(10, e.tree_size, buf);
    put_varint_field(11, e.tree_mtime as u64, buf);
    for (k, v) in e.attrs() {
        put_pair_field(12, k, v, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta_rpc::entry_pb;
    use prost::Message;
    use tera_engine::meta::{MetaStore, Precondition, Upload};
    use tera_engine::{Config, Db};

    const NS: u64 = 3;

    fn store(dir: &std::path::Path) -> (Db, MetaStore) {
        let mut c = Config::new(dir);
        c.dram_budget_bytes = 4 << 20;
        c.partitions = 2;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.max_key_bytes = 4200;
        c.max_value_bytes = 2048;
        c.background_maintenance = false;
        c.topology = Some(tera_engine::Topology::simulated(1, 2, 0, 1 << 30));
        let db = Db::open(c).unwrap();
        let m = MetaStore::open(&db).unwrap();
        m.create_namespace(NS, 1).unwrap();
        (db, m)
    }

    /// A folder whose entries between them set every field of `Entry` to a default and to
    /// something else: folders and files, sizes of up to ten varint bytes (a folder holding
    /// 2^63 bytes), mtimes before the epoch,
    /// checksums and MIME types present and absent, non-ASCII names, 0, 1 and 3 attributes.
    fn fill(m: &MetaStore) {
        m.mkdir(NS, "/d", false, 5).unwrap();
        m.mkdir(NS, "/d/sub folder", false, -7).unwrap();
        let uploads = [
            ("a.txt", 0, 0, ("", ""), ""),
            (
                "b.bin",
                1 << 62,
                -1_000_000,
                ("sha256", "00ff"),
                "application/octet-stream",
            ),
            (
                "网络.md",
                100,
                i64::MAX,
                ("", "only-a-value"),
                "text/markdown",
            ),
            ("é", 1, i64::MIN + 1, ("adler32", ""), ""),
        ];
        for (name, size, mtime, (alg, sum), mime) in uploads {
            let up = Upload {
                size,
                mtime,
                checksum: (alg.into(), sum.into()),
                mime: mime.into(),
            };
            m.upload(NS, &format!("/d/{name}"), &up, &Precondition::None)
                .unwrap();
        }
        // "sub folder" holds 2^63 bytes: the largest file and one byte more.
        for (name, size) in [("h1", tera_engine::meta::MAX_FILE_SIZE), ("h2", 1)] {
            let up = Upload {
                size,
                ..Upload::default()
            };
            m.upload(
                NS,
                &format!("/d/sub folder/{name}"),
                &up,
                &Precondition::None,
            )
            .unwrap();
        }
        m.set_attrs(NS, "/d/b.bin", &[("owner", Some("alice"))], 9)
            .unwrap();
        m.set_attrs(
            NS,
            "/d/sub folder",
            &[("x", Some("1")), ("y", Some("")), ("zz", Some("three"))],
            9,
        )
        .unwrap();
    }

    fn built(m: &MetaStore, page: usize, after: Option<&str>) -> ListResponse {
        let mut b = ListBuilder::with_capacity(page, usize::MAX);
        let next = m.list_with(NS, "/d", page, after, |e| b.push(e)).unwrap();
        b.finish(crate::meta_rpc::page_token(next))
    }

    fn generated(m: &MetaStore, page: usize, after: Option<&str>) -> ListResponse {
        let p = m.list(NS, "/d", page, after).unwrap();
        ListResponse {
            entries: p.entries.into_iter().map(entry_pb).collect(),
            next_page_token: crate::meta_rpc::page_token(p.next),
            encoded_entries: Vec::new(),
        }
    }

    #[test]
    fn built_listing_decodes_to_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, m) = store(dir.path());
        fill(&m);
        for page in [1, 2, 5, 100] {
            let (b, g) = (built(&m, page, None), generated(&m, page, None));
            let bytes = b.encode_to_vec();
            assert_eq!(bytes.len(), b.encoded_len());
            let decoded = ListResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(decoded, g, "page size {page}");
            assert_eq!(decoded.entries.len(), page.min(5));
        }
        // The second page too, after the first page's last name.
        let first = m.list(NS, "/d", 2, None).unwrap();
        let after = first.next.as_deref();
        assert!(after.is_some());
        let b = ListResponse::decode(built(&m, 2, after).encode_to_vec().as_slice()).unwrap();
        assert_eq!(b, generated(&m, 2, after));
        assert_ne!(b.entries[0].name, first.entries[0].name);
    }

    /// Pages cut at a byte budget end with the entry that passed it, and following their
    /// tokens lists every entry once, in order; a budget of one byte gives one entry a page.
    #[test]
    fn a_byte_budget_ends_pages_early_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, m) = store(dir.path());
        fill(&m);
        let full: Vec<String> = generated(&m, 100, None)
            .entries
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(full.len(), 5);
        for budget in [1, 60, 200, 100_000] {
            let (mut names, mut pages) = (Vec::new(), 0);
            let mut after: Option<String> = None;
            loop {
                let mut b = ListBuilder::with_capacity(100, budget);
                let next = m
                    .list_with(NS, "/d", 100, after.as_deref(), |e| b.push(e))
                    .unwrap();
                let bytes = b
                    .finish(crate::meta_rpc::page_token(next.clone()))
                    .encode_to_vec();
                let r = ListResponse::decode(bytes.as_slice()).unwrap();
                let last = r.entries.last().expect("never an empty page").name.clone();
                // Without the last entry, the page was under its budget.
                let without_last: usize = r.entries[..r.entries.len() - 1]
                    .iter()
                    .map(|e| {
                        let n = e.encoded_len();
                        1 + prost::encoding::encoded_len_varint(n as u64) + n
                    })
                    .sum();
                assert!(without_last < budget, "budget {budget}");
                names.extend(r.entries.into_iter().map(|e| e.name));
                pages += 1;
                match next {
                    Some(n) => {
                        assert_eq!(n, last);
                        after = Some(n);
                    }
                    None => break,
                }
                assert!(pages <= full.len(), "budget {budget}: pages never end");
            }
            assert_eq!(names, full, "budget {budget}");
            if budget == 1 {
                assert_eq!(pages, full.len());
            }
            if budget == 100_000 {
                assert_eq!(pages, 1);
            }
        }
    }

    #[test]
    fn built_entries_are_prost_s_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, m) = store(dir.path());
        fill(&m);
        let p = m.list(NS, "/d", 100, None).unwrap();
        let mut checked = 0;
        m.list_with(NS, "/d", 100, None, |v| {
            let e = entry_pb(v.to_entry());
            // A map's entries may come in any order; with at most one, there is one encoding.
            if e.attributes.len() <= 1 {
                let mut b = ListBuilder::default();
                assert!(b.push(v), "no budget: room for more");
                let ours = b.finish(String::new()).encode_to_vec();
                let prost_s = ListResponse {
                    entries: vec![e],
                    ..Default::default()
                }
                .encode_to_vec();
                assert_eq!(ours, prost_s, "{}", v.name);
                checked += 1;
            }
            true
        })
        .unwrap();
        assert_eq!(checked, p.entries.len() - 1);
    }
}
