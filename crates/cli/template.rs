//! `reefknot plugin new NAME --lang rust|c`: a plugin project that builds and passes
//! `reefknot plugin test` as it is written, with one operator to start from
//! (`NAME::shrink`, soft thresholding of the task vectors) and a test.
//!
//! The project vendors the SDK of this reefknot (the `reefknot-plugin-api` crate, or
//! for C its header), embedded in the binary: it builds offline, against exactly the
//! ABI this reefknot speaks.

use std::path::{Path, PathBuf};

use crate::{usage, Failure};

/// The plugin's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// A Rust crate built with cargo, on the SDK crate.
    Rust,
    /// One C99 file built with any C compiler, on the header.
    C,
}

/// The SDK crate's files, as this binary was built with them.
const SDK: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../plugin-api/Cargo.toml")),
    ("src/lib.rs", include_str!("../plugin-api/src/lib.rs")),
    ("src/abi.rs", include_str!("../plugin-api/src/abi.rs")),
    ("src/call.rs", include_str!("../plugin-api/src/call.rs")),
    ("src/rng.rs", include_str!("../plugin-api/src/rng.rs")),
    ("src/sdk.rs", include_str!("../plugin-api/src/sdk.rs")),
    (
        "src/testing.rs",
        include_str!("../plugin-api/src/testing.rs"),
    ),
    (
        "include/reefknot_plugin.h",
        include_str!("../plugin-api/include/reefknot_plugin.h"),
    ),
];

const RUST_MANIFEST: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A shared library for reefknot to load, and a Rust library for the tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK of the reefknot that wrote this project (`reefknot plugin new`), vendored.
reefknot-plugin-api = { path = "vendor/reefknot-plugin-api" }

[profile.release]
# File and line in a panic's backtrace.
debug = "line-tables-only"

# A project of its own, even inside another workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! `@NAME@`: a reefknot operator plugin.
//!
//! `@NAME@::shrink(tau)` soft-thresholds the task vectors,
//! `δ ← sign(δ)·max(|δ| − τ, 0)`: small entries become zero, large ones lose τ.
//! Replace it with your operator; `cargo test` checks it with the SDK's test kit, and
//! `reefknot plugin test target/release/lib@NAME@.so` checks the built library.

use reefknot_plugin_api::{export_plugin, Input, Operator, Output, Param, Signature};

/// `δ ← sign(δ)·max(|δ| − τ, 0)` for every entry of every task vector.
pub struct Shrink;

impl Operator for Shrink {
    const NAME: &'static str = "shrink";
    const SUMMARY: &'static str = "soft-threshold the task vectors: shrink every entry toward 0 by tau";
    const DOC: &'static str = "`δ ← sign(δ)·max(|δ| − τ, 0)` for every entry of every task \
vector: entries smaller than `tau` become 0, larger ones lose `tau`. `tau` may be per model.";
    const SIGNATURES: &'static [Signature] = &[Signature::StackToStack];
    const PARAMS: &'static [Param] =
        &[Param::number("tau", "how far each entry moves toward 0").min(0.0).default(0.001)];

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

export_plugin! {
    name: "@NAME@",
    version: env!("CARGO_PKG_VERSION"),
    description: "soft thresholding of task vectors",
    operators: [Shrink],
}

#[cfg(test)]
mod tests {
    use reefknot_plugin_api::testing::{self, Case};

    use super::Shrink;

    #[test]
    fn shrink_moves_every_entry_toward_zero_by_tau() {
        let case = Case::stack(vec![vec![0.5, -0.05, 0.0, -2.0], vec![0.1, 0.2, -0.3, 0.4]])
            .shape(&[2, 2])
            .number("tau", 0.1);
        // What the host relies on: determinism, chunking, every element written, finite.
        let out = testing::check::<Shrink>(&case).unwrap();
        let want = [[0.4f32, 0.0, 0.0, -1.9], [0.0, 0.1, -0.2, 0.3]];
        for (got, want) in out.stack.iter().zip(want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?}");
            }
        }
    }
}
"#;

const RUST_README: &str = r#"# @NAME@

A reefknot operator plugin (Rust), made by `reefknot plugin new`.

```sh
cargo test                                            # the operator's own tests
cargo build --release                                 # target/release/lib@NAME@.so
reefknot plugin test target/release/lib@NAME@.so      # what reefknot relies on
reefknot ops @NAME@::shrink --plugin target/release/lib@NAME@.so
```

Then merge with it: `merge: @NAME@::shrink(tau=0.001) |> sum` and
`plugins: [path/to/lib@NAME@.so]` in a recipe, or `--plugin PATH`. `vendor/` holds the
SDK of the reefknot that made this project; the author's guide is reefknot's
`docs/plugins.md`.
"#;

const C_SOURCE: &str = r#"/*
 * @NAME@: a reefknot operator plugin in C.
 *
 *   @NAME@::shrink(tau=0.001)   Stack->Stack, elementwise
 *       delta <- sign(delta) * max(|delta| - tau, 0) for every entry of every task
 *       vector: small entries become zero, large ones lose tau (tau may be per model).
 *
 * Build with `make`; `make test` runs `reefknot plugin test` on the library.
 */
#include <math.h>

#include "reefknot_plugin.h"

