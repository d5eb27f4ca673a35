//! End to end: terad as a real process on a free loopback port, driven by teractl. Covers the
//! token, the metadata commands, a second user's namespace, refused tokens, health, metrics,
//! change feeds, each call's W3C trace id in terad's log, and SIGTERM (exit 0) followed by a
//! restart that still has every acknowledged write; and SIGKILL during a write load, after
//! which a restart has every acknowledged write and a whole tree. A second test drives the
//! same process through the library's clients for what teractl does not show: reflection (v1
//! and v1alpha), an oversized message, an expired token and the health Watch stream. Others
//! cover the configuration's layers through the real binary (`--print-config`), ctrl-c and
//! JSON logs, long polls and deadlines, load shedding, connection limits, a poisoned
//! database, and health while terad replays a long log at start.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TERAD: &str = env!("CARGO_BIN_EXE_terad");
const TERACTL: &str = env!("CARGO_BIN_EXE_teractl");

struct Terad {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Drop for Terad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Terad {
    start_with(data, &[])
}

fn start_with(data: &Path, extra: &[&str]) -> Terad {
    start_limited(data, extra, &[])
}

/// Start terad with these resource limits (`libc::RLIMIT_*`, soft and hard set alike). With a
/// limit on file size, SIGXFSZ is ignored, so that a write past it fails with `EFBIG` instead
/// of killing terad.
fn start_limited(
    data: &Path,
    extra: &[&str],
    limits: &[(libc::__rlimit_resource_t, u64)],
) -> Terad {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .expect("log file");
    let mut cmd = Command::new(TERAD);
    let limits = limits.to_vec();
    if !limits.is_empty() {
        // SAFETY: the closure runs in the child between fork and exec, and calls only
        // setrlimit and signal, which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for &(resource, n) in &limits {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            })
        };
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--dram-budget-mib", "64", "--log-level", "debug"])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("terad starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut grpc, mut metrics) = (None, None);
    while grpc.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("terad prints its addresses before anything else ends its stdout")
            .expect("stdout line");
        if let Some(a) = line.strip_prefix("terad: listening on ") {
            grpc = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("terad: metrics on http://") {
            metrics = Some(a.trim_end_matches("/metrics").to_string());
        }
    }
    // Keep reading so that terad never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    Terad {
        child,
        grpc: format!("http://{}", grpc.unwrap_or_default()),
        metrics: metrics.unwrap_or_default(),
    }
}

struct Ctl {
    server: String,
    token_file: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(TERACTL);
        c.arg("--server")
            .arg(&self.server)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .env_remove("TERACTL_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("teractl starts");
        if let Some(s) = stdin {
            let _ = child.stdin.take().expect("stdin").write_all(s.as_bytes());
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("teractl runs")
    }

    /// Run and expect success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(
            o.status.success(),
            "teractl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run and expect failure with this status code; returns stderr.
    fn fails(&self, args: &[&str], code: &str) -> String {
        let o = self.run(args, None);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "teractl {args:?} should fail");
        assert!(
            err.contains(code),
            "teractl {args:?}: want {code}, got {err}"
        );
        err
    }

