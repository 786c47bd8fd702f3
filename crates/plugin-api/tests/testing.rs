//! The test kit catches what a host relies on and a plugin can get wrong: each
//! misbehaving operator below is run through `testing::check` and refused with the
//! reason; a well-behaved one passes, and its outcome is what the math says.

use std::sync::atomic::{AtomicU32, Ordering};

use reefknot_plugin_api::testing::{self, Case};
use reefknot_plugin_api::{
    Flags, Input, Operator, Output, Param, RkCall, RkOperator, RkOutput, RkStr, Signature,
    RK_OP_ELEMENTWISE, RK_STATUS_OK,
};

/// `δ ← sign(δ)·max(|δ| − τ, 0)`, elementwise, correct.
struct Shrink;
impl Operator for Shrink {
    const NAME: &'static str = "shrink";
    const SUMMARY: &'static str = "soft thresholding";
    const SIGNATURES: &'static [Signature] = &[Signature::StackToStack];
    const PARAMS: &'static [Param] = &[Param::number("tau", "the threshold").min(0.0)];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        for i in 0..input.models() {
            let tau = input.number_for("tau", i) as f32;
            for (o, &x) in output.model_mut(i).iter_mut().zip(input.model(i)) {
                *o = (x.abs() - tau).max(0.0).copysign(x);
            }
        }
        Ok(())
    }
}

/// Claims to be elementwise but scales by the call's length.
struct ByLength;
impl Operator for ByLength {
    const NAME: &'static str = "by_length";
    const SUMMARY: &'static str = "depends on the chunk";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        let n = input.len() as f32;
        for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
            *o = d * n;
        }
        Ok(())
    }
}

/// Writes only the first half of its output.
struct Half;
impl Operator for Half {
    const NAME: &'static str = "half";
    const SUMMARY: &'static str = "leaves elements unwritten";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
    const FLAGS: Flags = Flags::WHOLE_TENSOR;
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        let n = input.len() / 2;
        output.delta_mut()[..n].copy_from_slice(&input.delta()[..n]);
        Ok(())
    }
}

/// Differs from call to call.
struct Drift;
static CALLS: AtomicU32 = AtomicU32::new(0);
impl Operator for Drift {
    const NAME: &'static str = "drift";
    const SUMMARY: &'static str = "not deterministic";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        let k = CALLS.fetch_add(1, Ordering::Relaxed) as f32;
        for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
            *o = d + k;
        }
        Ok(())
    }
}

/// Elects 0 and 2 instead of -1 and +1.
struct BadSigns;
impl Operator for BadSigns {
    const NAME: &'static str = "bad_signs";
    const SUMMARY: &'static str = "signs out of range";
    const SIGNATURES: &'static [Signature] = &[Signature::StackToVoted];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        for (j, s) in output.sign_mut().iter_mut().enumerate() {
            *s = if input.model(0)[j] > 0.0 { 2.0 } else { 0.0 };
        }
        Ok(())
    }
}

/// Writes into its input through the pointer the host lent it, as a C plugin could.
extern "C" fn scribble(call: *const RkCall, out: *mut RkOutput) -> u32 {
    // SAFETY: the test kit calls it with valid structs, as the ABI says; the write into
    // the input is the contract violation under test (the kit's inputs are its own
    // mutable copies, so it lands in owned memory).
    #[allow(unsafe_code)]
    unsafe {
        let (call, out) = (&*call, &mut *out);
        for j in 0..call.len {
            *out.delta.add(j) = *call.delta.add(j);
        }
        *call.delta.cast_mut() = 42.0;
    }
    RK_STATUS_OK
}

/// Divides by zero.
struct Nan;
impl Operator for Nan {
    const NAME: &'static str = "nan";
    const SUMMARY: &'static str = "not finite";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
            *o = d / 0.0 * 0.0;
        }
        Ok(())
    }
}

/// A mode that panics, the way a bug would.
struct Moody;
const MODES: &[RkStr] = &[RkStr::new("calm"), RkStr::new("panic")];
impl Operator for Moody {
    const NAME: &'static str = "moody";
    const SUMMARY: &'static str = "panics when asked";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
    const PARAMS: &'static [Param] =
        &[Param::choice("mode", "calm or panic", MODES).default_choice("calm")];
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        assert!(input.choice("mode") != "panic", "asked to panic");
        output.delta_mut().copy_from_slice(input.delta());
        Ok(())
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001)
        .map(|k| k as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn a_correct_operator_passes_and_computes_the_math() {
    let case = Case::stack(vec![values(300, 1), values(300, 2)])
        .shape(&[20, 15])
        .numbers("tau", vec![0.1, 0.5]);
    let out = testing::check::<Shrink>(&case).unwrap();
    for (i, tau) in [0.1f32, 0.5].into_iter().enumerate() {
        for (j, &x) in values(300, i as u32 + 1).iter().enumerate() {
            assert_eq!(
                out.stack[i][j].to_bits(),
                (x.abs() - tau).max(0.0).copysign(x).to_bits()
            );
        }
    }
    // Chunked calls are concatenated in element order.
    let chunked = testing::run_chunked::<Shrink>(&case, 11).unwrap();
    assert!(chunked.same_bits(&out));
}

#[test]
fn each_broken_promise_is_named() {
    let delta = Case::delta(values(100, 3));
    let err = |r: Result<testing::Outcome, String>| r.unwrap_err();
    assert!(
        err(testing::check::<ByLength>(&delta)).contains("called in chunks of 1 elements"),
        "{}",
        err(testing::check::<ByLength>(&delta))
    );
    assert!(err(testing::check::<Half>(&delta)).contains("output value 50 was not written"));
    assert!(err(testing::check::<Drift>(&delta)).contains("two runs on the same inputs differ"));
    assert!(err(testing::check::<Nan>(&delta)).contains("output value 0 is not finite"));
    let descriptor = RkOperator {
        call: Some(scribble),
        flags: RK_OP_ELEMENTWISE,
        ..RkOperator::of::<Nan>()
    };
    assert!(err(testing::check_raw(
        testing::Subject::new(&descriptor),
        &delta
    ))
    .contains("the operator wrote into its input `delta` (element 0)"));
    let stack = Case::stack(vec![values(10, 4)]);
    assert!(err(testing::check::<BadSigns>(&stack)).contains("elected signs are +1 or -1"));
    let panics = Case::delta(values(10, 5)).choice("mode", "panic");
    assert!(err(testing::run::<Moody>(&panics)).contains("panicked: asked to panic"));
    // Arguments are checked against the parameters.
    assert!(
        err(testing::run::<Shrink>(&Case::stack(vec![values(4, 6)])))
            .contains("parameter `tau` has no default: give it")
    );
    assert!(err(testing::run::<Moody>(
        &Case::delta(values(4, 7)).number("k", 1.0)
    ))
    .contains("the operator has no parameter `k`"));
}
