//! `tera-tests` holds end-to-end tests that cross crates and processes; they live in
//! `tests/tests/`, and the child processes they run in `src/bin/`. The library holds what a
//! test and its child process must agree on: the crash tests' workload ([`crash`]).

pub mod crash;
