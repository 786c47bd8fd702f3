//! What can go wrong while evaluating, each naming the file (and tensor or position).

use std::path::PathBuf;

use reefknot_io::IoError;

/// An error of `reefknot eval`, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading a checkpoint failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `config.json` is missing, unreadable or lacks a field the model needs.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model's architecture, or an option of it, is not one eval runs.
    #[error("{}: {what}", path.display())]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// What is not supported, and what is.
        what: String,
    },
    /// A tensor the architecture needs is missing or has another shape.
    #[error("{}: tensor `{tensor}`: {message}", dir.display())]
    Tensor {
        /// The model folder.
        dir: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// candle failed while building or running the model.
    #[error("{}: {context}: {source}", dir.display())]
    Candle {
        /// The model folder.
        dir: PathBuf,
        /// What was being done.
        context: &'static str,
        /// candle's error.
        source: candle_core::Error,
    },
    /// A data file is unreadable or not in a format eval reads.
    #[error("{}: {message}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A token id is not below the model's vocabulary size.
    #[error("{}: token {position} is id {id}, but the model's vocabulary has {vocab} tokens", path.display())]
    TokenOutOfRange {
        /// The data file.
        path: PathBuf,
        /// The token's position in the file's tokens (from 0).
        position: usize,
        /// Its id.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
}
