//! `tera.meta.v1.Metadata`: the metadata model of `tera_engine::meta` over gRPC. Each call
//! authenticates and authorizes the caller, checks field sizes, then runs the engine call on
//! the blocking pool; the engine's refusals become statuses in `crate::error`.

use crate::error::oversized;
use crate::proto::meta::metadata_server::Metadata;
use crate::proto::meta::{self as pb, stat_request::Target};
use crate::router::Deadline;
use crate::state::{blocking, settle, State};
use crate::wire::ListBuilder;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tera_engine::meta::{Change, Kind, MetaEntry, Precondition, Upload, MAX_PAGE};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Longest mime type.
pub const MAX_MIME: usize = 255;
/// Longest checksum algorithm name.
pub const MAX_CHECKSUM_ALGORITHM: usize = 32;
/// Longest checksum value.
pub const MAX_CHECKSUM_VALUE: usize = 512;
/// Longest attribute name.
pub const MAX_ATTR_NAME: usize = 255;
/// Longest attribute value.
pub const MAX_ATTR_VALUE: usize = 4096;
/// Most attributes set or unset in one call.
pub const MAX_ATTRS_PER_CALL: usize = 1000;
/// Longest etag in a condition.
pub const MAX_ETAG: usize = 64;
/// Page size when the client asks for none.
pub const DEFAULT_PAGE: usize = 1000;
/// Longest wait of a Changes call.
pub const MAX_WAIT_MS: u32 = 60_000;
/// How long one poll of a WatchChanges stream or a Changes long poll waits in the engine
/// before it checks whether the client left, the token expired, the deadline is near or the
/// server drains.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// A Changes long poll answers this long before its deadline (or a fifth of the time it has,
/// if less), so that the answer reaches the client in time.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The Metadata service.
#[derive(Debug, Clone)]
pub struct MetaService {
    state: Arc<State>,
}

impl MetaService {
    pub fn new(state: Arc<State>) -> MetaService {
        MetaService { state }
    }

    /// Bytes a listing or change page may fill before it ends early: half of
    /// `max_response_bytes`, so that the entry that passes it (at most the engine's largest
    /// value, 1 MiB, and its name) still fits; the configuration keeps `max_response_bytes`
    /// at least [`crate::config::MIN_RESPONSE_BYTES`].
    fn response_budget(&self) -> usize {
        self.state.config.max_response_bytes / 2
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An engine entry as the wire's.
pub fn entry_pb(e: MetaEntry) -> pb::Entry {
    let (algorithm, value) = e.checksum;
    let checksum =
        (!algorithm.is_empty() || !value.is_empty()).then_some(pb::Checksum { algorithm, value });
    pb::Entry {
        id: e.id,
        parent_id: e.parent,
        name: e.name,
        kind: match e.kind {
            Kind::File => pb::Kind::File,
            Kind::Folder => pb::Kind::Folder,
        } as i32,
        size: e.size,
        mtime_us: e.mtime,
        etag: e.etag,
        checksum,
        mime: e.mime,
        tree_size: e.tree_size,
        tree_mtime_us: e.tree_mtime,
        attributes: e.attrs.into_iter().collect(),
    }
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        Err(oversized(field, s.len(), max))
    } else {
        Ok(())
    }
}

fn if_match(s: String) -> Result<Option<String>, Status> {
    check_len("if_match", &s, MAX_ETAG)?;
    Ok((!s.is_empty()).then_some(s))
}

/// The wire's page token for a listing's continuation (the last name, base64url): opaque to
/// clients, who must pass it back unchanged.
pub fn page_token(next: Option<String>) -> String {
    next.map(|n| B64.encode(n.as_bytes())).unwrap_or_default()
}

fn parse_page_token(t: &str) -> Result<Option<String>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    B64.decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is not one this server gave: pass a response's next_page_token unchanged, or none for the first page",
            )
        })
}

