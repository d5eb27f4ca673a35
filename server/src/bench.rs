//! `teractl bench`: a closed-loop load generator. It makes its own fixture (a folder of
//! `fixture_entries` files, listed and stat-ed by the load, and a folder for the entries the
//! load creates), then for each concurrency level runs that many tasks over a few HTTP/2
//! connections for a warm-up and a measured duration, each task issuing operations drawn
//! from the mix back to back. The tasks and connections are dealt over `threads` client
//! threads, each a single-threaded runtime (like terad's I/O threads, so that a connection's
//! ready requests leave together). It prints ops/s and p50/p99/p99.9 latency per level and
//! operation (hdrhistogram, microsecond resolution), with error counts by status code; a
//! RESOURCE_EXHAUSTED that is the engine's DRAM budget refusing a write is counted apart, as
//! `RESOURCE_EXHAUSTED(budget)`, from terad shedding load (see [`error_label`]). Stats and
//! listings are sent with [`H2Channel::unary_bytes`] (the request encoded with prost, the
//! answer's status read from its trailers as tonic reads it, the answer decoded: a stat's
//! entry in full and checked against the name asked for, a listing's entries counted);
//! mkdir and upload, and listings with `decode_entries`, through tonic's generated client.

use crate::client::{self, Bearer, Meta};
use crate::h2client::H2Channel;
use crate::proto::meta as pb;
use hdrhistogram::Histogram;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Stat a file of the fixture.
    Stat,
    /// List the fixture folder (one page holds it all).
    List,
    /// Create a folder.
    Mkdir,
    /// Commit an upload of a new file.
    Upload,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::List => "list",
            Op::Mkdir => "mkdir",
            Op::Upload => "upload",
        }
    }
}

/// Parse a mix such as `stat=50,list=50` or `stat,list` (equal weights).
pub fn parse_mix(s: &str) -> Result<Vec<(Op, u32)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = match part.split_once('=') {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("mix {part:?}: the weight must be a whole number"))?,
            ),
            None => (part, 1),
        };
        let op = match name {
            "stat" => Op::Stat,
            "list" => Op::List,
            "mkdir" => Op::Mkdir,
            "upload" => Op::Upload,
            n => {
                return Err(format!(
                    "mix: unknown operation {n:?} (stat, list, mkdir, upload)"
                ))
            }
        };
        if w > 0 {
            out.push((op, w));
        }
    }
    if out.is_empty() {
        return Err("mix: no operation with a positive weight".into());
    }
    Ok(out)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub server: String,
    pub token: String,
    pub namespace: u64,
    pub levels: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub mix: Vec<(Op, u32)>,
    /// HTTP/2 connections the tasks share (spread over the threads, at least one each).
    pub channels: usize,
    /// Client threads, each a single-threaded runtime with its own connections and its share
    /// of the tasks.
    pub threads: usize,
    pub fixture_entries: usize,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Leave the fixture in place afterwards.
    pub keep: bool,
    /// Decode each listed entry into a `pb::Entry`; otherwise the entries' frames are
    /// checked and counted ([`ListedCount`]).
    pub decode_entries: bool,
}

/// A `ListResponse` as the bench reads it by default: its top-level fields are walked
/// (each entry's key, wire type and length, checked against the bytes that arrived: a cut or
/// malformed frame fails) and the entries counted, without parsing inside them. Decoding 100
/// entries into `pb::Entry`s, five strings each, took teractl about as much CPU as terad spent
/// producing the listing, and parsing each entry's fields to skip them a third of teractl's
/// CPU; on a shared machine that CPU came out of terad's. `teractl bench --decode-entries`
/// decodes every entry instead.
///
/// A read-side type: encoding one writes the page token only (the entries are not kept).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListedCount {
    /// How many entries (field 1) the listing held.
    pub entries: usize,
    pub next_page_token: String,
}

