//! terad's configuration: embedded defaults, a TOML file, `TERAD_*` environment variables and
//! command-line flags, applied in that order (a flag beats the environment, which beats the
//! file, which beats the defaults). Every setting has one name, used as the TOML key, as the
//! environment variable `TERAD_<NAME>` (upper case) and as `--set name=value` on the command
//! line; the common ones also have their own flag (`--listen`, `--data-dir`, ...).
//! `terad --print-config` prints the result as TOML.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The gRPC address terad listens on by default (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// The metrics and `/healthz` address by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7421";

/// Everything terad can be told. See [`Config::default`] for the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC address (`host:port`; port 0 picks a free one, and terad prints the one it got).
    pub listen: String,
    /// HTTP address for `/metrics` and `/healthz`; empty or `off` disables it.
    pub metrics_listen: String,
    /// Where the database, the users file and the token key live.
    pub data_dir: PathBuf,
    /// The engine's far-tier directory; empty: `<data_dir>/far`.
    pub far_dir: PathBuf,
    /// The users file; empty: `<data_dir>/users.toml`.
    pub users_file: PathBuf,
    /// DRAM the engine may use, in MiB.
    pub dram_budget_mib: u64,
    /// DRAM for the change history that Changes and WatchChanges replay from, in MiB, counted
    /// in the DRAM budget (at most half of it); 0: the engine's default, 1/32 of the budget
    /// and at most 64 MiB. A cursor older than the history is answered OUT_OF_RANGE.
    pub changelog_mib: u64,
    /// `commit` (a write is acknowledged once durable: group commit), `periodic` (flushed
    /// every `periodic_ms`; a crash loses at most that much) or `none` (in memory only).
    pub durability: String,
    /// The flush interval of `periodic` durability.
    pub periodic_ms: u64,
    /// Lifetime of a token when the client asks for none, in seconds.
    pub token_ttl_secs: u64,
    /// Longest lifetime a client can ask for, in seconds.
    pub token_max_ttl_secs: u64,
    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED naming this
    /// setting; tonic's codec says OUT_OF_RANGE, which `router::client_fault` rewrites).
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes.
    pub max_response_bytes: usize,
    /// Threads that serve gRPC connections, each running its own single-threaded runtime; a
    /// connection stays on one thread, which answers all its ready calls before it writes, so
    /// responses leave in batches (one system call for many). 0: one per CPU.
    pub io_threads: usize,
    /// Requests served at once; past it, requests are answered RESOURCE_EXHAUSTED at once.
    pub max_concurrent_requests: usize,
    /// Open WatchChanges streams at once; past it, RESOURCE_EXHAUSTED.
    pub max_watches: usize,
    /// Client connections open at once; past it, a new connection is refused with an HTTP/2
    /// GOAWAY saying so (ENHANCE_YOUR_CALM: overload; the client's call fails, with
    /// RESOURCE_EXHAUSTED in tonic if its request was already on the way). Connections are
    /// also refused when open files come near the process's limit, which terad raises to its
    /// hard limit at start.
    pub max_connections: usize,
    /// A connection whose client has not sent HTTP/2's preface and first SETTINGS frame this
    /// long after connecting is closed, in ms.
    pub handshake_timeout_ms: u64,
    /// How often terad pings each connection over HTTP/2, in ms (0: never). A connection whose
    /// client does not answer a ping within `keepalive_timeout_ms` is closed, so that clients
    /// that died without closing do not hold connections for good.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered, in ms.
    pub keepalive_timeout_ms: u64,
    /// Longest time a request may take (a client's shorter grpc-timeout wins), in ms.
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests have to finish before terad stops anyway.
    pub drain_timeout_ms: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter: `info`, `debug`, `tera_server=debug,info`, ...
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: DEFAULT_METRICS_LISTEN.into(),
            data_dir: PathBuf::from("./terad-data"),
            far_dir: PathBuf::new(),
            users_file: PathBuf::new(),
            dram_budget_mib: 512,
            changelog_mib: 0,
            durability: "commit".into(),
            periodic_ms: 10,
            token_ttl_secs: 3600,
            token_max_ttl_secs: 7 * 24 * 3600,
            max_request_bytes: 1 << 20,
            max_response_bytes: 64 << 20,
            io_threads: 0,
            max_concurrent_requests: 1024,
            max_watches: 256,
            max_connections: 4096,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            request_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