/// A change page as its response, cut to about `budget` bytes (see [`trim_changes`]).
fn changes_pb(page: tera_engine::meta::ChangePage, budget: usize) -> pb::ChangesResponse {
    let mut r = pb::ChangesResponse {
        changes: page
            .changes
            .into_iter()
            .map(|(revision, c)| pb::Change {
                revision,
                change: Some(match c {
                    Change::Upsert(e) => pb::change::Change::Upsert(entry_pb(e)),
                    Change::Delete(id) => pb::change::Change::DeletedId(id),
                }),
            })
            .collect(),
        cursor: page.cursor,
    };
    trim_changes(&mut r, budget);
    r
}

/// Cut a change page at a revision boundary once its changes take `budget` bytes: the page
/// keeps whole revisions (always the first, however large) and its cursor becomes the last
/// one kept, so that the next page starts with the first revision cut. A revision is never
/// split: the next page starts after the cursor, which would skip the rest of it.
fn trim_changes(r: &mut pb::ChangesResponse, budget: usize) {
    use prost::Message;
    let mut size = 0usize;
    for i in 0..r.changes.len() {
        if size >= budget && r.changes[i].revision != r.changes[i - 1].revision {
            r.cursor = r.changes[i - 1].revision;
            r.changes.truncate(i);
            return;
        }
        let n = r.changes[i].encoded_len();
        size += 1 + prost::encoding::encoded_len_varint(n as u64) + n;
    }
}