impl prost::Message for ListedCount {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        if !self.next_page_token.is_empty() {
            prost::encoding::string::encode(2, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{check_wire_type, skip_field, string, WireType};
        match tag {
            1 => {
                // Skipping a length-delimited field reads its length and fails if it runs
                // past the end of the message; nothing inside it is parsed.
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                skip_field(wire_type, tag, buf, ctx)?;
                self.entries += 1;
                Ok(())
            }
            2 => string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if self.next_page_token.is_empty() {
            0
        } else {
            prost::encoding::string::encoded_len(2, &self.next_page_token)
        }
    }

    fn clear(&mut self) {
        self.entries = 0;
        self.next_page_token.clear();
    }
}

/// The paths of the calls the bench makes without tonic ([`H2Channel::unary_bytes`]).
const LIST_PATH: &str = "/tera.meta.v1.Metadata/List";
const STAT_PATH: &str = "/tera.meta.v1.Metadata/Stat";

#[derive(Debug)]
struct Tally {
    hist: BTreeMap<Op, Histogram<u64>>,
    errors: BTreeMap<(Op, &'static str), u64>,
}

impl Tally {
    fn new(mix: &[(Op, u32)]) -> Result<Tally, String> {
        let mut hist = BTreeMap::new();
        for (op, _) in mix {
            hist.insert(
                *op,
                Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?,
            );
        }
        Ok(Tally {
            hist,
            errors: BTreeMap::new(),
        })
    }

    fn merge(&mut self, o: Tally) {
        for (op, h) in o.hist {
            if let Some(mine) = self.hist.get_mut(&op) {
                let _ = mine.add(&h);
            }
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// A small fast generator (xorshift64*), one per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn status_code(s: &tonic::Status) -> &'static str {
    crate::error::code_label(s.code())
}

/// The label a failed call is counted under in the report: its code's name, except for a
/// RESOURCE_EXHAUSTED from the engine's DRAM budget (`tera_engine::Error::BudgetExhausted`,
/// which `error::engine_status` passes on with the engine's message, "DRAM budget exhausted:
/// ..."): `RESOURCE_EXHAUSTED(budget)`. terad answers RESOURCE_EXHAUSTED for overload too (its
/// request, login and watch limits), which a soak test tolerates; a budget refusal means
/// writes are being refused, which it must not.
pub fn error_label(s: &tonic::Status) -> &'static str {
    if s.code() == tonic::Code::ResourceExhausted && s.message().starts_with(BUDGET_MESSAGE) {
        "RESOURCE_EXHAUSTED(budget)"
    } else {
        status_code(s)
    }
}

/// How the message of `tera_engine::Error::BudgetExhausted` begins (its `Display`); a test
/// below keeps the two in step.
const BUDGET_MESSAGE: &str = "DRAM budget exhausted";

/// A `--duration` or `--warmup` of teractl bench (`flag` names it in the message): a finite
/// number of seconds, not negative, that a `Duration` holds, and above 0 unless `zero_ok`.
pub fn seconds(flag: &str, secs: f64, zero_ok: bool) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if zero_ok || !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{flag} must be a number of seconds {}, not {secs}",
            if zero_ok { "of 0 or more" } else { "above 0" }
        )),
    }
}

async fn setup(m: &mut Meta, o: &BenchOptions, root: &str) -> Result<(), String> {
    let ns = o.namespace;
    let fail = |what: &str, s: tonic::Status| {
        format!("fixture: {what}: {}: {}", status_code(&s), s.message())
    };
    m.create_folder(pb::CreateFolderRequest {
        namespace: ns,
        path: format!("{root}/fixture"),
        parents: true,
    })
    .await
    .map_err(|s| fail("mkdir", s))?;
    m.create_folder(pb::CreateFolderRequest {
        namespace: ns,
        path: format!("{root}/work"),
        parents: true,
    })
    .await
    .map_err(|s| fail("mkdir", s))?;
    for i in 0..o.fixture_entries {
        m.commit_upload(pb::CommitUploadRequest {
            namespace: ns,
            path: format!("{root}/fixture/f{i:05}"),
            size: 1000 + i as u64,
            mtime_us: 0,
            checksum: Some(pb::Checksum {
                algorithm: "sha256".into(),
                value: format!("{i:064x}"),
            }),
            mime: "application/octet-stream".into(),
            precondition: None,
        })
        .await
        .map_err(|s| fail("upload", s))?;
    }
    Ok(())
}

/// The bench's Metadata client: tonic's generated client over [`H2Channel`].
type BenchMeta = pb::metadata_client::MetadataClient<
    tonic::service::interceptor::InterceptedService<H2Channel, Bearer>,
>;

struct Worker {
    /// The connection `meta` and the calls without tonic use: a task stops once it is
    /// lost.
    chan: H2Channel,
    meta: BenchMeta,
    /// The headers of the calls made on `chan` without tonic: stats, and listings unless
    /// `decode_entries` (tonic's client machinery took a fifth of teractl's CPU per listing;
    /// docs/benchmarks.md). mkdir and upload go through `meta`.
    headers: http::HeaderMap,
    decode_entries: bool,
    ns: u64,
    root: String,
    fixture: usize,
    mix: Vec<(Op, u32)>,
    total_weight: u64,
    rng: Rng,
    id: String,
    seq: u64,
}

