//! End-to-end tests: they run the real `reefknot` binary on synthetic checkpoint
//! families and re-read what it writes.

mod analyze;
mod conventions;
mod docs;
mod errors;
mod eval;
mod hostile;
mod hub;
mod lora;
mod merge;
mod mergekit;
mod nonfinite;
mod plans;
mod recipes;
mod sweep;
mod tokenizer;
mod util;
mod variables;
