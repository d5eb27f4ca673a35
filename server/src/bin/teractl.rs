//! teractl: the command-line client of terad, and its load generator (`teractl bench`).
//! `teractl login USER` stores a token (in ~/.config/teractl/token, or --token-file); the
//! other commands send it. Output is one line per entry or change, tab-separated, so that
//! scripts can cut it; errors go to stderr as `teractl: CODE: message` with exit status 1.

use clap::{Parser, Subcommand};

/// mimalloc: `teractl bench` shares the machine's cores with the terad it loads, and with
/// glibc's allocator a third of its CPU went to allocating and freeing the strings of the
/// responses it decodes. teractl's memory is not budgeted, so a heap per thread costs nothing
/// that matters here; terad keeps glibc's allocator (docs/benchmarks.md says why).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ends the process quietly when stdout is closed (`teractl ... | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tera_server::bench::{self, BenchOptions};
use tera_server::client::{self, Bearer};
use tera_server::proto::auth as apb;
use tera_server::proto::health::health_check_response::ServingStatus;
use tera_server::proto::health::HealthCheckRequest;
use tera_server::proto::meta as pb;
use tonic::Status;

#[derive(Debug, Parser)]
#[command(name = "teractl", version, about = "Command-line client of terad")]
struct Cli {
    /// terad's address.
    #[arg(long, env = "TERACTL_SERVER", default_value = "http://127.0.0.1:7420")]
    server: String,
    /// Where login stores the token and the other commands read it
    /// (default: $XDG_CONFIG_HOME/teractl/token or ~/.config/teractl/token).
    #[arg(long, env = "TERACTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The namespace to work in (0: your own; others need the admin role).
    #[arg(long, short = 'n', default_value_t = 0)]
    namespace: u64,
    /// Deadline of each call, in milliseconds (sent as grpc-timeout).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Get a token for USER and store it. The password comes from TERACTL_PASSWORD, or from
    /// the first line of standard input.
    Login {
        user: String,
        /// Token lifetime asked for, in seconds (0: the server's default).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// Who the stored token says you are.
    Whoami,
    /// Show one entry, by path or by id.
    Stat {
        path: Option<String>,
        #[arg(long)]
        id: Option<u64>,
    },
    /// List a folder: kind, size, etag, id, name (tab-separated).
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Entries per call; every page is fetched.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
    /// Create a folder.
    Mkdir {
        path: String,
        /// Create missing parents; succeed if it exists.
        #[arg(short, long)]
        parents: bool,
    },
    /// Commit an upload's metadata: create or replace the file at PATH.
    Put {
        path: String,
        #[arg(long, default_value_t = 0)]
        size: u64,
        /// Modification time, microseconds since the epoch (0: now).
        #[arg(long, default_value_t = 0)]
        mtime_us: i64,
        /// ALGORITHM:VALUE, e.g. sha256:ab12...
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long, default_value = "")]
        mime: String,
        /// Replace only if the file has this etag.
        #[arg(long, conflicts_with = "if_none_match")]
        if_match: Option<String>,
        /// Create only if nothing is at PATH.
        #[arg(long)]
        if_none_match: bool,
    },
    /// Move or rename an entry.
    Mv {
        from: String,
        to: String,
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Delete an entry.
    Rm {
        path: String,
        /// Delete a non-empty folder with everything below it.
        #[arg(short, long)]
        recursive: bool,
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Set (NAME=VALUE) and unset (NAME) attributes.
    Attr {
        path: String,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[arg(long = "unset", value_name = "NAME")]
        unset: Vec<String>,
    },
    /// The namespace's total size and current revision.
    Usage,
    /// One page of changes after a cursor; prints them, then `cursor N`.
    Changes {
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        #[arg(long, default_value_t = 1000)]
        max: u32,
        /// Wait up to this long for a first change.
        #[arg(long, default_value_t = 0)]
        wait_ms: u32,
    },
    /// Follow changes as they happen (from --cursor, or from now).
    Watch {
        #[arg(long)]
        cursor: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<usize>,
    },
    /// The server's health (grpc.health.v1).
    Health {
        /// A service name; empty for the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Load terad and print ops/s and latency percentiles per concurrency level.
    Bench {
        /// Concurrency levels, comma-separated.
        #[arg(long, default_value = "1,100,200,400", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Measured seconds per level.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Warm-up seconds per level (not measured).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Operation mix, e.g. stat=50,list=50 or stat,list,mkdir,upload.
        #[arg(long, default_value = "stat=50,list=50")]
        mix: String,
        /// HTTP/2 connections shared by the tasks (at least one per client thread).
        #[arg(long, default_value_t = 4)]
        channels: usize,
        /// Client threads, each a single-threaded runtime with its own connections and share
        /// of the tasks; 0: one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Files in the fixture folder that stat and list read.
        #[arg(long, default_value_t = 100)]
        fixture_entries: usize,
        /// Keep the fixture afterwards.
        #[arg(long)]
        keep: bool,
        /// Decode each listed entry into a message, as an application would. By default the
        /// bench checks each entry's frame (key, wire type, length) and counts them without
        /// parsing inside, so that its CPU, taken from the terad it shares the machine with,
        /// is mostly the protocol's work.
        #[arg(long)]
        decode_entries: bool,
    },
}

fn token_path(cli: &Cli) -> PathBuf {
    if let Some(p) = &cli.token_file {
        return p.clone();
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("teractl").join("token")
}

fn read_token(cli: &Cli) -> Result<String, String> {
    let p = token_path(cli);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!(
                "no token at {}: {e} (run `teractl login USER` first)",
                p.display()
            )
        })
}

fn status(s: Status) -> String {
    format!(
        "{}: {}",
        tera_server::error::code_label(s.code()),
        s.message()
    )
}

fn kind(k: i32) -> &'static str {
    match pb::Kind::try_from(k) {
        Ok(pb::Kind::File) => "file",
        Ok(pb::Kind::Folder) => "folder",
        _ => "?",
    }
}