/// `n` threads, or one per CPU when `n` is 0 (terad's `io_threads`, teractl bench's
/// `--threads`).
pub fn or_one_per_cpu(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |c| c.get()),
        n => n,
    }
}

/// The least `max_response_bytes`: listings and change pages end once they fill half of it,
/// and the entry that passes that mark (up to the engine's largest value, 1 MiB, plus its
/// name and fields) must still fit.
pub const MIN_RESPONSE_BYTES: usize = 4 << 20;

/// A configuration that cannot be used; the text names the setting and the source.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The durability mode, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityMode {
    Commit,
    Periodic(Duration),
    None,
}

impl Config {
    /// Resolve the configuration from its sources: `file` (the TOML text of `--config`, if
    /// any), `env` (looks up an environment variable) and `flags` (`name=value` pairs from the
    /// command line, later ones winning).
    pub fn resolve(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("defaults: {e}")))?;
        if let Some(text) = file {
            let file: toml::Table =
                toml::from_str(text).map_err(|e| ConfigError(format!("config file: {e}")))?;
            for (k, v) in file {
                if !table.contains_key(&k) {
                    return Err(ConfigError(format!(
                        "config file: unknown setting {k:?} (known: {})",
                        known(&table)
                    )));
                }
                table.insert(k, v);
            }
        }
        let keys: Vec<String> = table.keys().cloned().collect();
        for k in &keys {
            let var = format!("TERAD_{}", k.to_uppercase());
            if let Some(v) = env(&var) {
                set(&mut table, k, &v).map_err(|e| ConfigError(format!("{var}: {e}")))?;
            }
        }
        for (k, v) in flags {
            if !table.contains_key(k) {
                return Err(ConfigError(format!(
                    "--set {k}: unknown setting (known: {})",
                    known(&table)
                )));
            }
            set(&mut table, k, v).map_err(|e| ConfigError(format!("--{k}: {e}")))?;
        }
        let c: Config = table.try_into().map_err(|e| ConfigError(format!("{e}")))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        /// The longest time setting, in ms: 100 years, far past any use and far below what
        /// would overflow a clock (a deadline past it panicked every call).
        const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
        /// The longest token lifetime, in seconds: 100 years.
        const MAX_TOKEN_SECS: u64 = 100 * 365 * 24 * 3600;
        self.listen_addr()?;
        self.metrics_addr()?;
        self.durability_mode()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "log_format = {:?}: use text or json",
                self.log_format
            )));
        }
        if self.dram_budget_mib < 16 {
            return Err(ConfigError(format!(
                "dram_budget_mib = {}: at least 16",
                self.dram_budget_mib
            )));
        }
        if self.changelog_mib > self.dram_budget_mib / 2 {
            return Err(ConfigError(format!(
                "changelog_mib = {}: at most half of dram_budget_mib ({}), which it is part of (0: the engine's default)",
                self.changelog_mib, self.dram_budget_mib
            )));
        }
        if self.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(ConfigError(format!(
                "max_response_bytes = {}: at least {MIN_RESPONSE_BYTES} (4 MiB), so that a page ended at half of it still has room for the largest entry (1 MiB)",
                self.max_response_bytes
            )));
        }
        for (name, v) in [
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_connections", self.max_connections),
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms as usize),
            ("max_request_bytes", self.max_request_bytes),
            ("max_response_bytes", self.max_response_bytes),
            ("token_ttl_secs", self.token_ttl_secs as usize),
            ("token_max_ttl_secs", self.token_max_ttl_secs as usize),
            ("request_timeout_ms", self.request_timeout_ms as usize),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{name} = 0: must be positive")));
            }
        }
        // Times are added to clocks: past these, a deadline or an expiry would overflow.
        for (name, v) in [
            ("periodic_ms", self.periodic_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
        ] {
            if v > MAX_MS {
                return Err(ConfigError(format!(
                    "{name} = {v}: at most {MAX_MS} (100 years)"
                )));
            }
        }
        if self.token_max_ttl_secs > MAX_TOKEN_SECS {
            return Err(ConfigError(format!(
                "token_max_ttl_secs = {}: at most {MAX_TOKEN_SECS} (100 years)",
                self.token_max_ttl_secs
            )));
        }
        Ok(())
    }

    /// The gRPC address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|e| ConfigError(format!("listen = {:?}: {e} (use host:port)", self.listen)))
    }

    /// The metrics address, `None` when disabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_listen.as_str() {
            "" | "off" => Ok(None),
            s => s.parse().map(Some).map_err(|e| {
                ConfigError(format!(
                    "metrics_listen = {s:?}: {e} (use host:port, or off)"
                ))
            }),
        }
    }

    /// The durability setting, parsed.
    pub fn durability_mode(&self) -> Result<DurabilityMode, ConfigError> {
        match self.durability.as_str() {
            "commit" => Ok(DurabilityMode::Commit),
            "periodic" if self.periodic_ms > 0 => Ok(DurabilityMode::Periodic(
                Duration::from_millis(self.periodic_ms),
            )),
            "periodic" => Err(ConfigError(
                "periodic_ms = 0: the interval must be positive (or use durability = commit)"
                    .into(),
            )),
            "none" => Ok(DurabilityMode::None),
            d => Err(ConfigError(format!(
                "durability = {d:?}: use commit, periodic or none"
            ))),
        }
    }

    /// The gRPC I/O threads to start: `io_threads`, or one per CPU when it is 0.
    pub fn io_thread_count(&self) -> usize {
        or_one_per_cpu(self.io_threads)
    }

    /// The far-tier directory.
    pub fn far_dir(&self) -> PathBuf {
        if self.far_dir.as_os_str().is_empty() {
            self.data_dir.join("far")
        } else {
            self.far_dir.clone()
        }
    }

    /// The users file.
    pub fn users_file(&self) -> PathBuf {
        if self.users_file.as_os_str().is_empty() {
            self.data_dir.join("users.toml")
        } else {
            self.users_file.clone()
        }
    }

    /// The configuration as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

