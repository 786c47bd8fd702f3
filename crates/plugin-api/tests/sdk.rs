//! The SDK's entry point, called the way a host calls it: views, arguments, errors,
//! panics (caught, never unwinding across `extern "C"`), and the error buffer.

use std::mem::size_of;

use reefknot_plugin_api::*;

struct Affine;

impl Operator for Affine {
    const NAME: &'static str = "affine";
    const SUMMARY: &'static str = "a·Δ + b, or an error, or a panic";
    const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta, Signature::StackToStack];
    const PARAMS: &'static [Param] = &[
        Param::number("a", "the factor").default(1.0),
        Param::number("b", "the offset").default(0.0),
        Param::choice(
            "mode",
            "what to do",
            &[RkStr::new("ok"), RkStr::new("fail"), RkStr::new("panic")],
        )
        .default_choice("ok"),
    ];

    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        match input.choice("mode") {
            "fail" => return Err(format!("refused tensor {}", input.tensor())),
            "panic" => panic!("boom at offset {}", input.offset()),
            _ => {}
        }
        let b = input.number("b") as f32;
        match input.input_type() {
            Type::Delta => {
                let a = input.number("a") as f32;
                for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
                    *o = a * d + b;
                }
            }
            _ => {
                for i in 0..input.models() {
                    let a = input.number_for("a", i) as f32;
                    let d = input.model(i);
                    for (o, &x) in output.model_mut(i).iter_mut().zip(d) {
                        *o = a * x + b;
                    }
                }
            }
        }
        Ok(())
    }
}

export_plugin! {
    name: "sdktest",
    version: "1.2.3",
    operators: [Affine],
}

fn arg(name: &'static str, kind: u32, numbers: &[f64], text: &'static str) -> RkArg {
    RkArg {
        size: size_of::<RkArg>(),
        name: RkStr::new(name),
        kind,
        boolean: 0,
        numbers: numbers.as_ptr(),
        number_count: numbers.len(),
        text: RkStr::new(text),
    }
}

/// Runs `Affine` on a Delta (or a 2-model Stack) of `[1, 2, 3]` with `mode`.
fn run(mode: &'static str, stack: bool, error_capacity: usize) -> (u32, Vec<f32>, String) {
    let input = [1f32, 2.0, 3.0];
    let input2 = [10f32, 20.0, 30.0];
    let a = [2.0f64, 3.0];
    let b = [0.5f64];
    let args = [
        arg("a", RK_PARAM_NUMBER, if stack { &a } else { &a[..1] }, ""),
        arg("b", RK_PARAM_NUMBER, &b, ""),
        arg("mode", RK_PARAM_CHOICE, &[], mode),
    ];
    let stack_in = [input.as_ptr(), input2.as_ptr()];
    let weights = [1f32, 1.0];
    let mut out = vec![0f32; 6];
    let (o1, o2) = out.split_at_mut(3);
    let stack_out = [o1.as_mut_ptr(), o2.as_mut_ptr()];
    let mut delta_out = [0f32; 3];
    let call = RkCall {
        size: size_of::<RkCall>(),
        tensor: RkStr::new("w"),
        seed: 0,
        offset: 7,
        numel: 10,
        len: 3,
        models: if stack { 2 } else { 1 },
        input: if stack { RK_TYPE_STACK } else { RK_TYPE_DELTA },
        output: if stack { RK_TYPE_STACK } else { RK_TYPE_DELTA },
        stack: if stack {
            stack_in.as_ptr()
        } else {
            std::ptr::null()
        },
        sign: std::ptr::null(),
        delta: if stack {
            std::ptr::null()
        } else {
            input.as_ptr()
        },
        base: std::ptr::null(),
        fisher: std::ptr::null(),
        weights: weights.as_ptr(),
        args: args.as_ptr(),
        arg_count: args.len(),
        op_data: std::ptr::null(),
        shape: [10u64].as_ptr(),
        ndim: 1,
        layer: -1,
        tasks: std::ptr::null(),
    };
    let mut error = vec![0u8; error_capacity];
    let mut output = RkOutput {
        size: size_of::<RkOutput>(),
        stack: if stack {
            stack_out.as_ptr()
        } else {
            std::ptr::null()
        },
        sign: std::ptr::null_mut(),
        delta: if stack {
            std::ptr::null_mut()
        } else {
            delta_out.as_mut_ptr()
        },
        error: error.as_mut_ptr(),
        error_capacity,
        error_len: 0,
    };
    // SAFETY: the call and output are built as the ABI says, from live buffers.
    #[allow(unsafe_code)]
    let status = unsafe { entry::<Affine>(&call, &mut output) };
    let message = String::from_utf8(error[..output.error_len].to_vec()).unwrap();
    let values = if stack { out } else { delta_out.to_vec() };
    (status, values, message)
}

#[test]
fn the_entry_point_computes_into_the_host_buffers() {
    let (status, values, message) = run("ok", false, 256);
    assert_eq!((status, message.as_str()), (RK_STATUS_OK, ""));
    assert_eq!(values, [2.5, 4.5, 6.5]);
    // Per-model numbers on a Stack.
    let (status, values, _) = run("ok", true, 256);
    assert_eq!(status, RK_STATUS_OK);
    assert_eq!(values, [2.5, 4.5, 6.5, 30.5, 60.5, 90.5]);
}

#[test]
fn errors_and_panics_become_statuses_with_messages() {
    let (status, _, message) = run("fail", false, 256);
    assert_eq!(status, RK_STATUS_ERROR);
    assert_eq!(message, "refused tensor w");
    let (status, _, message) = run("panic", false, 256);
    assert_eq!(status, RK_STATUS_PANIC);
    assert_eq!(message, "panicked: boom at offset 7");
    // The message is cut to the host's buffer.
    let (status, _, message) = run("panic", false, 9);
    assert_eq!((status, message.as_str()), (RK_STATUS_PANIC, "panicked:"));
}

// The two symbols export_plugin! defined in this test binary.
#[allow(unsafe_code)]
unsafe extern "C" {
    fn reefknot_plugin_abi_version() -> RkAbiVersion;
    fn reefknot_plugin_descriptor() -> *const RkPlugin;
}

#[test]
fn the_descriptor_describes_the_operators() {
    // SAFETY: functions of no arguments defined by export_plugin! above.
    #[allow(unsafe_code)]
    let version = unsafe { reefknot_plugin_abi_version() };
    assert_eq!(
        (version.major, version.minor),
        (REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR)
    );
    // SAFETY: the table is static data built by export_plugin!.
    #[allow(unsafe_code)]
    let (plugin, op) = unsafe {
        let p = &*reefknot_plugin_descriptor();
        (p, &*p.operators)
    };
    assert_eq!(plugin.size, size_of::<RkPlugin>());
    assert_eq!(plugin.operator_count, 1);
    assert_eq!(op.signatures, RK_SIG_DELTA_DELTA | RK_SIG_STACK_STACK);
    assert_eq!(op.flags, RK_OP_ELEMENTWISE);
    assert_eq!(op.param_count, 3);
    assert!(op.call.is_some());
}
