//! terad: the gRPC metadata server. `terad` alone serves on 127.0.0.1:7420 (metrics on
//! 7421) with its data under ./terad-data; `terad --help` lists the flags, and
//! docs/architecture.md ("Server") the configuration. `terad user add NAME` adds a user to
//! the users file (a running terad picks it up).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tera_server::auth::{add_user, random_password, Role};
use tera_server::config::Config;

#[derive(Debug, Parser)]
#[command(name = "terad", version, about = "Teraservices' gRPC metadata server")]
struct Cli {
    /// A TOML configuration file (settings as in `--print-config`); also TERAD_CONFIG.
    #[arg(long, env = "TERAD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the configuration in effect (defaults < file < TERAD_* < flags) and exit.
    #[arg(long)]
    print_config: bool,
    /// gRPC address, host:port (port 0: any free port; terad prints the one it got).
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for /metrics and /healthz, or `off`.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Data directory (database, users file, token key).
    #[arg(long)]
    data_dir: Option<String>,
    /// DRAM budget of the engine, in MiB.
    #[arg(long)]
    dram_budget_mib: Option<String>,
    /// commit, periodic or none.
    #[arg(long)]
    durability: Option<String>,
    /// text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// A tracing filter, e.g. info or tera_server=debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Any setting, as name=value (repeatable), e.g. --set max_concurrent_requests=256.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the users file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user with its own namespace. Prints the password (random unless
    /// TERAD_NEW_PASSWORD is set).
    Add {
        name: String,
        /// user or admin.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

fn flags(cli: &Cli) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in [
        ("listen", &cli.listen),
        ("metrics_listen", &cli.metrics_listen),
        ("data_dir", &cli.data_dir),
        ("dram_budget_mib", &cli.dram_budget_mib),
        ("durability", &cli.durability),
        ("log_format", &cli.log_format),
        ("log_level", &cli.log_level),
    ] {
        if let Some(v) = v {
            out.push((k.to_string(), v.clone()));
        }
    }
    for s in &cli.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: use NAME=VALUE"))?;
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

fn init_logs(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a service manager's journal would get the
    // escape codes as text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if c.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("ctrl-c"),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch ctrl-c");
                std::future::pending::<()>().await;
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("terad: config file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let config = flags(&cli).and_then(|f| {
        Config::resolve(file.as_deref(), &|k| std::env::var(k).ok(), &f).map_err(|e| e.to_string())
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("terad: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::User {
        command: UserCommand::Add { name, role },
    }) = &cli.command
    {
        let role = match role.as_str() {
            "user" => Role::User,
            "admin" => Role::Admin,
            r => {
                eprintln!("terad: role {r:?}: use user or admin");
                return ExitCode::from(2);
            }
        };
        let (password, generated) = match std::env::var("TERAD_NEW_PASSWORD") {
            Ok(p) if !p.is_empty() => (p, false),
            _ => match random_password() {
                Ok(p) => (p, true),
                Err(e) => {
                    eprintln!("terad: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
            eprintln!("terad: data directory {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
        return match add_user(&config.users_file(), name, role, &password) {
            Ok(u) => {
                // The operator's own password is not echoed; a generated one must be shown.
                if generated {
                    println!(
                        "user {} (namespace {}) password: {password}",
                        u.name, u.namespace
                    );
                } else {
                    println!(
                        "user {} (namespace {}) added with the password from TERAD_NEW_PASSWORD",
                        u.name, u.namespace
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("terad: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logs(&config);
    let malloc = tera_server::metrics::tune_malloc(&|k| std::env::var(k).ok());
    tracing::debug!(
        mmap_threshold = ?malloc.mmap_threshold,
        trim_threshold = ?malloc.trim_threshold,
        "glibc malloc thresholds terad set (none: the operator's, or not glibc)"
    );
    // This runtime accepts connections, serves /metrics, opens the database and checkpoints
    // it at the end; the gRPC calls run on terad's I/O threads (`io_threads`), each with a
    // runtime of its own (server::run).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terad: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(tera_server::server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "terad stopped");
            eprintln!("terad: {e}");
            ExitCode::FAILURE
        }
    }
}
