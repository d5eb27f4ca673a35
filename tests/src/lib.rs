//! `tera-tests` holds end-to-end tests that cross crates and processes; the library itself is
//! empty and the tests live in `tests/tests/`.