fn print_entry(e: &pb::Entry) {
    outln!("id\t{}", e.id);
    outln!("parent_id\t{}", e.parent_id);
    outln!("name\t{}", e.name);
    outln!("kind\t{}", kind(e.kind));
    outln!("size\t{}", e.size);
    outln!("mtime_us\t{}", e.mtime_us);
    outln!("etag\t{}", e.etag);
    if let Some(c) = &e.checksum {
        outln!("checksum\t{}:{}", c.algorithm, c.value);
    }
    if !e.mime.is_empty() {
        outln!("mime\t{}", e.mime);
    }
    outln!("tree_size\t{}", e.tree_size);
    outln!("tree_mtime_us\t{}", e.tree_mtime_us);
    let mut attrs: Vec<_> = e.attributes.iter().collect();
    attrs.sort();
    for (k, v) in attrs {
        outln!("attr\t{k}={v}");
    }
}

fn entry_line(e: &pb::Entry) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        kind(e.kind),
        e.size,
        e.etag,
        e.id,
        e.name
    )
}

fn print_changes(r: &pb::ChangesResponse) {
    for c in &r.changes {
        match &c.change {
            Some(pb::change::Change::Upsert(e)) => {
                outln!("{}\tupsert\t{}", c.revision, entry_line(e))
            }
            Some(pb::change::Change::DeletedId(id)) => outln!("{}\tdelete\t{id}", c.revision),
            None => outln!("{}\t?", c.revision),
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let ns = cli.namespace;
    // Bench times that cannot be durations are refused before anything connects.
    if let Cmd::Bench {
        duration, warmup, ..
    } = &cli.command
    {
        bench::seconds("--duration", *duration, false)?;
        bench::seconds("--warmup", *warmup, true)?;
    }
    match &cli.command {
        Cmd::Login { user, ttl } => {
            let password = match std::env::var("TERACTL_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| format!("reading the password from stdin: {e}"))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let ch = client::connect(&cli.server, timeout).await?;
            let mut a = client::auth(ch, Bearer::new(None, true)?.deadline(timeout));
            let r = a
                .token(apb::TokenRequest {
                    user: user.clone(),
                    password,
                    ttl_seconds: *ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            let p = token_path(&cli);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            tera_server::auth::write_private(&p, format!("{}\n", r.token).as_bytes())
                .map_err(|e| e.to_string())?;
            outln!(
                "logged in as {user} (namespace {}); token expires at {} (epoch seconds), saved to {}",
                r.namespace,
                r.expires_at,
                p.display()
            );
            return Ok(());
        }
        Cmd::Health { service } => {
            let ch = client::connect(&cli.server, timeout).await?;
            let r = client::health(ch)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let s = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
            outln!("{}", s.as_str_name());
            return if s == ServingStatus::Serving {
                Ok(())
            } else {
                Err(format!("the server is {}", s.as_str_name()))
            };
        }
        _ => {}
    }
    let token = read_token(&cli)?;
    if let Cmd::Bench {
        concurrency,
        duration,
        warmup,
        mix,
        channels,
        threads,
        fixture_entries,
        keep,
        decode_entries,
    } = &cli.command
    {
        let o = BenchOptions {
            server: cli.server.clone(),
            token,
            namespace: ns,
            levels: concurrency.clone(),
            duration: bench::seconds("--duration", *duration, false)?,
            warmup: bench::seconds("--warmup", *warmup, true)?,
            mix: bench::parse_mix(mix)?,
            channels: *channels,
            threads: tera_server::config::or_one_per_cpu(*threads),
            fixture_entries: *fixture_entries,
            timeout,
            keep: *keep,
            decode_entries: *decode_entries,
        };
        bench::run(o).await?;
        return Ok(());
    }
    let ch = client::connect(&cli.server, timeout).await?;
    let bearer = Bearer::new(Some(&token), true)?.deadline(timeout);
    let mut m = client::meta(ch.clone(), bearer.clone());
    match &cli.command {
        Cmd::Whoami => {
            let r = client::auth(ch, bearer)
                .ping(apb::PingRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let role = apb::Role::try_from(r.role).unwrap_or(apb::Role::Unspecified);
            outln!(
                "user\t{}\nnamespace\t{}\nrole\t{}\nexpires_at\t{}\nserver_version\t{}",
                r.user,
                r.namespace,
                role.as_str_name(),
                r.expires_at,
                r.version
            );
        }
        Cmd::Stat { path, id } => {
            let target = match (path, id) {
                (_, Some(id)) => pb::stat_request::Target::Id(*id),
                (Some(p), None) => pb::stat_request::Target::Path(p.clone()),
                (None, None) => return Err("give a path or --id".into()),
            };
            let e = m
                .stat(pb::StatRequest {
                    namespace: ns,
                    target: Some(target),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_entry(&e);
        }
        Cmd::Ls { path, page_size } => {
            let mut token = String::new();
            loop {
                let r = m
                    .list(pb::ListRequest {
                        namespace: ns,
                        path: path.clone(),
                        page_size: *page_size,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for e in &r.entries {
                    outln!("{}", entry_line(e));
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
        }
        Cmd::Mkdir { path, parents } => {
            let e = m
                .create_folder(pb::CreateFolderRequest {
                    namespace: ns,
                    path: path.clone(),
                    parents: *parents,
                })
                .await
                .map_err(status)?
                .into_inner();
            outln!("{}", entry_line(&e));
        }
        Cmd::Put {
            path,
            size,
            mtime_us,
            checksum,
            mime,
            if_match,
            if_none_match,
        } => {
            let checksum = match checksum {
                Some(c) => {
                    let (a, v) = c
                        .split_once(':')
                        .ok_or("--checksum: use ALGORITHM:VALUE, e.g. sha256:ab12...")?;
                    Some(pb::Checksum {
                        algorithm: a.into(),
                        value: v.into(),
                    })
                }
                None => None,
            };
            let precondition = match (if_match, if_none_match) {
                (Some(t), _) => Some(pb::commit_upload_request::Precondition::IfMatch(t.clone())),
                (None, true) => Some(pb::commit_upload_request::Precondition::IfNoneMatch(true)),
                (None, false) => None,
            };
            let e = m
                .commit_upload(pb::CommitUploadRequest {
                    namespace: ns,
                    path: path.clone(),
                    size: *size,
                    mtime_us: *mtime_us,
                    checksum,
                    mime: mime.clone(),
                    precondition,
                })
                .await
                .map_err(status)?
                .into_inner();
            outln!("{}", entry_line(&e));
        }
        Cmd::Mv { from, to, if_match } => {
            let e = m
                .r#move(pb::MoveRequest {
                    namespace: ns,
                    from_path: from.clone(),
                    to_path: to.clone(),
                    if_match: if_match.clone().unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            outln!("{}", entry_line(&e));
        }
        Cmd::Rm {
            path,
            recursive,
            if_match,
        } => {
            m.delete(pb::DeleteRequest {
                namespace: ns,
                path: path.clone(),
                recursive: *recursive,
                if_match: if_match.clone().unwrap_or_default(),
            })
            .await
            .map_err(status)?;
            outln!("deleted {path}");
        }
        Cmd::Attr { path, set, unset } => {
            let mut map = std::collections::HashMap::new();
            for s in set {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| format!("--set {s}: use NAME=VALUE"))?;
                map.insert(k.to_string(), v.to_string());
            }
            let e = m
                .set_attributes(pb::SetAttributesRequest {
                    namespace: ns,
                    path: path.clone(),
                    set: map,
                    unset: unset.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_entry(&e);
        }
        Cmd::Usage => {
            let u = m
                .get_usage(pb::GetUsageRequest { namespace: ns })
                .await
                .map_err(status)?
                .into_inner();
            outln!("bytes\t{}\nrevision\t{}", u.bytes, u.revision);
        }
        Cmd::Changes {
            cursor,
            max,
            wait_ms,
        } => {
            let r = m
                .changes(pb::ChangesRequest {
                    namespace: ns,
                    cursor: *cursor,
                    max_revisions: *max,
                    wait_ms: *wait_ms,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_changes(&r);
            outln!("cursor\t{}", r.cursor);
        }
        Cmd::Watch { cursor, count } => {
            let cursor = match cursor {
                Some(c) => *c,
                None => {
                    m.get_usage(pb::GetUsageRequest { namespace: ns })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .revision
                }
            };
            // A stream has no deadline: connect again without one.
            let ch = client::connect(&cli.server, Duration::from_secs(365 * 24 * 3600)).await?;
            let mut m = client::meta(ch, Bearer::new(Some(&token), true)?);
            let mut stream = m
                .watch_changes(pb::WatchChangesRequest {
                    namespace: ns,
                    cursor,
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut seen = 0usize;
            while let Some(r) = stream.message().await.map_err(status)? {
                print_changes(&r);
                use std::io::Write;
                let _ = std::io::stdout().flush();
                seen += r.changes.len();
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Cmd::Login { .. } | Cmd::Health { .. } | Cmd::Bench { .. } => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread is plenty for a command; `bench` starts its own client threads.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teractl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teractl: {e}");
            ExitCode::FAILURE
        }
    }
}