    fn login(&self, user: &str, password: &str) {
        let o = self.run(&["login", user], Some(&format!("{password}\n")));
        assert!(
            o.status.success(),
            "login {user}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A token for the first-start admin of the terad whose data directory is `data`, living
/// `ttl` seconds (0: the server's default).
async fn admin_token(
    ch: &tonic::transport::Channel,
    data: &Path,
    ttl: u32,
) -> tera_server::proto::auth::TokenResponse {
    use tera_server::client::{self, Bearer};
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    client::auth(ch.clone(), Bearer::new(None, false).expect("bearer"))
        .token(tera_server::proto::auth::TokenRequest {
            user: "admin".into(),
            password: password.trim().into(),
            ttl_seconds: ttl,
        })
        .await
        .expect("token")
        .into_inner()
}

/// A teractl for `t` keeping its token in `token_file`, once `t` serves.
fn serving(t: &Terad, token_file: PathBuf) -> Ctl {
    let ctl = Ctl {
        server: t.grpc.clone(),
        token_file,
    };
    wait_serving(&ctl);
    ctl
}

/// Wait until health says SERVING (the database opens after the port is bound).
fn wait_serving(ctl: &Ctl) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = ctl.run(&["health"], None);
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "SERVING");
            return;
        }
        assert!(Instant::now() < deadline, "terad never became SERVING");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics port");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

fn sigterm_and_wait(t: &mut Terad) -> std::process::ExitStatus {
    signal_and_wait(t, "TERM")
}

/// Send terad `signal` (a name for kill(1), e.g. TERM or INT) and wait up to 30 s for it to
/// exit.
fn signal_and_wait(t: &mut Terad, signal: &str) -> std::process::ExitStatus {
    let pid = t.child.id().to_string();
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(&pid)
        .status()
        .expect("kill runs");
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = t.child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "terad did not stop after SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn terad_serves_teractl_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut t = start(&data);
    let admin = Ctl {
        server: t.grpc.clone(),
        token_file: dir.path().join("admin.token"),
    };
    wait_serving(&admin);

    // No token yet: refused.
    admin.fails(&["ls", "/"], "no token");
    let password = std::fs::read_to_string(data.join("admin-password")).expect("admin password");
    let o = admin.run(&["login", "admin"], Some("wrong\n"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("UNAUTHENTICATED"));
    admin.login("admin", password.trim());
    assert!(admin.ok(&["whoami"]).contains("ROLE_ADMIN"));
    let rev0: u64 = admin
        .ok(&["usage"])
        .lines()
        .find_map(|l| l.strip_prefix("revision\t"))
        .and_then(|r| r.parse().ok())
        .expect("usage prints the revision");

    // A watcher from here sees the next change.
    let watch = Command::new(TERACTL)
        .args(["--server", &admin.server, "--token-file"])
        .arg(&admin.token_file)
        .args(["watch", "--cursor", &rev0.to_string(), "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");

    // The metadata commands.
    assert!(admin
        .ok(&["mkdir", "-p", "/docs/2024"])
        .starts_with("folder\t"));
    admin.fails(&["mkdir", "/docs/2024"], "ALREADY_EXISTS");
    let put = admin.ok(&[
        "put",
        "/docs/2024/report.pdf",
        "--size",
        "42",
        "--checksum",
        "sha256:00ff",
        "--mime",
        "application/pdf",
    ]);
    assert!(put.starts_with("file\t42\t"), "{put}");
    admin.fails(
        &["put", "/docs/2024/report.pdf", "--if-none-match"],
        "FAILED_PRECONDITION",
    );
    admin.fails(
        &["put", "/docs/2024/report.pdf", "--if-match", "0"],
        "FAILED_PRECONDITION",
    );
    let ls = admin.ok(&["ls", "/docs/2024"]);
    assert_eq!(ls.lines().count(), 1);
    assert!(ls.ends_with("\treport.pdf\n"), "{ls}");
    let stat = admin.ok(&["stat", "/docs/2024/report.pdf"]);
    assert!(
        stat.contains("size\t42\n") && stat.contains("checksum\tsha256:00ff\n"),
        "{stat}"
    );
    assert!(stat.contains("mime\tapplication/pdf\n"), "{stat}");
    let attrs = admin.ok(&["attr", "/docs/2024/report.pdf", "--set", "color=red"]);
    assert!(attrs.contains("attr\tcolor=red\n"), "{attrs}");
    admin.fails(&["stat", "/docs/nope"], "NOT_FOUND");
    admin.fails(&["stat", "relative"], "INVALID_ARGUMENT");
    admin.fails(&["ls", "/docs/2024/report.pdf"], "FAILED_PRECONDITION");
    assert!(admin
        .ok(&["mv", "/docs/2024/report.pdf", "/docs/final.pdf"])
        .ends_with("\tfinal.pdf\n"));
    admin.fails(&["stat", "/docs/2024/report.pdf"], "NOT_FOUND");
    admin.ok(&["rm", "/docs/2024"]);
    admin.ok(&["mkdir", "/docs/old"]);
    admin.ok(&["put", "/docs/old/x", "--size", "1"]);
    admin.fails(&["rm", "/docs/old"], "FAILED_PRECONDITION");
    admin.ok(&["rm", "-r", "/docs/old"]);
    let ls = admin.ok(&["ls", "/docs"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert!(admin.ok(&["usage"]).contains("bytes\t42\n"));

    // The change feed has what happened, and the watcher saw the first change.
    let changes = admin.ok(&["changes", "--cursor", &rev0.to_string()]);
    assert!(changes.contains("\tupsert\tfolder\t"), "{changes}");
    assert!(changes.contains("\tupsert\tfile\t42\t"), "{changes}");
    assert!(changes.contains("\tdelete\t"), "{changes}");
    let w = watch
        .wait_with_output()
        .expect("watch ends after one change");
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(String::from_utf8_lossy(&w.stdout).contains("\tupsert\t"));

    // A second user, added while terad runs, reaches its own namespace only.
    let add = Command::new(TERAD)
        .arg("--data-dir")
        .arg(&data)
        .args(["user", "add", "bob"])
        .env("TERAD_NEW_PASSWORD", "bob-secret")
        .output()
        .expect("terad user add");
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let bob = Ctl {
        server: t.grpc.clone(),
        token_file: dir.path().join("bob.token"),
    };
    bob.login("bob", "bob-secret");
    bob.ok(&["mkdir", "/mine"]);
    bob.fails(&["-n", "1", "ls", "/"], "PERMISSION_DENIED");
    assert!(admin.ok(&["-n", "2", "ls", "/"]).contains("\tmine\n"));
    // Tampered and garbage tokens are refused.
    let tok = std::fs::read_to_string(&bob.token_file).expect("bob's token");
    let mut tampered = tok.trim().to_string();
    let flip = if tampered.ends_with('A') { 'B' } else { 'A' };
    tampered.pop();
    tampered.push(flip);
    std::fs::write(&bob.token_file, tampered).expect("write");
    bob.fails(&["ls", "/"], "UNAUTHENTICATED");
    std::fs::write(&bob.token_file, "garbage").expect("write");
    bob.fails(&["ls", "/"], "UNAUTHENTICATED");

    // Metrics and /healthz.
    let m = http_get(&t.metrics, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("terad_rpc_requests_total{method=\"tera.meta.v1.Metadata/List\",code=\"OK\"}"),
        "{m}"
    );
    assert!(m.contains("terad_rpc_duration_seconds_bucket"), "{m}");
    assert!(m.contains("terad_dram_budget_bytes 67108864"), "{m}");
    // The engine's own figures, after the writes above: what it holds in DRAM (within the
    // budget), its keys, and the tiering and compaction counters (present from the first
    // scrape, whatever their value).
    let engine = |name: &str| metric(&m, name).unwrap_or_else(|| panic!("no {name}:\n{m}"));
    let dram_bytes = engine("terad_tier_bytes{tier=\"dram\"}");
    assert!(dram_bytes > 0.0, "{m}");
    let used = engine("terad_dram_used_bytes");
    assert!(used >= dram_bytes && used <= 67108864.0, "{m}");
    assert!(engine("terad_tier_records{tier=\"dram\"}") > 0.0, "{m}");
    assert!(engine("terad_keys") > 0.0, "{m}");
    assert!(engine("terad_dram_index_bytes") > 0.0, "{m}");
    assert!((0.0..=1.0).contains(&engine("terad_dram_hit_ratio")), "{m}");
    for name in [
        "terad_tier_bytes{tier=\"far\"}",
        "terad_tier_reads_total{tier=\"dram\"}",
        "terad_promotions_total",
        "terad_readmissions_total",
        "terad_pages_demoted_total",
        "terad_compaction_bytes_total",
        "terad_segments_compacted_total",
        "terad_wal_fsyncs_total",
    ] {
        assert!(engine(name) >= 0.0, "{name}: {m}");
    }
    assert!(
        engine("terad_wal_fsyncs_total") > 0.0,
        "commit durability syncs: {m}"
    );
    // glibc's heap: terad has allocated something, and kept its free bytes' count.
    let gauge = |name: &str| -> Option<f64> {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    if cfg!(target_env = "gnu") {
        let in_use = gauge("terad_heap_in_use_bytes").unwrap_or_else(|| panic!("{m}"));
        assert!(in_use > 0.0, "{m}");
        assert!(gauge("terad_heap_free_bytes").is_some(), "{m}");
    }
    assert!(http_get(&t.metrics, "/healthz").ends_with("serving\n"));

    // teractl sends a W3C traceparent with every command; terad's log (debug level here)
    // shows each call's span with its trace and parent ids, and no colour codes when the
    // log is a file.
    let log = std::fs::read_to_string(data.with_extension("log")).expect("terad's log");
    assert!(!log.contains('\u{1b}'), "escape codes in a log file");
    let traced = log.lines().any(|l| {
        l.split_once("rpc{method=\"tera.meta.v1.Metadata/List\" trace_id=\"")
            .and_then(|(_, rest)| rest.split_once("\" parent_id=\""))
            .is_some_and(|(trace, rest)| {
                trace.len() == 32
                    && trace.bytes().all(|b| b.is_ascii_hexdigit())
                    && rest.len() >= 16
                    && rest.as_bytes()[..16].iter().all(|b| b.is_ascii_hexdigit())
            })
    });
    assert!(
        traced,
        "no List call's span with a trace id in the log:\n{log}"
    );

    // SIGTERM: drains, checkpoints, exits 0; a restart has every acknowledged write.
    let status = sigterm_and_wait(&mut t);
    assert_eq!(status.code(), Some(0), "terad exits 0 on SIGTERM");
    let t2 = start(&data);
    let admin2 = Ctl {
        server: t2.grpc.clone(),
        token_file: admin.token_file.clone(),
    };
    wait_serving(&admin2);
    // The token key persists, so the token from before the restart still works.
    let stat = admin2.ok(&["stat", "/docs/final.pdf"]);
    assert!(stat.contains("size\t42\n"), "{stat}");
    assert!(stat.contains("attr\tcolor=red\n"), "{stat}");
    assert!(admin2.ok(&["-n", "2", "ls", "/"]).contains("\tmine\n"));
}

/// Reflection over both versions, an oversized request, an expired token, health Watch.
#[tokio::test]
async fn terad_speaks_reflection_and_refuses_what_it_must() {
    use tera_server::client::{self, Bearer};
    use tera_server::proto::health::health_check_response::ServingStatus;
    use tera_server::proto::health::HealthCheckRequest;
    use tera_server::proto::meta as pb;
    use tera_server::proto::reflection::{v1, v1alpha};
    use tonic::Code;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut t = start(&data);
    serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(10))
        .await
        .expect("connect");

    // Reflection, v1alpha (what grpcio-reflection speaks) and v1.
    let mut r = v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let resp = stream.message().await.expect("a response").expect("one");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
        resp.message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tera.meta.v1.Metadata".to_string()),
        "{names:?}"
    );
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tera.auth.v1.Auth".into(),
            ),
        ),
    };
    let mut stream = r1
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner();
    let resp = stream.message().await.expect("a response").expect("one");
    assert!(matches!(
        resp.message_response,
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
            if f.file_descriptor_proto.len() == 1
    ));

    // The size limits, with a token of the default lifetime.
    let auth = client::auth(ch.clone(), Bearer::new(None, false).expect("bearer"));
    let tok = admin_token(&ch, &data, 0).await;
    let mut meta = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), true).expect("bearer"),
    );

    // An oversized request (over max_request_bytes, 1 MiB by default) is refused.
    let big = pb::CommitUploadRequest {
        namespace: 0,
        path: "/big".into(),
        mime: "x".repeat(2 << 20),
        ..Default::default()
    };
    let e = meta.commit_upload(big).await.expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_request_bytes"), "{e:?}");
    // An oversized field inside the limit is INVALID_ARGUMENT.
    let e = meta
        .commit_upload(pb::CommitUploadRequest {
            namespace: 0,
            path: "/m".into(),
            mime: "x".repeat(300),
            ..Default::default()
        })
        .await
        .expect_err("mime too long");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A token that lives a few seconds (at least two: the expiry is whole seconds), refused
    // once it has expired.
    let tok = admin_token(&ch, &data, 3).await;
    let mut meta = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), true).expect("bearer"),
    );
    meta.get_usage(pb::GetUsageRequest { namespace: 0 })
        .await
        .expect("usage with a fresh token");

    // Wait out the token's life (the expiry is what is tested, not a stand-in for a signal).
    let left = tok.expires_at - tera_server::auth::now_secs() + 1;
    tokio::time::sleep(Duration::from_secs(left.max(0) as u64)).await;
    let e = meta
        .get_usage(pb::GetUsageRequest { namespace: 0 })
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // A change stream open through the drain ends with UNAVAILABLE (retry), not OK.
    let tok = admin_token(&ch, &data, 0).await;
    let mut watcher = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), true).expect("bearer"),
    );
    let mut changes = watcher
        .watch_changes(pb::WatchChangesRequest {
            namespace: 0,
            cursor: 0,
        })
        .await
        .expect("watch changes")
        .into_inner();

    // Health Watch: SERVING now, NOT_SERVING when terad drains, then the stream ends.
    let mut h = client::health(ch.clone());
    let mut w = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = w.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let e = h
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(e.code(), Code::NotFound);
    let pid = t.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let next = w.message().await.expect("status").expect("one more");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert!(w.message().await.map(|m| m.is_none()).unwrap_or(true));
    let ended = loop {
        match changes.message().await {
            Ok(Some(_)) => continue, // the history up to now
            other => break other,
        }
    };
    match ended {
        Err(e) => {
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("shutting down"), "{e:?}");
        }
        Ok(None) => panic!("the change stream ended OK through a drain"),
        Ok(Some(_)) => unreachable!(),
    }
    drop(changes);
    drop(watcher);
    drop(w);
    drop(h);
    drop(meta);
    drop(auth);
    drop(r);
    drop(r1);
    drop(ch);
    let status = tokio::task::spawn_blocking(move || {
        let s = t.child.wait().expect("wait");
        (s, t)
    })
    .await
    .expect("join")
    .0;
    assert_eq!(status.code(), Some(0));
}

