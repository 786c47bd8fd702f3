//! Keep-masks of random operators (`dare`, `della`), kept from a statistics pass for
//! `apply` so that each draw is made once, in buffers from one pool of bounded size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// How many bytes of keep-masks all bound `dare` and `della` kernels may hold together.
pub(crate) static MASK_BUDGET: Budget = Budget::new(32 << 20);

/// Buffers for keep-masks, shared by every tensor in flight: at most `limit` bytes of
/// them exist at any time, in use or spare. A buffer given back is kept for the next
/// chunk rather than freed, so the memory stays at the limit instead of growing with
/// what the allocator keeps of freed blocks (which doubled it with two threads).
pub(crate) struct Budget {
    pub(crate) limit: usize,
    /// Bytes of all buffers, in use or spare.
    pub(crate) used: AtomicUsize,
    spare: Mutex<Vec<Vec<u64>>>,
}

impl Budget {
    pub(crate) const fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            spare: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u64>>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` zeroed words: a spare buffer, grown if need be, or a new one; none if the
    /// budget has no room for them.
    pub(crate) fn take(&'static self, n: usize) -> Option<MaskWords> {
        const WORD: usize = std::mem::size_of::<u64>();
        let mut words = self.spare().pop().unwrap_or_default();
        let have = words.capacity();
        words.clear();
        if have < n {
            let fits = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add((n - have) * WORD)
                        .filter(|&total| total <= self.limit)
                })
                .is_ok();
            if !fits {
                if have > 0 {
                    self.spare().push(words);
                }
                return None;
            }
            words.reserve_exact(n);
            // The allocator may give more than asked: count what the buffer holds, so
            // that `release` takes back exactly what was counted.
            let extra = words.capacity() - n;
            if extra > 0 {
                self.used.fetch_add(extra * WORD, Ordering::AcqRel);
            }
        }
        words.resize(n, 0);
        Some(MaskWords {
            budget: self,
            words,
        })
    }

    /// Frees the spare buffers (those in use stay counted).
    pub(crate) fn release(&self) {
        let freed: usize = self
            .spare()
            .drain(..)
            .map(|w| w.capacity() * std::mem::size_of::<u64>())
            .sum();
        self.used.fetch_sub(freed, Ordering::AcqRel);
    }
}

/// Frees the keep-mask buffers kept for reuse from tensor to tensor (see
/// [`crate::release_spare_memory`]).
pub(crate) fn release_spare_masks() {
    MASK_BUDGET.release();
}

/// Keep-mask words from a [`Budget`], given back to it when dropped.
pub(crate) struct MaskWords {
    budget: &'static Budget,
    words: Vec<u64>,
}

impl std::ops::Deref for MaskWords {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.words
    }
}

impl std::ops::DerefMut for MaskWords {
    fn deref_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }
}

impl Drop for MaskWords {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        self.budget.spare().push(words);
    }
}

/// The keep-masks of one chunk.
pub(crate) struct ChunkMask {
    /// The chunk's first element and length.
    pub(crate) offset: usize,
    pub(crate) len: usize,
    /// For each active lane in order, `len.div_ceil(64)` words (bit `k % 64` of word
    /// `k / 64` set when element `k` is kept).
    pub(crate) words: MaskWords,
}