static uint32_t shrink_call(const RkCall *call, RkOutput *out) {
    for (size_t i = 0; i < call->models; i++) {
        float tau = (float)rk_number(call, "tau", i, 0.001);
        const float *in = call->stack[i];
        float *o = out->stack[i];
        for (size_t j = 0; j < call->len; j++) {
            float m = fabsf(in[j]) - tau;
            o[j] = m > 0.0f ? copysignf(m, in[j]) : 0.0f;
        }
    }
    return RK_STATUS_OK;
}

static const RkParam shrink_params[] = {{
    .size = sizeof(RkParam),
    .name = RK_STR("tau"),
    .doc = RK_STR("how far each entry moves toward 0"),
    .kind = RK_PARAM_NUMBER,
    .has_default = 1,
    .min_bound = RK_BOUND_INCLUSIVE,
    .min = 0.0,
    .default_number = 0.001,
}};

static const RkOperator operators[] = {{
    .size = sizeof(RkOperator),
    .name = RK_STR("shrink"),
    .summary = RK_STR("soft-threshold the task vectors: shrink every entry toward 0 by tau"),
    .doc = RK_STR(""),
    .params = shrink_params,
    .param_count = 1,
    .signatures = RK_SIG_STACK_STACK,
    .flags = RK_OP_ELEMENTWISE,
    .call = shrink_call,
    .data = NULL,
}};

static const RkPlugin plugin = {
    .size = sizeof(RkPlugin),
    .name = RK_STR("@NAME@"),
    .version = RK_STR("0.1.0"),
    .description = RK_STR("soft thresholding of task vectors"),
    .operators = operators,
    .operator_count = 1,
};

RK_EXPORT RkAbiVersion reefknot_plugin_abi_version(void) {
    RkAbiVersion v = {REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR};
    return v;
}

RK_EXPORT const RkPlugin *reefknot_plugin_descriptor(void) {
    return &plugin;
}
"#;

const C_MAKEFILE: &str = "CC ?= cc
CFLAGS ?= -std=c99 -O2 -Wall -Wextra
REEFKNOT ?= reefknot
LIB = lib@NAME@.so

$(LIB): @NAME@.c include/reefknot_plugin.h
\t$(CC) $(CFLAGS) -shared -fPIC -Iinclude -o $@ @NAME@.c -lm

test: $(LIB)
\t$(REEFKNOT) plugin test ./$(LIB)

clean:
\trm -f $(LIB)

.PHONY: test clean
";

const C_README: &str = r#"# @NAME@

A reefknot operator plugin (C99), made by `reefknot plugin new --lang c`.

```sh
make              # lib@NAME@.so (on macOS name it .dylib)
make test         # reefknot plugin test ./lib@NAME@.so
reefknot ops @NAME@::shrink --plugin ./lib@NAME@.so
```

Then merge with it: `merge: @NAME@::shrink(tau=0.001) |> sum` and
`plugins: [path/to/lib@NAME@.so]` in a recipe, or `--plugin PATH`.
`include/reefknot_plugin.h` is the ABI of the reefknot that made this project; the
author's guide is reefknot's `docs/plugins.md`.
"#;

/// Writes the project for plugin `name` into `dir` (default `./NAME`, which must not
/// exist) and prints what to run next.
pub(crate) fn new(name: &str, lang: Lang, dir: Option<&Path>) -> Result<(), Failure> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(usage(anyhow::anyhow!(
            "`{name}` cannot name a plugin: the name is the namespace of its operators \
             (`{name}::op`), an identifier of letters, digits and `_`"
        )));
    }
    let dir: PathBuf = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        return Err(usage(anyhow::anyhow!(
            "{} exists already: choose another folder with --dir",
            dir.display()
        )));
    }
    let fill = |text: &str| text.replace("@NAME@", name);
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), fill(RUST_MANIFEST)));
            files.push(("src/lib.rs".into(), fill(RUST_LIB)));
            files.push(("README.md".into(), fill(RUST_README)));
            files.push((".gitignore".into(), "/target\n".into()));
            for (path, text) in SDK {
                files.push((
                    Path::new("vendor/reefknot-plugin-api").join(path),
                    (*text).to_string(),
                ));
            }
        }
        Lang::C => {
            files.push((format!("{name}.c").into(), fill(C_SOURCE)));
            files.push(("Makefile".into(), fill(C_MAKEFILE)));
            files.push(("README.md".into(), fill(C_README)));
            files.push((".gitignore".into(), "*.so\n*.dylib\n*.dll\n".into()));
            let header = SDK
                .iter()
                .find(|(p, _)| p.ends_with(".h"))
                .expect("the header");
            files.push(("include/reefknot_plugin.h".into(), header.1.to_string()));
        }
    }
    for (path, text) in &files {
        let path = dir.join(path);
        let write = std::fs::create_dir_all(path.parent().expect("a file in the project"))
            .and_then(|()| std::fs::write(&path, text));
        write.map_err(|e| {
            Failure::from(anyhow::Error::new(e).context(format!("writing {}", path.display())))
        })?;
    }
    outln!(
        "wrote the plugin `{name}` ({}) into {}:",
        match lang {
            Lang::Rust => "Rust",
            Lang::C => "C",
        },
        dir.display()
    );
    let lib = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    match lang {
        Lang::Rust => {
            outln!(
                "  cd {} && cargo test && cargo build --release",
                dir.display()
            );
            outln!("  reefknot plugin test target/release/{lib}");
        }
        Lang::C => {
            outln!("  cd {} && make", dir.display());
            outln!("  reefknot plugin test ./{lib}");
        }
    }
    Ok(())
}