/// A Changes long poll answers with an empty page before its deadline (the server's
/// `request_timeout_ms`, or the client's shorter `grpc-timeout`) instead of failing past it,
/// and within one poll slice of a drain, so SIGTERM does not wait for it; a size that does not
/// fit is INVALID_ARGUMENT.
#[tokio::test]
async fn long_polls_answer_by_their_deadline_and_end_with_a_drain() {
    use tera_server::client::{self, Bearer};
    use tera_server::proto::meta as pb;
    use tonic::Code;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut t = start_with(&data, &["--set", "request_timeout_ms=5000"]);
    serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(60))
        .await
        .expect("connect");
    let tok = admin_token(&ch, &data, 0).await;
    let mut meta = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), false).expect("bearer"),
    );
    let cursor = meta
        .get_usage(pb::GetUsageRequest { namespace: 0 })
        .await
        .expect("usage")
        .into_inner()
        .revision;
    let poll = move |timeout: Option<Duration>| {
        let mut req = tonic::Request::new(pb::ChangesRequest {
            namespace: 0,
            cursor,
            max_revisions: 0,
            wait_ms: 60_000,
        });
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    };

    // No client deadline: the server's 5 s, answered a little before it.
    let t0 = Instant::now();
    let page = meta
        .changes(poll(None))
        .await
        .expect("an empty page, not CANCELLED or DEADLINE_EXCEEDED")
        .into_inner();
    let took = t0.elapsed();
    assert!(page.changes.is_empty());
    assert!(page.cursor >= cursor);
    assert!(took >= Duration::from_secs(3), "it waited: {took:?}");
    // The client's shorter deadline wins: answered before it (or the client would have
    // failed the call with DEADLINE_EXCEEDED).
    let t0 = Instant::now();
    let page = meta
        .changes(poll(Some(Duration::from_secs(2))))
        .await
        .expect("an empty page before the client's deadline")
        .into_inner();
    assert!(page.changes.is_empty());
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());

    // Sizes: past 2^63 - 1 is refused.
    let e = meta
        .commit_upload(pb::CommitUploadRequest {
            namespace: 0,
            path: "/huge".into(),
            size: u64::MAX,
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("largest file size"), "{e:?}");

    // A long poll in flight when the drain starts is answered within a slice (500 ms), and
    // terad exits 0 without waiting out the poll.
    let mut m2 = meta.clone();
    let pending = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = m2.changes(poll(None)).await;
        (r.map(|p| p.into_inner().changes.len()), t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = t.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let (r, took) = pending.await.expect("join");
    assert_eq!(r.expect("an empty page"), 0);
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(meta);
    drop(ch);
    let status = tokio::task::spawn_blocking(move || t.child.wait().expect("wait"))
        .await
        .expect("join");
    assert_eq!(status.code(), Some(0));
}

/// Past `max_concurrent_requests`, calls are refused at once with RESOURCE_EXHAUSTED rather
/// than queued; health stays reachable.
#[tokio::test]
async fn terad_sheds_load_past_its_limit() {
    use tera_server::client::{self, Bearer};
    use tera_server::proto::auth as apb;
    use tonic::Code;

    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_with(
        &dir.path().join("data"),
        &["--set", "max_concurrent_requests=1"],
    );
    let ctl = serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(30))
        .await
        .expect("connect");
    // Token calls with a wrong password each spend an argon2 hash (milliseconds): with one
    // permit, calls sent together cannot all get it.
    let mut calls = Vec::new();
    for _ in 0..16 {
        let mut auth = client::auth(ch.clone(), Bearer::new(None, false).expect("bearer"));
        calls.push(tokio::spawn(async move {
            auth.token(apb::TokenRequest {
                user: "admin".into(),
                password: "wrong".into(),
                ttl_seconds: 0,
            })
            .await
            .map(|_| ())
        }));
    }
    let (mut codes, mut messages) = (Vec::new(), Vec::new());
    for c in calls {
        let e = c.await.expect("join").expect_err("a wrong password");
        codes.push(e.code());
        messages.push(e.message().to_string());
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(codes.contains(&Code::Unauthenticated), "{codes:?}");
    // Shed by the request limit, not (only) held back by the login throttle.
    assert!(
        messages.iter().any(|m| m.contains("limit of 1 requests")),
        "{messages:?}"
    );
    assert!(codes
        .iter()
        .all(|c| matches!(c, Code::ResourceExhausted | Code::Unauthenticated)));
    // Health is exempt from the limit.
    assert_eq!(ctl.ok(&["health"]).trim(), "SERVING");
}

/// Repeated wrong passwords for one user from one address are slowed down: five are free,
/// the sixth earns a 1 s wait during which even the right password is refused at once
/// (RESOURCE_EXHAUSTED, saying when to retry), counted in the metrics; after the wait the
/// right password works, and another user is never held back.
#[tokio::test]
async fn failed_logins_are_throttled_per_user_and_address() {
    use tera_server::client::{self, Bearer};
    use tera_server::proto::auth as apb;
    use tonic::Code;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let t = start(&data);
    let ctl = serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(30))
        .await
        .expect("connect");
    let mut auth = client::auth(ch.clone(), Bearer::new(None, false).expect("bearer"));
    let login = |user: &str, password: &str| apb::TokenRequest {
        user: user.into(),
        password: password.into(),
        ttl_seconds: 0,
    };
    for i in 0..6 {
        let e = auth
            .token(login("admin", "wrong"))
            .await
            .expect_err("a wrong password");
        assert_eq!(e.code(), Code::Unauthenticated, "failure {i}: {e:?}");
    }
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    let held_at = Instant::now();
    let e = auth
        .token(login("admin", password.trim()))
        .await
        .expect_err("held back");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("too many failed logins") && e.message().contains("retry in"),
        "{e:?}"
    );
    // Another user's wrong password is judged as usual.
    let e = auth
        .token(login("nobody", "wrong"))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let page = http_get(&t.metrics, "/metrics");
    assert_eq!(
        metric(&page, "terad_logins_throttled_total"),
        Some(1.0),
        "{page}"
    );
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(held_at.elapsed())).await;
    let ok = auth
        .token(login("admin", password.trim()))
        .await
        .expect("after the wait")
        .into_inner();
    assert!(!ok.token.is_empty());
    // The success forgot the failures: two more wrong passwords are just that (without the
    // reset the second would be held back).
    for i in 0..2 {
        let e = auth
            .token(login("admin", "wrong"))
            .await
            .expect_err("wrong");
        assert_eq!(
            e.code(),
            Code::Unauthenticated,
            "wrong password {i} after a success: {e:?}"
        );
    }
    assert_eq!(ctl.ok(&["health"]).trim(), "SERVING");
}

