//! Builds the plugins the tests load: Rust ones with cargo (into a target folder of
//! their own, so the build never waits on the one running the tests), C ones with the
//! system C compiler.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Scratch space for built plugins.
pub fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `libNAME.so` (or this platform's form of it).
pub fn lib_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Runs `cmd`, panicking with its output when it fails.
#[track_caller]
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cargo` as the test runner was started with.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The Rust plugins of the workspace, built once per test run:
/// (`plugins/tall`, `tests/plugins/fixtures/rust`).
fn rust_plugins() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = scratch().join("cargo");
        run(cargo()
            .current_dir(root())
            .args([
                "build",
                "--quiet",
                "-p",
                "reefknot-plugin-tall",
                "-p",
                "reefknot-test-plugin",
            ])
            .arg("--target-dir")
            .arg(&target));
        let dir = target.join("debug");
        (dir.join(lib_name("tall")), dir.join(lib_name("fixture")))
    })
}

/// `plugins/tall`, built.
pub fn tall() -> &'static Path {
    &rust_plugins().0
}

/// `tests/plugins/fixtures/rust`, built: `fixture::{boom, jitter, center, gain}`.
pub fn fixture() -> &'static Path {
    &rust_plugins().1
}

/// Compiles the C file `source` into the shared library `out` with `defines`: into a
/// file of its own first, renamed into place, so that a test loading an earlier build of
/// `out` never sees it half written.
pub fn cc(source: &Path, out: &Path, defines: &[&str]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    let mut building = out.as_os_str().to_owned();
    building.push(format!(".building-{}-{n}", std::process::id()));
    let building = PathBuf::from(building);
    let mut cmd = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()));
    cmd.args(["-std=c99", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC"])
        .arg("-I")
        .arg(root().join("crates/plugin-api/include"));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    run(cmd.arg("-o").arg(&building).arg(source).arg("-lm"));
    std::fs::rename(&building, out).unwrap();
}

/// `plugins/robust` (plain C), built once per test run.
pub fn robust() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = scratch().join(lib_name("robust"));
        cc(&root().join("plugins/robust/robust.c"), &out, &[]);
        out
    })
}

/// `plugins/rows` (plain C, ABI 1.1), built once per test run.
pub fn rows() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = scratch().join(lib_name("rows"));
        cc(&root().join("plugins/rows/rows.c"), &out, &[]);
        out
    })
}

/// `fixtures/misbehaving.c` built with `-D{variant}` (and `extra` defines).
pub fn misbehaving(variant: &str, extra: &[&str]) -> PathBuf {
    let tag: String = std::iter::once(variant)
        .chain(extra.iter().copied())
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let out = scratch().join(lib_name(&format!("misbehaving_{tag}")));
    let mut defines = vec![variant];
    defines.extend_from_slice(extra);
    cc(
        &root().join("tests/plugins/fixtures/misbehaving.c"),
        &out,
        &defines,
    );
    out
}