impl Worker {
    fn pick(&mut self) -> Op {
        let mut r = self.rng.next() % self.total_weight;
        for (op, w) in &self.mix {
            if r < u64::from(*w) {
                return *op;
            }
            r -= u64::from(*w);
        }
        self.mix[0].0
    }

    async fn run_one(&mut self, op: Op) -> Result<(), tonic::Status> {
        let ns = self.ns;
        match op {
            Op::Stat => {
                let i = (self.rng.next() % self.fixture.max(1) as u64) as usize;
                let req = pb::StatRequest {
                    namespace: ns,
                    target: Some(pb::stat_request::Target::Path(format!(
                        "{}/fixture/f{i:05}",
                        self.root
                    ))),
                };
                let answer = self
                    .chan
                    .unary_bytes(STAT_PATH, &self.headers, &req.encode_to_vec())
                    .await?;
                // Decoded in full, as a client that uses the entry would.
                let e = pb::Entry::decode(answer).map_err(|e| {
                    tonic::Status::internal(format!("an entry that does not decode: {e}"))
                })?;
                if e.name != format!("f{i:05}") {
                    return Err(tonic::Status::data_loss(format!(
                        "stat of f{i:05} answered {:?}",
                        e.name
                    )));
                }
            }
            Op::List => {
                let page = self.fixture.clamp(1, 10_000);
                let req = pb::ListRequest {
                    namespace: ns,
                    path: format!("{}/fixture", self.root),
                    page_size: page as u32,
                    page_token: String::new(),
                };
                let got = if self.decode_entries {
                    self.meta.list(req).await?.into_inner().entries.len()
                } else {
                    let answer = self
                        .chan
                        .unary_bytes(LIST_PATH, &self.headers, &req.encode_to_vec())
                        .await?;
                    ListedCount::decode(answer)
                        .map_err(|e| {
                            tonic::Status::internal(format!("a listing that does not decode: {e}"))
                        })?
                        .entries
                };
                // A short page would make the listing look cheaper than it is.
                if got != self.fixture.min(page) {
                    return Err(tonic::Status::data_loss(format!(
                        "the fixture's listing held {got} entries, not {}",
                        self.fixture
                    )));
                }
            }
            Op::Mkdir => {
                self.seq += 1;
                self.meta
                    .create_folder(pb::CreateFolderRequest {
                        namespace: ns,
                        path: format!("{}/work/d-{}-{}", self.root, self.id, self.seq),
                        parents: false,
                    })
                    .await?;
            }
            Op::Upload => {
                self.seq += 1;
                self.meta
                    .commit_upload(pb::CommitUploadRequest {
                        namespace: ns,
                        path: format!("{}/work/u-{}-{}", self.root, self.id, self.seq),
                        size: self.rng.next() % (1 << 20),
                        mtime_us: 0,
                        checksum: Some(pb::Checksum {
                            algorithm: "sha256".into(),
                            value: format!("{:016x}", self.rng.next()),
                        }),
                        mime: "application/octet-stream".into(),
                        precondition: None,
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// Run the benchmark; returns the report (also printed level by level to stdout).
pub async fn run(o: BenchOptions) -> Result<String, String> {
    let threads = o.threads.max(1);
    let channels = o.channels.max(threads);
    let bearer = Bearer::new(Some(&o.token), false)?.deadline(o.timeout);
    let mut m = client::meta(client::connect(&o.server, o.timeout).await?, bearer.clone());
    let tag: String = crate::auth::random_bytes::<4>()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = format!("/bench-{tag}");
    setup(&mut m, &o, &root).await?;
    let mut report = String::new();
    let header = format!(
        "# teractl bench: {} fixture entries under {root}, {channels} HTTP/2 connections, {threads} client threads, {:?} per level after {:?} warm-up\n{:>6} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9}  errors\n",
        o.fixture_entries, o.duration, o.warmup, "conc", "op", "ops/s", "p50_ms", "p99_ms", "p999_ms", "count"
    );
    print!("{header}");
    report.push_str(&header);
    for (li, &level) in o.levels.iter().enumerate() {
        let plan = Level {
            o: o.clone(),
            bearer: bearer.clone(),
            root: root.clone(),
            li,
            level,
            threads,
            channels,
        };
        let total = tokio::task::spawn_blocking(move || plan.run())
            .await
            .map_err(|e| format!("a bench thread failed: {e}"))??;
        let secs = o.duration.as_secs_f64();
        let mut block = String::new();
        for (op, h) in &total.hist {
            let errs: Vec<String> = total
                .errors
                .iter()
                .filter(|((eop, _), _)| eop == op)
                .map(|((_, code), n)| format!("{code}={n}"))
                .collect();
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                block,
                "{level:>6} {:>7} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9}  {}",
                op.name(),
                h.len() as f64 / secs,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.len(),
                if errs.is_empty() {
                    "-".to_string()
                } else {
                    errs.join(",")
                }
            );
        }
        let all: u64 = total.hist.values().map(|h| h.len()).sum();
        let _ = writeln!(block, "{level:>6} {:>7} {:>11.1}", "all", all as f64 / secs);
        print!("{block}");
        report.push_str(&block);
    }
    if !o.keep {
        let r = m
            .delete(pb::DeleteRequest {
                namespace: o.namespace,
                path: root.clone(),
                recursive: true,
                if_match: String::new(),
            })
            .await;
        if let Err(s) = r {
            eprintln!("teractl bench: could not remove {root}: {}", s.message());
        }
    }
    Ok(report)
}

/// One concurrency level: `level` tasks dealt over `threads` client threads.
struct Level {
    o: BenchOptions,
    bearer: Bearer,
    root: String,
    li: usize,
    level: usize,
    threads: usize,
    channels: usize,
}

impl Level {
    /// Run the level's warm-up and measured time on the client threads; their tallies merged.
    fn run(&self) -> Result<Tally, String> {
        let start = Instant::now();
        let measure_from = start + self.o.warmup;
        let end = measure_from + self.o.duration;
        let mut total = Tally::new(&self.o.mix)?;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| scope.spawn(move || self.run_thread(t, measure_from, end)))
                .collect();
            for h in handles {
                match h.join() {
                    Ok(r) => total.merge(r?),
                    Err(_) => return Err("a bench thread panicked".to_string()),
                }
            }
            Ok(())
        })?;
        Ok(total)
    }

    /// Client thread `t`: its own runtime and connections, and tasks `t`, `t + threads`, ...
    fn run_thread(&self, t: usize, measure_from: Instant, end: Instant) -> Result<Tally, String> {
        let o = &self.o;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a bench runtime: {e}"))?;
        rt.block_on(async {
            // Connections t, t + threads, ... of the `channels`.
            let mine = (t..self.channels).step_by(self.threads).count();
            let mut chans = Vec::with_capacity(mine);
            for _ in 0..mine {
                chans.push(H2Channel::connect(&o.server, o.timeout).await?);
            }
            let total_weight: u64 = o.mix.iter().map(|(_, w)| u64::from(*w)).sum();
            // One tally for the thread's tasks: a histogram per task (about 150 KB each) made
            // 400 tasks' records miss the caches, costing teractl CPU that terad needed
            // when both run on one machine.
            let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::new(&o.mix)?));
            let mut tasks = Vec::new();
            let headers = self.bearer.fixed_headers();
            for (k, w) in (t..self.level).step_by(self.threads).enumerate() {
                let service = tonic::service::interceptor::InterceptedService::new(
                    chans[k % mine].clone(),
                    self.bearer.clone(),
                );
                let mut worker = Worker {
                    chan: chans[k % mine].clone(),
                    meta: pb::metadata_client::MetadataClient::new(service.clone())
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                    headers: headers.clone(),
                    decode_entries: o.decode_entries,
                    ns: o.namespace,
                    root: self.root.clone(),
                    fixture: o.fixture_entries,
                    mix: o.mix.clone(),
                    total_weight,
                    rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (((self.li as u64) << 32) | (w as u64 + 1))),
                    id: format!("{}-{w}", self.li),
                    seq: 0,
                };
                let tally = tally.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let op = worker.pick();
                        let r = worker.run_one(op).await;
                        let t1 = Instant::now();
                        let failed = r.is_err();
                        if t0 >= measure_from {
                            // Only this thread's tasks take the lock, one at a time: never
                            // contended.
                            let mut counts = tally.lock().unwrap_or_else(|e| e.into_inner());
                            match r {
                                Ok(()) => {
                                    if let Some(h) = counts.hist.get_mut(&op) {
                                        h.saturating_record((t1 - t0).as_micros().max(1) as u64);
                                    }
                                }
                                Err(s) => {
                                    *counts.errors.entry((op, error_label(&s))).or_default() += 1
                                }
                            }
                        }
                        if failed {
                            // Every call on a lost connection fails at once: the task stops
                            // (its last call counted) instead of spinning.
                            if worker.chan.is_closed() {
                                break;
                            }
                            // A failure can come back without waiting; the thread's other
                            // tasks get their turn.
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            for task in tasks {
                if let Err(e) = task.await {
                    return Err(format!("a bench task failed: {e}"));
                }
            }
            // Every task has ended, and with it every other handle on the tally.
            let tally = std::sync::Arc::try_unwrap(tally)
                .map_err(|_| "a bench task outlived its level".to_string())?;
            Ok(tally.into_inner().unwrap_or_else(|e| e.into_inner()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse() {
        assert_eq!(
            parse_mix("stat=3, list=1,upload=0").ok(),
            Some(vec![(Op::Stat, 3), (Op::List, 1)])
        );
        assert_eq!(
            parse_mix("mkdir,upload").ok(),
            Some(vec![(Op::Mkdir, 1), (Op::Upload, 1)])
        );
        assert!(parse_mix("read=1").is_err());
        assert!(parse_mix("stat=0").is_err());
    }

    #[test]
    fn budget_refusals_are_told_apart_from_overload() {
        use tera_engine::meta::MetaError;
        use tera_engine::Error;
        let budget = || Error::BudgetExhausted("partition 3: no frame for the record".into());
        // As terad answers it, from the engine and through the metadata model.
        let s = crate::error::engine_status(budget());
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(error_label(&s), "RESOURCE_EXHAUSTED(budget)", "{s:?}");
        let s = crate::error::meta_status(MetaError::Engine(budget()));
        assert_eq!(error_label(&s), "RESOURCE_EXHAUSTED(budget)", "{s:?}");
        assert!(budget().to_string().starts_with(BUDGET_MESSAGE));
        // terad's overload answers stay plain RESOURCE_EXHAUSTED, and other codes their names.
        let shed = tonic::Status::resource_exhausted(
            "terad is serving its limit of 10 requests at once: retry with backoff",
        );
        assert_eq!(error_label(&shed), "RESOURCE_EXHAUSTED");
        assert_eq!(
            error_label(&tonic::Status::not_found("DRAM budget exhausted")),
            "NOT_FOUND"
        );
    }

    #[test]
    fn a_listing_is_counted_whole_and_a_damaged_one_refused() {
        use prost::Message;
        let entry = |i: u64| pb::Entry {
            id: i,
            parent_id: 1,
            name: format!("f{i:05}"),
            kind: pb::Kind::File as i32,
            size: 1000 + i,
            etag: format!("\"{i:x}\""),
            checksum: Some(pb::Checksum {
                algorithm: "sha256".into(),
                value: format!("{i:064x}"),
            }),
            mime: "application/octet-stream".into(),
            attributes: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let mut listing = pb::ListResponse::default();
        listing.entries = (0..100).map(entry).collect();
        listing.next_page_token = "next".into();
        let bytes = listing.encode_to_vec();
        let counted = ListedCount::decode(&bytes[..]).expect("a listing");
        assert_eq!(counted.entries, 100);
        assert_eq!(counted.next_page_token, "next");
        // Every cut of the last entry fails to parse: its length runs past the end.
        for cut in 1..entry(99).encoded_len() {
            assert!(
                ListedCount::decode(&bytes[..bytes.len() - 6 - cut]).is_err(),
                "{cut}"
            );
        }
        let mut one = pb::ListResponse::default();
        one.entries = vec![entry(1)];
        let good = one.encode_to_vec();
        assert_eq!(ListedCount::decode(&good[..]).unwrap().entries, 1);
        // The entry's length takes two bytes (it is over 127). Field 1 with another wire type
        // (a varint, then 7, which does not exist) is not an entry.
        assert_eq!((good[0], good[1] & 0x80, good[2] & 0x80), (0x0a, 0x80, 0));
        for key in [0x08, 0x0f] {
            let mut bad = good.clone();
            bad[0] = key;
            assert!(ListedCount::decode(&bad[..]).is_err(), "{key:#x}");
            assert!(pb::ListResponse::decode(&bad[..]).is_err(), "{key:#x}");
        }
        // A length whose varint never ends.
        assert!(ListedCount::decode(&[0x0a, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn bench_seconds_are_checked() {
        assert_eq!(
            seconds("--duration", 20.0, false),
            Ok(Duration::from_secs(20))
        );
        assert_eq!(seconds("--warmup", 0.0, true), Ok(Duration::ZERO));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            let e = seconds("--duration", bad, false).unwrap_err();
            assert!(
                e.contains("--duration must be a number of seconds above 0"),
                "{e}"
            );
        }
        assert!(seconds("--warmup", -2.0, true).is_err());
    }
}
