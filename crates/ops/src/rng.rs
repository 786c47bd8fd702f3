//! Deterministic, counter-based randomness.
//!
//! Random operators never carry generator state. Every draw is a pure function of
//! `(recipe seed, tensor name, stream, element index)`, so a merge gives the same bytes
//! whatever the thread count, chunk size, order of work or machine.
//!
//! The construction, exactly (all arithmetic wrapping on `u64`):
//!
//! 1. `mix(z)` is the SplitMix64 finaliser:
//!    `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`.
//! 2. `h = fnv1a64(tensor name as UTF-8)` (offset basis `0xCBF29CE484222325`, prime `0x100000001B3`).
//! 3. The stream key is `key = mix(mix(mix(seed ^ GAMMA) ^ h) ^ (stream + 1) · GAMMA)` with
//!    `GAMMA = 0x9E3779B97F4A7C15`. Stream `i < T` is fine-tune `i`'s task vector;
//!    stream [`DELTA_STREAM`] is the merged delta.
//! 4. Elements come in pairs: the pair `m = ⌊j/2⌋` draws `x = mix(key + (m + 1) · GAMMA)`;
//!    element `j` takes the low 32 bits of `x` when `j` is even and the high 32 bits when
//!    it is odd, as the 32-bit integer `r_j` (uniform in `[0, 2³²)`).
//!
//! `dare(p)` drops element `j` when `r_j < ⌊p · 2³²⌋`: the probability of a drop is `p`
//! to within 2⁻³². One 64-bit mix serves two elements and the comparison is on
//! integers, so blocks of draws vectorise.

pub use reefknot_plugin_api::rng::{fnv1a64, mix, threshold, Stream, DELTA_STREAM, GAMMA};