fn known(t: &toml::Table) -> String {
    t.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Set `key` from a string, typed like its default.
fn set(table: &mut toml::Table, key: &str, v: &str) -> Result<(), String> {
    let value = match table.get(key) {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            v.trim()
                .parse()
                .map_err(|_| format!("{v:?} is not a whole number"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            v.trim()
                .parse()
                .map_err(|_| format!("{v:?} is not true or false"))?,
        ),
        _ => toml::Value::String(v.into()),
    };
    table.insert(key.into(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_sources_gives_the_documented_defaults() {
        let c = Config::resolve(None, &|_| None, &[]).expect("defaults resolve");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, "127.0.0.1:7420");
        assert_eq!(c.metrics_listen, "127.0.0.1:7421");
        assert_eq!(c.data_dir, PathBuf::from("./terad-data"));
        assert_eq!(c.far_dir(), PathBuf::from("./terad-data/far"));
        assert_eq!(c.durability_mode().ok(), Some(DurabilityMode::Commit));
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = "listen = \"127.0.0.1:1\"\ndram_budget_mib = 64\nlog_format = \"json\"\n";
        let env = env_of(&[
            ("TERAD_LISTEN", "127.0.0.1:2"),
            ("TERAD_DRAM_BUDGET_MIB", "128"),
        ]);
        let c = Config::resolve(Some(file), &env, &flags(&[("listen", "127.0.0.1:3")]))
            .expect("resolves");
        assert_eq!(c.listen, "127.0.0.1:3"); // flag over env and file
        assert_eq!(c.dram_budget_mib, 128); // env over file
        assert_eq!(c.log_format, "json"); // file over default
        assert_eq!(c.max_watches, Config::default().max_watches); // default
    }

    #[test]
    fn bad_settings_are_named() {
        let e = Config::resolve(Some("lisen = \"x\""), &|_| None, &[]).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let env = env_of(&[("TERAD_DRAM_BUDGET_MIB", "lots")]);
        let e = Config::resolve(None, &env, &[]).unwrap_err();
        assert!(e.0.contains("TERAD_DRAM_BUDGET_MIB"), "{e}");
        let e = Config::resolve(None, &|_| None, &flags(&[("durability", "always")])).unwrap_err();
        assert!(e.0.contains("durability"), "{e}");
        let e = Config::resolve(None, &|_| None, &flags(&[("nope", "1")])).unwrap_err();
        assert!(e.0.contains("unknown setting"), "{e}");
        let e = Config::resolve(
            None,
            &|_| None,
            &flags(&[("max_response_bytes", "1048576")]),
        )
        .unwrap_err();
        assert!(
            e.0.contains("max_response_bytes = 1048576: at least"),
            "{e}"
        );
        assert!(Config::resolve(
            None,
            &|_| None,
            &flags(&[("max_response_bytes", "4194304")])
        )
        .is_ok());
        // Times that would overflow a deadline or an expiry, or make every call fail.
        for (k, v, says) in [
            (
                "request_timeout_ms",
                "9223372036854775807",
                "at most 3153600000000",
            ),
            ("request_timeout_ms", "0", "must be positive"),
            ("drain_timeout_ms", "3153600000001", "at most 3153600000000"),
            ("token_max_ttl_secs", "3153600001", "at most 3153600000"),
        ] {
            let e = Config::resolve(None, &|_| None, &flags(&[(k, v)])).unwrap_err();
            assert!(e.0.contains(&format!("{k} = {v}: {says}")), "{e}");
        }
        // What earlier versions took still starts: a 30-day timeout, and a default token
        // lifetime past the longest (tokens get the longest; see `auth_rpc`).
        for (k, v) in [
            ("keepalive_interval_ms", "2592000001"),
            ("token_ttl_secs", "2592000"),
        ] {
            assert!(
                Config::resolve(None, &|_| None, &flags(&[(k, v)])).is_ok(),
                "{k}"
            );
        }
    }

    #[test]
    fn changelog_mib_sizes_the_engines_change_history() {
        // Unset: 0, which leaves the engine its default share of the budget.
        let c = Config::resolve(None, &|_| None, &[]).expect("defaults resolve");
        assert_eq!(c.changelog_mib, 0);
        let e = crate::server::engine_config(&c).expect("engine config");
        assert_eq!(e.changelog_bytes, 0);
        // From the file, the environment and a flag, in that order of precedence.
        let c = Config::resolve(Some("changelog_mib = 4\n"), &|_| None, &[]).expect("file");
        assert_eq!(c.changelog_mib, 4);
        let env = env_of(&[("TERAD_CHANGELOG_MIB", "2")]);
        let c = Config::resolve(Some("changelog_mib = 4\n"), &env, &[]).expect("env");
        assert_eq!(c.changelog_mib, 2);
        let c = Config::resolve(None, &env, &flags(&[("changelog_mib", "1")])).expect("flag");
        assert_eq!(c.changelog_mib, 1);
        let e = crate::server::engine_config(&c).expect("engine config");
        assert_eq!(e.changelog_bytes, 1 << 20);
        // It is part of the DRAM budget: more than half of it is refused, naming both.
        let e = Config::resolve(
            None,
            &|_| None,
            &flags(&[("dram_budget_mib", "64"), ("changelog_mib", "33")]),
        )
        .unwrap_err();
        assert!(
            e.0.contains("changelog_mib = 33") && e.0.contains("dram_budget_mib (64)"),
            "{e}"
        );
        let e = Config::resolve(None, &|_| None, &flags(&[("changelog_mib", "lots")])).unwrap_err();
        assert!(e.0.contains("changelog_mib"), "{e}");
        assert!(Config::default().to_toml().contains("changelog_mib = 0"));
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let c = Config::resolve(None, &|_| None, &flags(&[("durability", "periodic")]))
            .expect("resolves");
        let again = Config::resolve(Some(&c.to_toml()), &|_| None, &[]).expect("reads back");
        assert_eq!(c, again);
        assert_eq!(
            again.durability_mode().ok(),
            Some(DurabilityMode::Periodic(Duration::from_millis(10)))
        );
    }
}