/// HTTP/2's client connection preface, with an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Open a connection and speak HTTP/2's client preface: the bytes terad answers with until
/// it closes (empty if it is still serving after `wait`).
fn http2_answer(addr: &str, wait: Duration) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => out,
        // Still open: served (its SETTINGS may have come).
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("reading the answer: {e}"),
    }
}

/// The GOAWAY frame in `bytes` (after the server's SETTINGS): its error code and debug text.
fn goaway_of(bytes: &[u8]) -> Option<(u32, String)> {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let payload = bytes.get(at + 9..at + 9 + len)?;
        if bytes[at + 3] == 7 && len >= 8 {
            let code = u32::from_be_bytes(payload[4..8].try_into().ok()?);
            return Some((code, String::from_utf8_lossy(&payload[8..]).into_owned()));
        }
        at += 9 + len;
    }
    None
}

/// A gauge or counter's value in a /metrics page (the first line that starts with `name`).
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wait until terad counts `n` open connections.
fn wait_open_connections(t: &Terad, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = http_get(&t.metrics, "/metrics");
        if metric(&page, "terad_connections_open") == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {n} open connections: {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Past `max_connections`, a new connection is refused at once with an HTTP/2 GOAWAY
/// (ENHANCE_YOUR_CALM) naming the limit, and counted; when a connection closes its slot comes
/// back and the next one is served.
#[test]
fn terad_refuses_connections_past_max_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_with(&dir.path().join("data"), &["--set", "max_connections=2"]);
    let ctl = serving(&t, dir.path().join("t"));
    wait_open_connections(&t, 0.0);
    let addr = t.grpc.trim_start_matches("http://");
    // HTTP/2 connections (their preface sent), so that the handshake timeout leaves them open.
    let mut a = std::net::TcpStream::connect(addr).expect("first");
    a.write_all(PREFACE).expect("preface");
    let mut b = std::net::TcpStream::connect(addr).expect("second");
    b.write_all(PREFACE).expect("preface");
    wait_open_connections(&t, 2.0);
    let answer = http2_answer(addr, Duration::from_secs(10));
    let (code, text) = goaway_of(&answer).expect("a GOAWAY");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(text.contains("max_connections = 2"), "{text}");
    // A gRPC client's call fails. tonic's code depends on when it reads the GOAWAY:
    // RESOURCE_EXHAUSTED (ENHANCE_YOUR_CALM) when its request was already on the way,
    // UNAVAILABLE or CANCELLED when the connection closed first.
    let o = ctl.run(&["health"], None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "refused");
    assert!(
        ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED"]
            .iter()
            .any(|c| err.contains(c)),
        "{err}"
    );
    let page = http_get(&t.metrics, "/metrics");
    let refused = metric(
        &page,
        "terad_connections_refused_total{reason=\"max_connections\"}",
    );
    assert!(
        refused >= Some(2.0),
        "{refused:?}: {page}; teractl said {err}"
    );
    drop(a);
    wait_open_connections(&t, 1.0);
    assert_eq!(ctl.ok(&["health"]).trim(), "SERVING");
}

/// A connection holds its slot only while its client is there: one that says nothing is
/// closed after `handshake_timeout_ms`, one that never answers the server's HTTP/2 pings after
/// `keepalive_interval_ms` plus `keepalive_timeout_ms`; their slots come back.
#[test]
fn silent_and_unresponsive_connections_give_their_slots_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_with(
        &dir.path().join("data"),
        &[
            "--set",
            "max_connections=2",
            "--set",
            "handshake_timeout_ms=500",
            "--set",
            "keepalive_interval_ms=500",
            "--set",
            "keepalive_timeout_ms=500",
        ],
    );
    let ctl = serving(&t, dir.path().join("t"));
    wait_open_connections(&t, 0.0);
    let addr = t.grpc.trim_start_matches("http://");
    let silent = std::net::TcpStream::connect(addr).expect("connect");
    let mut deaf = std::net::TcpStream::connect(addr).expect("connect");
    deaf.write_all(PREFACE).expect("preface");
    let t0 = Instant::now();
    for mut c in [silent, deaf] {
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut out = Vec::new();
        match c.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("still open after {:?}: {e}", t0.elapsed()),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    wait_open_connections(&t, 0.0);
    assert_eq!(ctl.ok(&["health"]).trim(), "SERVING");
}

/// With few open files allowed, connections are refused before their descriptors reach the
/// ones kept for the database: with clients holding all but one of the connections they
/// could get, writes go on, and terad stops cleanly (its shutdown checkpoint included).
#[test]
fn terad_keeps_file_descriptors_for_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A quarter (96) is kept; terad's own files, sockets and the database's take a few dozen
    // more (two I/O threads, whatever the machine's CPU count).
    let t = start_limited(
        &data,
        &["--set", "io_threads=2"],
        &[(libc::RLIMIT_NOFILE, 384)],
    );
    let ctl = serving(&t, dir.path().join("t"));
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    ctl.login("admin", password.trim());
    let addr = t.grpc.trim_start_matches("http://");
    let counts = |t: &Terad| {
        let page = http_get(&t.metrics, "/metrics");
        let refused = metric(
            &page,
            "terad_connections_refused_total{reason=\"file_descriptors\"}",
        );
        (
            metric(&page, "terad_connections_open").unwrap_or(0.0),
            refused.unwrap_or(0.0),
        )
    };
    // Hold HTTP/2 connections (the client's preface sent) until terad refuses one.
    let mut held = Vec::new();
    while counts(&t).1 == 0.0 {
        assert!(held.len() < 384, "never refused");
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(PREFACE).expect("preface");
        held.push(c);
    }
    // Once terad has seen every connection held, the open ones are those it admitted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let (open, refused) = counts(&t);
        if (open + refused) as usize == held.len() {
            break open as usize;
        }
        assert!(
            Instant::now() < deadline,
            "{open} + {refused} != {}",
            held.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (code, text) = goaway_of(&http2_answer(addr, Duration::from_secs(10))).expect("a GOAWAY");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(
        text.contains("too many open files (limit 384, 96 kept"),
        "{text}"
    );
    assert!(admitted > 8, "only {admitted} connections before refusing");
    // A refused connection is closed within a second; an admitted one stays open. Give one
    // admitted connection's slot back; the database still writes with the others held.
    std::thread::sleep(Duration::from_millis(2500));
    let closed = |c: &mut std::net::TcpStream| {
        c.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    };
    let mut open_ones = 0;
    for c in held.iter_mut() {
        open_ones += usize::from(!closed(c));
    }
    assert_eq!(open_ones, admitted);
    let one = held
        .iter_mut()
        .position(|c| !closed(c))
        .expect("an admitted connection");
    drop(held.remove(one));
    wait_open_connections(&t, (admitted - 1) as f64);
    for i in 0..20 {
        ctl.ok(&["mkdir", &format!("/d{i}")]);
        // Each teractl call is a connection of its own: the next one needs this one's slot
        // and descriptor back, which terad gives when it sees the close (under a loaded
        // test run, that can come after the next call connects).
        wait_open_connections(&t, (admitted - 1) as f64);
    }
    drop(held);
    let mut t = t;
    assert!(
        sigterm_and_wait(&mut t).success(),
        "a clean stop, checkpoint included"
    );
}

/// A real failure of the write-ahead log: terad runs with a limit on file size, so the log's
/// write past 256 KiB fails (`EFBIG`). That write and every later one are refused UNAVAILABLE
/// naming the log, and so are reads of the namespace the failed write was in; health turns
/// NOT_SERVING and `/healthz` says why. Restarted without the limit, terad has every write it
/// acknowledged.
#[tokio::test]
async fn a_failed_log_write_poisons_terad_and_loses_nothing_acknowledged() {
    use tera_server::client::{self, Bearer};
    use tera_server::proto::health as hpb;
    use tera_server::proto::meta as pb;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut t = start_limited(&data, &[], &[(libc::RLIMIT_FSIZE, 256 << 10)]);
    serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(30))
        .await
        .expect("connect");
    let tok = admin_token(&ch, &data, 0).await;
    let mut meta = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), false).expect("bearer"),
    );
    let name = |i: usize| format!("/{i:05}-{}", "n".repeat(200));
    let mut acked = 0;
    let failure = loop {
        assert!(acked < 100_000, "the log never failed");
        let r = meta
            .create_folder(pb::CreateFolderRequest {
                namespace: 0,
                path: name(acked),
                parents: false,
            })
            .await;
        match r {
            Ok(_) => acked += 1,
            Err(s) => break s,
        }
    };
    assert!(acked > 50, "only {acked} writes before the log failed");
    assert_eq!(failure.code(), tonic::Code::Unavailable, "{failure:?}");
    assert!(
        failure.message().contains("wal-") && failure.message().contains("storage failed"),
        "{failure:?}"
    );
    // Refused from then on, with the same reason; reads of what was acknowledged go on.
    let again = meta
        .create_folder(pb::CreateFolderRequest {
            namespace: 0,
            path: "/after".into(),
            parents: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    // Reads of this namespace too: its last write is the one the failure left undurable, so
    // no read there can be answered without the risk of showing it.
    let read = meta
        .stat(pb::StatRequest {
            namespace: 0,
            target: Some(pb::stat_request::Target::Path(name(acked - 1))),
        })
        .await
        .expect_err("a read of what the failure left undurable");
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
    assert!(read.message().contains("restart the server"), "{read:?}");
    // Health follows within a couple of seconds, and /healthz says why.
    let mut health = client::health(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(hpb::HealthCheckRequest::default())
            .await
            .expect("health answers")
            .into_inner()
            .status;
        if status == hpb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "health still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = http_get(&t.metrics, "/healthz");
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.contains("poisoned (restart terad)") && page.contains("write-ahead log"),
        "{page}"
    );
    drop((meta, health, ch));

    // Restarted without the limit: every acknowledged folder is there.
    t.child.kill().expect("kill");
    t.child.wait().expect("wait");
    let t = start_with(&data, &[]);
    serving(&t, dir.path().join("t2"));
    let ch = client::connect(&t.grpc, Duration::from_secs(30))
        .await
        .expect("connect");
    let tok = admin_token(&ch, &data, 0).await;
    let mut meta = client::meta(ch, Bearer::new(Some(&tok.token), false).expect("bearer"));
    for i in 0..acked {
        meta.stat(pb::StatRequest {
            namespace: 0,
            target: Some(pb::stat_request::Target::Path(name(i))),
        })
        .await
        .unwrap_or_else(|e| panic!("acknowledged folder {i} lost: {e:?}"));
    }
}

/// `teractl bench` against a terad with three I/O threads: every operation of the mix runs
/// at every level without an error, each I/O thread is handed connections and serves them,
/// and the fixture is removed afterwards.
#[test]
fn teractl_bench_loads_every_io_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let t = start_with(&data, &["--set", "io_threads=3"]);
    let admin = Ctl {
        server: t.grpc.clone(),
        token_file: dir.path().join("admin.token"),
    };
    wait_serving(&admin);
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    admin.login("admin", password.trim());
    let out = admin.ok(&[
        "bench",
        "--concurrency",
        "1,8",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--mix",
        "stat,list,mkdir,upload",
        "--channels",
        "6",
        "--threads",
        "2",
        // A listing of 100 entries (about 15 KB) is past tonic's 8 KiB starting buffer,
        // which server/src/codec.rs sizes to the message.
        "--fixture-entries",
        "100",
    ]);
    assert!(
        out.contains("6 HTTP/2 connections, 2 client threads"),
        "{out}"
    );
    for level in ["1", "8"] {
        for op in ["stat", "list", "mkdir", "upload"] {
            let line = out
                .lines()
                .find(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&level) && f.get(1) == Some(&op)
                })
                .unwrap_or_else(|| panic!("no line for {op} at {level}:\n{out}"));
            let f: Vec<&str> = line.split_whitespace().collect();
            let count: u64 = f[6].parse().expect("count");
            assert!(count > 0, "{line}");
            assert_eq!(f[7], "-", "errors at {level}: {line}");
        }
    }
    // Listings decoded into messages, as an application reads them, also hold the fixture
    // whole (by default the bench parses and counts the entries only).
    let out = admin.ok(&[
        "bench",
        "--concurrency",
        "4",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--mix",
        "list",
        "--decode-entries",
    ]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["4", "list"]))
        .unwrap_or_else(|| panic!("no list line:\n{out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(f[6].parse::<u64>().expect("count") > 0, "{line}");
    assert_eq!(f[7], "-", "errors: {line}");
    // The connections (teractl's health and login calls, then the first bench's: one for the
    // fixture and six for each level) were dealt in turn: every I/O thread got at least four.
    let m = http_get(&t.metrics, "/metrics");
    for i in 0..3 {
        let key = format!("terad_connections_accepted_total{{io_thread=\"{i}\"}} ");
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{m}"))
            .trim()
            .parse()
            .expect("a count");
        assert!(n >= 4, "{key}{n}");
    }
    assert!(!admin.ok(&["ls", "/"]).contains("bench-"), "fixture left");
}

/// terad killed with SIGKILL in the middle of a write load (four concurrent writers on one
/// connection, making folders and committing uploads into them), three times on the same
/// data directory. Each kill comes once the writers have had at least 20 writes acknowledged
/// in that round (then 0, 250 or 500 ms later), and every writer's last call must fail
/// because of the kill, not before it. After every restart: each acknowledged mkdir and
/// upload is there (an upload with its size), at most one write per writer and kill more
/// than was acknowledged, and the tree is whole, whatever the kill cut off: every listed
/// entry stats with the same id and is listed once, a file's tree size is its size, and
/// every folder's tree size is the sum of its children's (a write is all of its records or
/// none).
#[tokio::test]
async fn sigkill_during_writes_loses_nothing_acknowledged_and_leaves_a_whole_tree() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use tera_server::client::{self, Bearer, Meta};
    use tera_server::proto::meta as pb;

    async fn stat(meta: &mut Meta, path: &str) -> Result<pb::Entry, tonic::Status> {
        let r = meta
            .stat(pb::StatRequest {
                namespace: 0,
                target: Some(pb::stat_request::Target::Path(path.into())),
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Every acknowledged write is there, and the tree is whole (see above). Returns how
    /// many entries the tree holds.
    async fn check(meta: &mut Meta, acked: &[(String, Option<u64>)], when: &str) -> usize {
        for (path, size) in acked {
            let e = stat(meta, path)
                .await
                .unwrap_or_else(|s| panic!("{when}: acknowledged {path} lost: {s:?}"));
            match size {
                Some(n) => assert_eq!(
                    (e.kind, e.size),
                    (pb::Kind::File as i32, *n),
                    "{when}: {path}"
                ),
                None => assert_eq!(e.kind, pb::Kind::Folder as i32, "{when}: {path}"),
            }
        }
        let mut seen = HashSet::new();
        let mut folders = vec!["/".to_string()];
        while let Some(dir) = folders.pop() {
            let top = stat(meta, &dir)
                .await
                .unwrap_or_else(|s| panic!("{when}: listed folder {dir}: {s:?}"));
            let (mut sum, mut token) = (0u64, String::new());
            loop {
                let page = meta
                    .list(pb::ListRequest {
                        namespace: 0,
                        path: dir.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{when}: list {dir}: {s:?}"))
                    .into_inner();
                for e in &page.entries {
                    let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                    assert!(seen.insert(e.id), "{when}: {path} listed twice");
                    let again = stat(meta, &path)
                        .await
                        .unwrap_or_else(|s| panic!("{when}: listed {path} does not stat: {s:?}"));
                    assert_eq!(again.id, e.id, "{when}: {path}");
                    sum += e.tree_size;
                    if e.kind == pb::Kind::Folder as i32 {
                        folders.push(path);
                    } else {
                        assert_eq!(e.tree_size, e.size, "{when}: tree size of {path}");
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(top.tree_size, sum, "{when}: tree size of {dir}");
        }
        seen.len()
    }

    const WRITERS: u64 = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Each acknowledged write: a folder's path, or a file's path and size.
    type Acked = Arc<Mutex<Vec<(String, Option<u64>)>>>;
    let acked: Acked = Arc::default();
    for round in 0..4u64 {
        let mut t = start(&data);
        serving(&t, dir.path().join(format!("t{round}")));
        let ch = client::connect(&t.grpc, Duration::from_secs(30))
            .await
            .expect("connect");
        let tok = admin_token(&ch, &data, 0).await;
        let bearer = Bearer::new(Some(&tok.token), false).expect("bearer");
        let mut meta = client::meta(ch.clone(), bearer.clone());
        let before = acked.lock().unwrap().clone();
        let when = format!("start {round}, after {round} kills");
        let entries = check(&mut meta, &before, &when).await;
        // Each kill can leave each writer's one unacknowledged write made.
        assert!(
            before.len() <= entries && entries as u64 <= before.len() as u64 + WRITERS * round,
            "{when}: {entries} entries, {} writes acknowledged",
            before.len()
        );
        eprintln!(
            "{when}: {} writes acknowledged, {entries} entries",
            before.len()
        );
        if round == 3 {
            break;
        }
        let top = format!("/r{round}");
        meta.create_folder(pb::CreateFolderRequest {
            namespace: 0,
            path: top.clone(),
            parents: false,
        })
        .await
        .expect("mkdir");
        acked.lock().unwrap().push((top.clone(), None));
        let start_len = acked.lock().unwrap().len();
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let mut meta = client::meta(ch.clone(), bearer.clone());
                let (acked, killed, top) = (acked.clone(), killed.clone(), top.clone());
                // Writes until a call fails; returns that failure and whether terad had been
                // killed by then.
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let folder = format!("{top}/w{w}-{i}");
                        let made = meta
                            .create_folder(pb::CreateFolderRequest {
                                namespace: 0,
                                path: folder.clone(),
                                parents: false,
                            })
                            .await;
                        if let Err(s) = made {
                            return (s, killed.load(SeqCst));
                        }
                        acked.lock().unwrap().push((folder.clone(), None));
                        let file = format!("{folder}/f");
                        let size = 1 + i * 7 + w;
                        let up = meta
                            .commit_upload(pb::CommitUploadRequest {
                                namespace: 0,
                                path: file.clone(),
                                size,
                                ..Default::default()
                            })
                            .await;
                        if let Err(s) = up {
                            return (s, killed.load(SeqCst));
                        }
                        acked.lock().unwrap().push((file, Some(size)));
                    }
                    unreachable!("the writes go on until terad is killed")
                })
            })
            .collect();
        // Kill once the round has had 20 writes acknowledged, at another moment each round.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < start_len + 20 {
            assert!(
                Instant::now() < deadline,
                "round {round}: fewer than 20 writes acknowledged in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(250 * round)).await;
        // The runtime runs one task at a time: no writer runs between these two lines.
        killed.store(true, SeqCst);
        t.child.kill().expect("SIGKILL");
        let status = t.child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        for w in writers {
            let (status, after_kill) = w.await.expect("writer task");
            assert!(
                after_kill,
                "round {round}: a writer stopped before the kill: {status:?}"
            );
        }
    }
}

/// The configuration through the real binary. With nothing given, `terad --print-config`
/// shows the documented defaults (gRPC on loopback port 7420, metrics on 7421, data under
/// ./terad-data); a file, `TERAD_*` variables and flags each win over the one before; the
/// printed configuration reads back as a file unchanged; a missing file, an unknown setting
/// or a bad value exits 2 with a message naming it.
#[test]
fn terad_configuration_comes_from_defaults_file_environment_and_flags_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(TERAD);
        cmd.current_dir(dir.path()).args(args);
        // Nothing from the environment of whoever runs the tests.
        for (k, _) in std::env::vars() {
            if k.starts_with("TERAD_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied()).output().expect("terad runs")
    };
    let printed = |o: &Output| -> String {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout.clone()).expect("utf-8")
    };
    let get = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(" = "))
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
            .to_string()
    };

    let defaults = printed(&run(&["--print-config"], &[]));
    assert_eq!(get(&defaults, "listen"), "\"127.0.0.1:7420\"");
    assert_eq!(get(&defaults, "metrics_listen"), "\"127.0.0.1:7421\"");
    assert_eq!(get(&defaults, "data_dir"), "\"./terad-data\"");
    assert_eq!(get(&defaults, "dram_budget_mib"), "512");
    assert_eq!(get(&defaults, "durability"), "\"commit\"");
    assert_eq!(get(&defaults, "log_format"), "\"text\"");
    assert!(
        !dir.path().join("terad-data").exists(),
        "--print-config creates nothing"
    );

    std::fs::write(
        dir.path().join("terad.toml"),
        "dram_budget_mib = 100\nmax_watches = 7\nio_threads = 3\nlog_format = \"json\"\n\
         request_timeout_ms = 100\n",
    )
    .expect("write the file");
    let env = [
        ("TERAD_DRAM_BUDGET_MIB", "200"),
        ("TERAD_MAX_WATCHES", "9"),
        ("TERAD_REQUEST_TIMEOUT_MS", "200"),
    ];
    let layered = printed(&run(
        &[
            "--config",
            "terad.toml",
            "--dram-budget-mib",
            "300",
            "--set",
            "request_timeout_ms=1234",
            "--print-config",
        ],
        &env,
    ));
    assert_eq!(get(&layered, "dram_budget_mib"), "300", "a flag over all");
    assert_eq!(
        get(&layered, "max_watches"),
        "9",
        "the environment over the file"
    );
    assert_eq!(
        get(&layered, "io_threads"),
        "3",
        "the file over the default"
    );
    assert_eq!(get(&layered, "log_format"), "\"json\"");
    assert_eq!(
        get(&layered, "request_timeout_ms"),
        "1234",
        "--set over the environment and the file"
    );
    assert_eq!(
        get(&layered, "listen"),
        "\"127.0.0.1:7420\"",
        "the rest default"
    );
    // TERAD_CONFIG names the file too.
    let via_env = printed(&run(&["--print-config"], &[("TERAD_CONFIG", "terad.toml")]));
    assert_eq!(get(&via_env, "io_threads"), "3");
    assert_eq!(get(&via_env, "dram_budget_mib"), "100");
    // What --print-config shows is a configuration file that gives itself back.
    std::fs::write(dir.path().join("printed.toml"), &layered).expect("write");
    let again = printed(&run(&["--config", "printed.toml", "--print-config"], &[]));
    assert_eq!(again, layered);

    // Errors: exit 2, naming the file, the setting or the variable.
    let fails = |args: &[&str], env: &[(&str, &str)], want: &str| {
        let o = run(args, env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    };
    fails(
        &["--config", "missing.toml", "--print-config"],
        &[],
        "missing.toml",
    );
    std::fs::write(dir.path().join("typo.toml"), "dram_budjet_mib = 1\n").expect("write");
    fails(
        &["--config", "typo.toml", "--print-config"],
        &[],
        "dram_budjet_mib",
    );
    fails(
        &["--print-config"],
        &[("TERAD_DRAM_BUDGET_MIB", "lots")],
        "TERAD_DRAM_BUDGET_MIB",
    );
    fails(
        &["--log-format", "xml", "--print-config"],
        &[],
        "log_format",
    );
    fails(&["--set", "no_such=1", "--print-config"], &[], "no_such");
}

/// ctrl-c (SIGINT) stops terad as SIGTERM does: it drains, writes a checkpoint and exits 0,
/// and a restart has what it acknowledged. With `--log-format json` every line of its log is
/// one JSON object with a level and a message.
#[test]
fn ctrl_c_drains_and_checkpoints_and_json_logs_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut t = start_with(&data, &["--log-format", "json"]);
    let admin = Ctl {
        server: t.grpc.clone(),
        token_file: dir.path().join("admin.token"),
    };
    wait_serving(&admin);
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    admin.login("admin", password.trim());
    admin.ok(&["mkdir", "/kept"]);

    let status = signal_and_wait(&mut t, "INT");
    assert_eq!(status.code(), Some(0), "terad exits 0 on ctrl-c");

    let log = std::fs::read_to_string(data.with_extension("log")).expect("terad's log");
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        assert!(v["level"].is_string(), "no level: {line}");
        if let Some(m) = v["fields"]["message"].as_str() {
            messages.push(m.to_string());
        }
    }
    for want in [
        "ctrl-c",
        "shutting down: draining in-flight calls",
        "checkpoint written; stopped",
    ] {
        assert!(
            messages.iter().any(|m| m == want),
            "no {want:?} in the log:\n{log}"
        );
    }
    drop(t);

    let t2 = start(&data);
    let admin2 = Ctl {
        server: t2.grpc.clone(),
        token_file: admin.token_file.clone(),
    };
    wait_serving(&admin2);
    assert!(
        admin2.ok(&["stat", "/kept"]).contains("folder"),
        "acknowledged before ctrl-c"
    );
}

