//! Sums whose value does not depend on the order of the additions.
//!
//! Floating-point addition is not associative, so a sum split across threads or chunks
//! would change with the split. [`OrderFreeSum`] adds numbers as integers on a fixed
//! grid of 2⁻⁸⁰ (each value truncated towards zero onto it), which is associative:
//! partial sums can be formed and merged in any order and give the same bits. Values
//! are meant to be block sums (at most 2⁴⁷ in magnitude each); what falls below 2⁻⁸⁰ is
//! lost, far below any tolerance these sums feed.

/// An order-independent sum of `f64` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderFreeSum(i128);

/// The grid: 2⁸⁰ units per 1.
const SCALE: f64 = (1u128 << 80) as f64;

impl OrderFreeSum {
    /// Adds `x` (truncated onto the grid; float-to-integer conversion saturates).
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.0 = self.0.saturating_add((x * SCALE) as i128);
    }

    /// Adds another partial sum.
    #[inline]
    pub fn merge(&mut self, other: OrderFreeSum) {
        self.0 = self.0.saturating_add(other.0);
    }

    /// The sum.
    pub fn value(self) -> f64 {
        self.0 as f64 / SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_order_gives_the_same_bits() {
        let xs: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 1000) as f64 * 1e-3 + 1e-9 * i as f64)
            .collect();
        let mut forward = OrderFreeSum::default();
        xs.iter().for_each(|&x| forward.add(x));
        let mut backward = OrderFreeSum::default();
        xs.iter().rev().for_each(|&x| backward.add(x));
        let (mut a, mut b) = (OrderFreeSum::default(), OrderFreeSum::default());
        xs[..3333].iter().for_each(|&x| a.add(x));
        xs[3333..].iter().for_each(|&x| b.add(x));
        b.merge(a);
        assert_eq!(forward, backward);
        assert_eq!(forward, b);
        let exact: f64 = xs.iter().sum();
        assert!((forward.value() - exact).abs() <= 1e-12 * exact);
    }
}
