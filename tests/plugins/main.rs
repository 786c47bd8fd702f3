//! End-to-end tests of operator plugins: the example plugins of `plugins/` and the
//! misbehaving ones of `fixtures/` are built here (cargo for Rust, `cc` for C), loaded
//! by the real `reefknot` binary, and their merges checked against numbers computed
//! independently in the tests.

mod build;
mod discovery;
mod examples;
mod guide;
mod interrupted;
mod misbehaving;
mod provenance;
mod standalone;
mod tooling;
#[allow(dead_code)]
#[path = "../cli/util.rs"]
mod util;
