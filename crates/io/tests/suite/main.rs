//! Integration tests of reefknot-io, as one test binary with a module per topic.

mod common;
mod convert;
mod read;
mod roundtrip;
