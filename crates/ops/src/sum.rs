//! Sums whose value does not depend on the order of the additions.
//!
//! Floating-point addition is not associative, so a sum split across threads or chunks
//! would change with the split. [`OrderFreeSum`] adds numbers as integers on a fixed
//! grid of 2⁻⁸⁰ (each value truncated towards zero onto it), which is associative:
//! partial sums can be formed and merged in any order and give the same bits. Values
//! are meant to be block sums (at most 2⁴⁷ in magnitude each); what falls below 2⁻⁸⁰ is
//! lost, far below any tolerance these sums feed.
//!
//! Nothing is absorbed silently: a NaN or infinite term, a term beyond the grid's range
//! or a sum that leaves it makes the value NaN or infinite (as IEEE addition would),
//! so that a statistic over a tensor holding one bad value is visibly bad instead of
//! quietly wrong.

/// An order-independent sum of `f64` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderFreeSum {
    /// The sum on the grid, modulo 2¹²⁸ (two's complement).
    units: i128,
    /// How many times the sum wrapped past `i128::MAX` (positive) or `i128::MIN`
    /// (negative): with `units`, the exact sum, so any order of additions agrees.
    wraps: i64,
    /// [`POSITIVE`], [`NEGATIVE`] and [`NAN`] as seen so far.
    special: u8,
}

/// The grid: 2⁸⁰ units per 1.
const SCALE: f64 = (1u128 << 80) as f64;

/// Some term was `+∞` or beyond the grid's range upwards.
const POSITIVE: u8 = 1;
/// Some term was `−∞` or beyond the grid's range downwards.
const NEGATIVE: u8 = 2;
/// Some term was NaN.
const NAN: u8 = 4;

/// Terms at or beyond this magnitude do not fit the grid (2⁴⁷ · 2⁸⁰ = 2¹²⁷).
const LIMIT: f64 = (1u64 << 47) as f64;

impl OrderFreeSum {
    /// Adds `x` (truncated onto the grid).
    #[inline]
    pub fn add(&mut self, x: f64) {
        if x.abs() < LIMIT {
            self.add_units((x * SCALE) as i128);
        } else if x.is_nan() {
            self.special |= NAN;
        } else {
            self.special |= if x > 0.0 { POSITIVE } else { NEGATIVE };
        }
    }

    #[inline]
    fn add_units(&mut self, units: i128) {
        let (sum, wrapped) = self.units.overflowing_add(units);
        self.units = sum;
        if wrapped {
            self.wraps += if units > 0 { 1 } else { -1 };
        }
    }

    /// Adds another partial sum.
    #[inline]
    pub fn merge(&mut self, other: OrderFreeSum) {
        self.special |= other.special;
        self.wraps += other.wraps;
        self.add_units(other.units);
    }

    /// The sum: NaN when a term was NaN (or infinities of both signs met), an infinity
    /// when a term was infinite or beyond the grid, or the sum is beyond it (≥ 2⁴⁷ in
    /// magnitude). Exact wrap counting makes all of this independent of the order.
    pub fn value(self) -> f64 {
        match (self.special, self.wraps) {
            (0, 0) => self.units as f64 / SCALE,
            (0, w) if w > 0 => f64::INFINITY,
            (0, _) => f64::NEG_INFINITY,
            (POSITIVE, _) => f64::INFINITY,
            (NEGATIVE, _) => f64::NEG_INFINITY,
            _ => f64::NAN,
        }
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

    #[test]
    fn nothing_is_absorbed() {
        let sum = |xs: &[f64]| {
            let mut s = OrderFreeSum::default();
            xs.iter().for_each(|&x| s.add(x));
            s.value()
        };
        assert_eq!(sum(&[1.0, f64::INFINITY, 2.0]), f64::INFINITY);
        assert_eq!(sum(&[1.0, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert!(sum(&[1.0, f64::NAN, 2.0]).is_nan());
        assert!(sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        // Beyond the grid: a huge term, and a sum of in-range terms that outgrows it.
        assert_eq!(sum(&[1e30]), f64::INFINITY);
        assert_eq!(sum(&[-1e15]), f64::NEG_INFINITY);
        assert_eq!(sum(&[1.4e14; 2]), f64::INFINITY);
        // ...and comes back into range, in any order: the sum is exact.
        for xs in [[1.4e14, 1.4e14, -1.4e14], [1.4e14, -1.4e14, 1.4e14]] {
            assert_eq!(sum(&xs), sum(&[1.4e14]), "{xs:?}");
        }
        // Merging keeps what either side saw.
        let (mut a, mut b) = (OrderFreeSum::default(), OrderFreeSum::default());
        a.add(1.0);
        b.add(f64::NAN);
        a.merge(b);
        assert!(a.value().is_nan());
    }
}
