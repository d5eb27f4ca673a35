//! Prints this machine's NUMA topology as `tera-numa` sees it, or with `--simulated` a made-up
//! two-socket machine (four CPUs and 16 GiB a socket) with one CPU-less far node.
//!
//! ```text
//! cargo run -p tera-numa --example topology [-- --simulated]
//! ```
//!
//! Detection problems (and why detection fell back, if it did) are logged to stderr as warnings;
//! `RUST_LOG` sets the level.

use tera_numa::Topology;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let topology = match std::env::args().nth(1).as_deref() {
        None => Topology::detect(),
        Some("--simulated") => Topology::simulated(2, 4, 1, 16 << 30),
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: topology [--simulated]");
            std::process::exit(2);
        }
    };
    println!("{topology}");
}
