//! Values of the recipe: numbers and gradients, `$variable` values, and values that
//! depend on the tensor (conditions).

use std::collections::BTreeMap;

use crate::Loc;

/// A number, or a gradient: a list of numbers interpolated over layer depth.
///
/// A model's `weight` and any number in `params` may be either.
#[derive(Clone, Debug, PartialEq)]
pub enum Number {
    /// One value at every depth.
    Scalar(f64),
    /// Two or more values spread evenly from the first layer (`t = 0`) to the last
    /// (`t = 1`).
    Gradient(Vec<f64>),
}

impl Number {
    /// The value at depth `t` (see [`crate::depth_t`]), as operators.md defines it: with
    /// `K` values `v`, `s = t·(K-1)`, `v = (1-(s-⌊s⌋))·v[⌊s⌋] + (s-⌊s⌋)·v[min(K-1, ⌊s⌋+1)]`.
    ///
    /// `t` is clamped to `[0, 1]` (NaN counts as 0). A scalar is the same at every depth.
    /// An empty gradient (which the recipe never produces) is 0.
    pub fn at(&self, t: f64) -> f64 {
        let values = match self {
            Number::Scalar(v) => return *v,
            Number::Gradient(values) => values,
        };
        let Some(&last) = values.last() else {
            return 0.0;
        };
        let k = values.len();
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let s = t * (k - 1) as f64;
        let i = (s.floor() as usize).min(k - 1);
        let frac = s - i as f64;
        let next = values.get(i + 1).copied().unwrap_or(last);
        (1.0 - frac) * values[i] + frac * next
    }

    /// Whether this is a gradient.
    pub fn is_gradient(&self) -> bool {
        matches!(self, Number::Gradient(_))
    }
}

impl From<f64> for Number {
    fn from(v: f64) -> Number {
        Number::Scalar(v)
    }
}

/// One entry of a list of conditions: the value of the tensors whose name `glob`
/// matches, or of every tensor when it has none.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition<T> {
    /// The `match:` glob over the whole tensor name ([`crate::Selector::Match`]'s
    /// rules); `None` matches every tensor.
    pub glob: Option<String>,
    /// The value.
    pub value: T,
    /// Where the entry is written.
    pub loc: Loc,
}

/// A model's `weight`: one number or gradient, or conditions on the tensor's name.
#[derive(Clone, Debug, PartialEq)]
pub enum Weight {
    /// The same number (or gradient) for every tensor.
    Number(Number),
    /// The value of the first entry whose glob matches; `1.0` where none does.
    Conditions(Vec<Condition<Number>>),
}

impl Weight {
    /// The default weight, 1.0.
    pub const ONE: Weight = Weight::Number(Number::Scalar(1.0));
}

/// The value of a `$variable` in a `params:` map.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    /// A number or a gradient (`density: 0.3`, `density: [0.1, 0.5]`).
    Number(Number),
    /// A string (`rescale: l1`, `rescale: "l1"`).
    Text(String),
    /// A boolean: `true` or `false` (YAML 1.2: `yes`/`no` are strings).
    Bool(bool),
    /// Conditions on the tensor's name, first match wins: `[{match: "*mlp*", value:
    /// 0.5}, {value: 0.2}]`. Where none matches, the variable is looked up at the next
    /// level as if this map did not give it. The values are never conditions.
    Conditions(Vec<Condition<ParamValue>>),
}

/// One entry of a `params:` map: the value and where the recipe writes it, so that an
/// error about the value (out of range, wrong type for the operator) can point at it.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The value.
    pub value: ParamValue,
    /// The value in the recipe's source (for a list, the whole list).
    pub loc: Loc,
    /// The name (the key) in the recipe's source.
    pub key_loc: Loc,
}

/// Values for `$variables` by name (without the `$`), each with its location: the
/// recipe's `params`, a model's `params` or an override's `params`.
///
/// A `BTreeMap` so that iteration (and `reefknot check`'s plan) is in name order.
pub type Params = BTreeMap<String, Param>;

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn scalar_is_constant() {
        let n = Number::Scalar(0.7);
        for t in [0.0, 0.3, 1.0, -1.0, 2.0, f64::NAN] {
            assert_eq!(n.at(t), 0.7);
        }
    }

    #[test]
    fn two_values_are_linear() {
        let n = Number::Gradient(vec![0.0, 1.0]);
        assert_eq!(n.at(0.0), 0.0);
        assert_eq!(n.at(1.0), 1.0);
        assert!(close(n.at(0.25), 0.25));
        assert!(close(n.at(0.5), 0.5));
    }

    #[test]
    fn several_values_interpolate_between_neighbours() {
        // K = 3: knots at t = 0, 0.5, 1.
        let n = Number::Gradient(vec![0.1, 0.5, 0.3]);
        assert!(close(n.at(0.0), 0.1));
        assert!(close(n.at(0.5), 0.5));
        assert!(close(n.at(1.0), 0.3));
        // s = 0.25·2 = 0.5 → halfway between v[0] and v[1].
        assert!(close(n.at(0.25), 0.3));
        // s = 0.75·2 = 1.5 → halfway between v[1] and v[2].
        assert!(close(n.at(0.75), 0.4));
        // K = 5, t = 0.6: s = 2.4 → 0.6·v[2] + 0.4·v[3].
        let n = Number::Gradient(vec![0.0, 10.0, 20.0, 60.0, 100.0]);
        assert!(close(n.at(0.6), 0.6 * 20.0 + 0.4 * 60.0));
    }

    #[test]
    fn depth_of_layers_through_gradient() {
        // Layer i of L = 5 with a 3-value gradient, the whole path.
        let n = Number::Gradient(vec![1.0, 0.0, 1.0]);
        let values: Vec<f64> = (0..5).map(|i| n.at(crate::depth_t(Some(i), 5))).collect();
        assert_eq!(values, [1.0, 0.5, 0.0, 0.5, 1.0]);
        // Outside the stack t = 0: the first value.
        assert_eq!(n.at(crate::depth_t(None, 5)), 1.0);
    }

    #[test]
    fn out_of_range_t_is_clamped() {
        let n = Number::Gradient(vec![2.0, 4.0]);
        assert_eq!(n.at(-0.5), 2.0);
        assert_eq!(n.at(1.5), 4.0);
        assert_eq!(n.at(f64::NAN), 2.0);
        assert_eq!(Number::Gradient(vec![]).at(0.5), 0.0);
    }

    mod prop {
        use super::super::Number;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn stays_within_neighbours(
                values in proptest::collection::vec(-1e6f64..1e6, 2..12),
                t in 0.0f64..=1.0,
            ) {
                let k = values.len();
                let s = t * (k - 1) as f64;
                let i = (s.floor() as usize).min(k - 1);
                let j = (i + 1).min(k - 1);
                let (lo, hi) = if values[i] <= values[j] { (values[i], values[j]) } else { (values[j], values[i]) };
                let v = Number::Gradient(values.clone()).at(t);
                let slack = 1e-9 * (1.0 + lo.abs().max(hi.abs()));
                prop_assert!(v >= lo - slack && v <= hi + slack, "{v} not in [{lo}, {hi}]");
            }

            #[test]
            fn hits_every_knot(values in proptest::collection::vec(-1e3f64..1e3, 2..12)) {
                let k = values.len();
                for (i, &x) in values.iter().enumerate() {
                    let t = i as f64 / (k - 1) as f64;
                    let v = Number::Gradient(values.clone()).at(t);
                    prop_assert!((v - x).abs() <= 1e-9 * (1.0 + x.abs()), "knot {i}: {v} vs {x}");
                }
            }
        }
    }
}
