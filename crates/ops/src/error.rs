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
    /// A statistic the operator needs is NaN or infinite: its input holds NaN or
    /// infinities (or values too large to sum), and using it would spread them over
    /// the whole tensor.
    #[error(
        "{op}: {what} is {value}, and scaling by it would spread that over the whole \
         tensor: the values it sums hold NaN or infinities, or are too large to sum"
    )]
    NonFinite {
        /// The operator.
        op: String,
        /// The statistic, e.g. "the L1 norm of task vector 2".
        what: String,
        /// Its value (`inf`, `NaN`).
        value: f64,
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