#[tonic::async_trait]
impl Metadata for MetaService {
    async fn stat(&self, req: Request<pb::StatRequest>) -> Result<Response<pb::Entry>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let target = req
            .into_inner()
            .target
            .ok_or_else(|| Status::invalid_argument("set path or id: the entry to stat"))?;
        let read = match target {
            Target::Path(p) => engine.meta.stat_deferred(ns, &p),
            Target::Id(id) => engine.meta.stat_id_deferred(ns, id),
        };
        let e = settle(&engine, read).await?;
        Ok(Response::new(entry_pb(e)))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let page = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is over the maximum of {MAX_PAGE}: ask for fewer and follow next_page_token"
                )))
            }
            n => n,
        };
        let after = parse_page_token(&r.page_token)?;
        let mut out = ListBuilder::with_capacity(page, self.response_budget());
        let read = engine
            .meta
            .list_with_deferred(ns, &r.path, page, after.as_deref(), |e| out.push(e));
        let next = settle(&engine, read).await?;
        Ok(Response::new(out.finish(page_token(next))))
    }

    async fn create_folder(
        &self,
        req: Request<pb::CreateFolderRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let e = blocking(move || engine.meta.mkdir(ns, &r.path, r.parents, now_us())).await?;
        Ok(Response::new(entry_pb(e)))
    }

    async fn r#move(&self, req: Request<pb::MoveRequest>) -> Result<Response<pb::Entry>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let cond = if_match(r.if_match)?;
        let e = blocking(move || {
            engine
                .meta
                .rename(ns, &r.from_path, &r.to_path, cond.as_deref(), now_us())
        })
        .await?;
        Ok(Response::new(entry_pb(e)))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let cond = if_match(r.if_match)?;
        let queued = {
            let engine = engine.clone();
            blocking(move || {
                engine
                    .meta
                    .delete_deferred(ns, &r.path, r.recursive, cond.as_deref(), now_us())
            })
            .await?
        };
        // What was below a non-empty folder is removed in the background: the call's time
        // does not grow with the folder (the entries are unreachable already).
        if queued && engine.reclaim.send(ns).is_err() {
            tracing::warn!(
                ns,
                "the reclaim thread is gone: a deleted folder's entries stay queued until a restart"
            );
        }
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn commit_upload(
        &self,
        req: Request<pb::CommitUploadRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        use pb::commit_upload_request::Precondition as P;
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        check_len("mime", &r.mime, MAX_MIME)?;
        let checksum = r.checksum.unwrap_or_default();
        check_len(
            "checksum.algorithm",
            &checksum.algorithm,
            MAX_CHECKSUM_ALGORITHM,
        )?;
        check_len("checksum.value", &checksum.value, MAX_CHECKSUM_VALUE)?;
        let pre = match r.precondition {
            Some(P::IfMatch(t)) => match if_match(t)? {
                Some(t) => Precondition::IfMatch(t),
                None => Precondition::None,
            },
            Some(P::IfNoneMatch(true)) => Precondition::IfNoneMatch,
            Some(P::IfNoneMatch(false)) | None => Precondition::None,
        };
        let up = Upload {
            size: r.size,
            mtime: if r.mtime_us == 0 {
                now_us()
            } else {
                r.mtime_us
            },
            checksum: (checksum.algorithm, checksum.value),
            mime: r.mime,
        };
        let e = blocking(move || engine.meta.upload(ns, &r.path, &up, &pre)).await?;
        Ok(Response::new(entry_pb(e)))
    }

    async fn set_attributes(
        &self,
        req: Request<pb::SetAttributesRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let n = r.set.len() + r.unset.len();
        if n > MAX_ATTRS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{n} attributes in one call, more than the limit of {MAX_ATTRS_PER_CALL}: split the change"
            )));
        }
        for (k, v) in &r.set {
            if k.is_empty() {
                return Err(Status::invalid_argument("an attribute name is empty"));
            }
            check_len("attribute name", k, MAX_ATTR_NAME)?;
            check_len(&format!("attribute {k:?}"), v, MAX_ATTR_VALUE)?;
        }
        for k in &r.unset {
            check_len("attribute name", k, MAX_ATTR_NAME)?;
            if r.set.contains_key(k) {
                return Err(Status::invalid_argument(format!(
                    "attribute {k:?} is both set and unset"
                )));
            }
        }
        let e = blocking(move || {
            let mut changes: Vec<(&str, Option<&str>)> = r
                .set
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            changes.extend(r.unset.iter().map(|k| (k.as_str(), None)));
            engine.meta.set_attrs(ns, &r.path, &changes, now_us())
        })
        .await?;
        Ok(Response::new(entry_pb(e)))
    }

    async fn changes(
        &self,
        req: Request<pb::ChangesRequest>,
    ) -> Result<Response<pb::ChangesResponse>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let deadline = req.extensions().get::<Deadline>().copied();
        let r = req.into_inner();
        let max = match r.max_revisions as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "max_revisions {n} is over the maximum of {MAX_PAGE}"
                )))
            }
            n => n,
        };
        if r.wait_ms > MAX_WAIT_MS {
            return Err(Status::invalid_argument(format!(
                "wait_ms {} is over the maximum of {MAX_WAIT_MS}: poll again instead",
                r.wait_ms
            )));
        }
        // A long poll waits in slices, each on the blocking pool: a call whose client left
        // or whose deadline passed (the gate drops it) holds a thread for at most one more
        // slice, and a drain ends it within one. It answers, with no changes, a little
        // before its deadline rather than past it.
        let start = tokio::time::Instant::now();
        let mut end = start + Duration::from_millis(u64::from(r.wait_ms));
        if let Some(d) = deadline {
            let margin = (d.0.saturating_duration_since(start) / 5).min(DEADLINE_MARGIN);
            end = end.min(d.0 - margin);
        }
        let mut cursor = r.cursor;
        loop {
            let slice = end
                .saturating_duration_since(tokio::time::Instant::now())
                .min(WATCH_POLL);
            let engine = engine.clone();
            let page = blocking(move || engine.meta.changes(ns, cursor, max, slice)).await?;
            if !page.changes.is_empty()
                || tokio::time::Instant::now() >= end
                || *self.state.draining.borrow()
            {
                return Ok(Response::new(changes_pb(page, self.response_budget())));
            }
            cursor = page.cursor;
        }
    }

    type WatchChangesStream = ReceiverStream<Result<pb::ChangesResponse, Status>>;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let (claims, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        let max = self.state.config.max_watches;
        let open = self.state.watches.fetch_add(1, Ordering::AcqRel);
        let guard = WatchSlot(self.state.clone());
        if open >= max {
            return Err(Status::resource_exhausted(format!(
                "{open} change streams are open, the server's limit ({max}): retry later, or poll with Changes"
            )));
        }
        let mut cursor = req.into_inner().cursor;
        // Check the cursor before the stream starts, so that a too-old one is the call's
        // status rather than the stream's first message.
        let first = {
            let engine = engine.clone();
            blocking(move || engine.meta.changes(ns, cursor, MAX_PAGE, Duration::ZERO)).await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut draining = self.state.draining.subscribe();
        let budget = self.response_budget();
        tokio::spawn(async move {
            let state = guard.0.clone();
            let _guard = guard;
            let mut page = Some(first);
            loop {
                let p = match page.take() {
                    Some(p) => p,
                    None => {
                        let engine = engine.clone();
                        let c = cursor;
                        let poll =
                            blocking(move || engine.meta.changes(ns, c, MAX_PAGE, WATCH_POLL));
                        tokio::select! {
                            r = poll => match r {
                                Ok(p) => p,
                                Err(s) => {
                                    let _ = tx.send(Err(s)).await;
                                    return;
                                }
                            },
                            _ = tx.closed() => return,
                            _ = crate::state::drained(&mut draining) => {
                                // Without waiting: a client that does not read must not hold the
                                // stream open through the drain.
                                let _ = tx.try_send(Err(draining_status()));
                                return;
                            }
                        }
                    }
                };
                let r = changes_pb(p, budget);
                cursor = r.cursor;
                if !r.changes.is_empty() && tx.send(Ok(r)).await.is_err() {
                    return;
                }
                if claims.exp <= crate::auth::now_secs() {
                    let _ = tx
                        .send(Err(Status::unauthenticated(
                            "the token expired during the stream: get a new one and watch again from the last cursor",
                        )))
                        .await;
                    return;
                }
                // Revoked (the user removed, or its password, role or namespace changed).
                if let Err(e) = state.users.check_current(&claims) {
                    let _ = tx.send(Err(Status::unauthenticated(e.to_string()))).await;
                    return;
                }
                if *draining.borrow() {
                    // Without waiting: a client that does not read must not hold the
                    // stream open through the drain.
                    let _ = tx.try_send(Err(draining_status()));
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        let (_, ns) = self.state.authorize(&req, req.get_ref().namespace)?;
        let engine = self.state.engine()?;
        // On the blocking pool: the revision is made durable, which may wait for a flush.
        let u = blocking(move || engine.meta.usage(ns)).await?;
        Ok(Response::new(pb::Usage {
            bytes: u.bytes,
            revision: u.revision,
        }))
    }
}

/// Counts an open WatchChanges stream until dropped.
struct WatchSlot(Arc<State>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a WatchChanges stream ends when terad shuts down: UNAVAILABLE, the status a client
/// retries (an OK end would read as the server having nothing more to say).
fn draining_status() -> Status {
    Status::unavailable(
        "terad is shutting down: watch again (from the last cursor received) once it is back",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, name_len: usize) -> pb::Change {
        pb::Change {
            revision,
            change: Some(pb::change::Change::Upsert(pb::Entry {
                name: "n".repeat(name_len),
                ..Default::default()
            })),
        }
    }

    /// A change page is cut only between revisions, after the revision that passes the
    /// budget, with the cursor at the last revision kept; under the budget it is untouched.
    #[test]
    fn change_pages_are_cut_between_revisions() {
        // Revisions 5, 6, 6, 6, 7 of about 100 bytes each.
        let page = || pb::ChangesResponse {
            changes: [5, 6, 6, 6, 7].iter().map(|&r| change(r, 96)).collect(),
            cursor: 9,
        };
        let mut r = page();
        trim_changes(&mut r, 1 << 20);
        assert_eq!(r, page(), "under the budget");
        let mut r = page();
        trim_changes(&mut r, 1);
        assert_eq!(
            (r.changes.len(), r.cursor),
            (1, 5),
            "the first revision, whole"
        );
        let mut r = page();
        trim_changes(&mut r, 150);
        let revs: Vec<u64> = r.changes.iter().map(|c| c.revision).collect();
        assert_eq!(revs, [5, 6, 6, 6], "revision 6 is not split");
        assert_eq!(r.cursor, 6);
        let mut r = page();
        trim_changes(&mut r, 450);
        assert_eq!((r.changes.len(), r.cursor), (5, 9));
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let t = page_token(Some("a name/with ü".into()));
        assert_eq!(
            parse_page_token(&t).ok(),
            Some(Some("a name/with ü".into()))
        );
        assert_eq!(page_token(None), "");
        assert_eq!(parse_page_token("").ok(), Some(None));
        assert_eq!(
            parse_page_token("!!!").map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
    }
}
