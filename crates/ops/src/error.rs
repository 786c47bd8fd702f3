//! Errors raised by operators.

/// An operator could not be bound to a tensor or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The arguments are valid one by one but not together, or not for this tensor.
    #[error("{op}: {message}")]
    InvalidArguments {
        /// The operator.
        op: String,
        /// What is wrong and what would be right.
        message: String,
    },
    /// The operator failed while merging (e.g. a plugin returned an error).
    #[error("{op} failed: {message}")]
    Failed {
        /// The operator (qualified for plugin operators).
        op: String,
        /// What the operator reported.
        message: String,
    },
}