/// While terad replays a long log at start, health is NOT_SERVING, `/healthz` answers 503
/// `recovering` and a metadata call is UNAVAILABLE saying so; the same health Watch stream
/// then turns SERVING once the database is open, and every replayed record is there.
// Two workers: the test blocks one waiting for terad while the other drives the client's
// connection, which has to see terad's GOAWAY for the drain to end before its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_terad_replays_its_log() {
    use tera_engine::{Db, KeyspaceOptions};
    use tera_server::client::{self, Bearer};
    use tera_server::proto::health::health_check_response::ServingStatus;
    use tera_server::proto::health::HealthCheckRequest;
    use tera_server::proto::meta as pb;
    use tonic::Code;

    // Enough log that replaying it takes far longer than the six calls below do (about 0.7 s in a
    // debug build here, against a few milliseconds).
    const RECORDS: u32 = 400_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A first start makes the data directory, the users file and the admin's password.
    // A token from then still holds after the restart (the token key is in the data dir).
    let mut t = start(&data);
    serving(&t, dir.path().join("t"));
    let ch = client::connect(&t.grpc, Duration::from_secs(10))
        .await
        .expect("connect");
    let tok = admin_token(&ch, &data, 0).await;
    drop(ch);
    assert_eq!(sigterm_and_wait(&mut t).code(), Some(0));
    drop(t);

    // Records written to terad's database directly and never checkpointed: the next start
    // has to replay them from the log before it serves.
    let config = tera_server::config::Config {
        data_dir: data.clone(),
        ..Default::default()
    };
    let open = || {
        let mut ec = tera_server::server::engine_config(&config).expect("engine config");
        ec.checkpoint_wal_bytes = 0;
        Db::open(ec).expect("terad's database opens")
    };
    let key = |i: u32| format!("filler/{i:08}").into_bytes();
    {
        let db = open();
        let ks = db
            .keyspace("filler", KeyspaceOptions::hash())
            .expect("keyspace");
        ks.bulk_load((0..RECORDS).map(|i| (key(i), vec![b'v'; 100])))
            .expect("bulk load");
    }

    let mut t = start(&data);
    // `start` returns as terad announces its port, which it does before it opens the database.
    let page = http_get(&t.metrics, "/healthz");
    assert!(
        page.starts_with("HTTP/1.1 503") && page.ends_with("recovering\n"),
        "{page}"
    );
    let ch = client::connect(&t.grpc, Duration::from_secs(10))
        .await
        .expect("connect");
    let mut h = client::health(ch.clone());
    let mut w = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = w.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let check = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check answers while recovering")
        .into_inner();
    assert_eq!(check.status, ServingStatus::NotServing as i32);
    // Neither a new token nor a call with the old one is served before the database is open.
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password");
    let e = client::auth(ch.clone(), Bearer::new(None, false).expect("bearer"))
        .token(tera_server::proto::auth::TokenRequest {
            user: "admin".into(),
            password: password.trim().into(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("no token before the database is open");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("recovering"), "{}", e.message());
    let mut meta = client::meta(
        ch.clone(),
        Bearer::new(Some(&tok.token), false).expect("bearer"),
    );
    let e = meta
        .stat(pb::StatRequest {
            namespace: 0,
            target: Some(pb::stat_request::Target::Path("/".into())),
        })
        .await
        .expect_err("no metadata before the database is open");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("recovering"), "{}", e.message());

    // The same stream turns SERVING when the replay is done, and the calls are answered.
    let next = tokio::time::timeout(Duration::from_secs(120), w.message())
        .await
        .expect("recovery ends")
        .expect("status")
        .expect("one more");
    assert_eq!(next.status, ServingStatus::Serving as i32);
    assert!(http_get(&t.metrics, "/healthz").ends_with("serving\n"));
    meta.stat(pb::StatRequest {
        namespace: 0,
        target: Some(pb::stat_request::Target::Path("/".into())),
    })
    .await
    .expect("stat once serving");
    drop((w, h, meta, ch));
    assert_eq!(sigterm_and_wait(&mut t).code(), Some(0));
    drop(t);
    let log = std::fs::read_to_string(data.with_extension("log")).expect("terad's log");
    // The second start did replay the log (the first had nothing to replay).
    let frames: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("database open"))
        .filter_map(|l| {
            l.split("log_frames=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        frames.len() == 2 && frames[1] > 0,
        "log frames replayed at each start: {frames:?}\n{log}"
    );

    let db = open();
    let ks = db.get_keyspace("filler").expect("the keyspace survived");
    assert_eq!(ks.len(), u64::from(RECORDS));
    for i in [0, RECORDS / 2, RECORDS - 1] {
        let e = ks.get(&key(i)).expect("read").expect("replayed record");
        assert_eq!(e.value, vec![b'v'; 100]);
    }
}
