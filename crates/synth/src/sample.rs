//! The values of one tensor of every model of a family, as exact f32 numbers.
//!
//! [`TensorSampler`] is the whole statistical model (see the crate documentation):
//! the generator calls it chunk by chunk and rounds to the storage dtype; tests call
//! it to know what was meant before rounding.

use crate::rng::{draw, fnv1a, mix64, normal15, normal16, substream, threshold32};
use crate::spec::{
    tensor_layout, FamilySpec, TensorKind, TensorSpec, BASE_STD, NOISE_RATIO, NORM_DELTA_GAIN,
    NORM_STD,
};

/// Draws the base values and the task vectors of one tensor, element by element.
///
/// Every value is a pure function of the family's seed, the tensor's name, the model
/// and the element's flat index, so any range can be drawn in any order.
#[derive(Clone, Debug)]
pub struct TensorSampler {
    kind: TensorKind,
    base_key: u64,
    select_keys: Vec<u64>,
    magnitude_keys: Vec<u64>,
    scale: f32,
    density_threshold: u64,
    flip_threshold: u64,
}

impl TensorSampler {
    /// The sampler of tensor `tensor` of the family `spec`.
    pub fn new(spec: &FamilySpec, tensor: &TensorSpec) -> Self {
        let key = substream(mix64(spec.seed), fnv1a(tensor.name.as_bytes()));
        let gain = if tensor.kind == TensorKind::Norm {
            NORM_DELTA_GAIN
        } else {
            1.0
        };
        TensorSampler {
            kind: tensor.kind,
            base_key: substream(key, 0),
            select_keys: (0..spec.tasks as u64)
                .map(|t| substream(key, 1 + 2 * t))
                .collect(),
            magnitude_keys: (0..spec.tasks as u64)
                .map(|t| substream(key, 2 + 2 * t))
                .collect(),
            scale: spec.delta_scale * gain,
            density_threshold: threshold32(f64::from(spec.density)),
            flip_threshold: threshold32(spec.flip_probability()),
        }
    }

    /// The number of task vectors this sampler draws.
    pub fn tasks(&self) -> usize {
        self.select_keys.len()
    }

    /// Fills `base` with the base model's values of elements `start..start + base.len()`
    /// and `sign` with their shared signs (±1), which [`Self::fill_delta`] needs.
    pub fn fill_base(&self, start: u64, base: &mut [f32], sign: &mut [f32]) {
        assert_eq!(base.len(), sign.len(), "base and sign lengths differ");
        let (offset, std) = match self.kind {
            TensorKind::Norm => (1.0, NORM_STD),
            _ => (0.0, BASE_STD),
        };
        for (j, (b, s)) in base.iter_mut().zip(sign.iter_mut()).enumerate() {
            let h = draw(self.base_key, start + j as u64);
            *b = offset + std * normal15(h);
            *s = if h >> 63 == 0 { 1.0 } else { -1.0 };
        }
    }

    /// Fills `delta` with task `task`'s vector `δ` on elements
    /// `start..start + delta.len()`, given the shared signs from [`Self::fill_base`].
    pub fn fill_delta(&self, task: usize, start: u64, sign: &[f32], delta: &mut [f32]) {
        assert_eq!(delta.len(), sign.len(), "delta and sign lengths differ");
        let (sel, mag) = (self.select_keys[task], self.magnitude_keys[task]);
        let (dt, ft) = (self.density_threshold, self.flip_threshold);
        let (scale, noise) = (self.scale, self.scale * NOISE_RATIO);
        for (j, (d, &s)) in delta.iter_mut().zip(sign).enumerate() {
            let i = start + j as u64;
            let hs = draw(sel, i);
            let z = normal16(draw(mag, i));
            let important = (hs & 0xFFFF_FFFF) < dt;
            let flipped = (hs >> 32) < ft;
            let s = if flipped { -s } else { s };
            *d = if important {
                scale * s * z.abs()
            } else {
                noise * z
            };
        }
    }

    /// Whether element `index` is one of task `task`'s important entries.
    pub fn is_important(&self, task: usize, index: u64) -> bool {
        (draw(self.select_keys[task], index) & 0xFFFF_FFFF) < self.density_threshold
    }
}

/// The exact f32 values of elements `start..start + len` of tensor `name`: the base
/// and each task vector `δ_t` (task `t` stores `base + δ_t`, rounded to the dtype).
/// `None` if the family has no tensor of that name.
pub fn sample_tensor(
    spec: &FamilySpec,
    name: &str,
    start: u64,
    len: usize,
) -> Option<(Vec<f32>, Vec<Vec<f32>>)> {
    let tensor = tensor_layout(spec).into_iter().find(|t| t.name == name)?;
    let sampler = TensorSampler::new(spec, &tensor);
    let mut base = vec![0.0; len];
    let mut sign = vec![0.0; len];
    sampler.fill_base(start, &mut base, &mut sign);
    let deltas = (0..spec.tasks)
        .map(|t| {
            let mut d = vec![0.0; len];
            sampler.fill_delta(t, start, &sign, &mut d);
            d
        })
        .collect();
    Some((base, deltas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_agree_with_the_whole() {
        let spec = FamilySpec::tiny();
        let name = "model.layers.1.mlp.up_proj.weight";
        let (b, d) = sample_tensor(&spec, name, 0, 1000).unwrap();
        let (b2, d2) = sample_tensor(&spec, name, 333, 100).unwrap();
        assert_eq!(&b[333..433], &b2[..]);
        for t in 0..spec.tasks {
            assert_eq!(&d[t][333..433], &d2[t][..]);
        }
        assert!(sample_tensor(&spec, "nope", 0, 1).is_none());
    }

    #[test]
    fn seeds_and_names_change_values() {
        let spec = FamilySpec::tiny();
        let a = sample_tensor(&spec, "model.layers.0.mlp.up_proj.weight", 0, 64).unwrap();
        let b = sample_tensor(&spec, "model.layers.1.mlp.up_proj.weight", 0, 64).unwrap();
        let c = sample_tensor(
            &FamilySpec {
                seed: 1,
                ..spec.clone()
            },
            "model.layers.0.mlp.up_proj.weight",
            0,
            64,
        )
        .unwrap();
        assert_ne!(a.0, b.0);
        assert_ne!(a.0, c.0);
        assert_ne!(a.1[0], a.1[1]);
    }

    #[test]
    fn base_statistics() {
        let spec = FamilySpec::demo();
        let (b, _) = sample_tensor(&spec, "model.layers.0.mlp.up_proj.weight", 0, 100_000).unwrap();
        let rms = (b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
        assert!((rms - f64::from(BASE_STD)).abs() < 2e-4, "{rms}");
        let (n, _) = sample_tensor(&spec, "model.norm.weight", 0, spec.hidden).unwrap();
        assert!(n.iter().all(|x| (0.8..1.2).contains(x)));
    }
}
