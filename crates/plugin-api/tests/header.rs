//! The C header and the Rust ABI types describe the same ABI.
//!
//! The test generates a C file that includes `include/reefknot_plugin.h` and asserts,
//! with `_Static_assert`, the size and alignment of every struct, the offset and size
//! of every field and the value of every constant as the Rust side computes them, and
//! compiles it with the system C compiler (`$CC`, else `cc`). It also reads the
//! header's struct bodies and `#define`s, so a field or constant that exists in C only
//! fails too.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use reefknot_plugin_api::abi::{CONSTANTS, LAYOUTS};

fn header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/reefknot_plugin.h")
}

fn compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

#[test]
fn c_header_has_the_rust_layout_and_constants() {
    let mut c = String::from("#include \"reefknot_plugin.h\"\n#include <stdalign.h>\n\n");
    for s in LAYOUTS {
        let n = s.name;
        let _ = writeln!(
            c,
            "_Static_assert(sizeof({n}) == {}, \"sizeof({n}) differs from Rust ({})\");",
            s.size, s.size
        );
        let _ = writeln!(
            c,
            "_Static_assert(alignof({n}) == {}, \"alignof({n}) differs from Rust\");",
            s.align
        );
        for f in s.fields {
            let fld = f.name;
            let _ = writeln!(
                c,
                "_Static_assert(offsetof({n}, {fld}) == {}, \"offset of {n}.{fld} differs from Rust ({})\");",
                f.offset, f.offset
            );
            let _ = writeln!(
                c,
                "_Static_assert(sizeof((({n} *)0)->{fld}) == {}, \"size of {n}.{fld} differs from Rust\");",
                f.size
            );
        }
    }
    for (name, value) in CONSTANTS {
        let _ = writeln!(
            c,
            "_Static_assert((unsigned long long)({name}) == {value}ull, \"{name} differs from Rust ({value})\");"
        );
    }
    let dir = tempfile_dir();
    let file = dir.join("layout.c");
    std::fs::write(&file, &c).unwrap();
    let out = Command::new(compiler())
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
        ])
        .arg("-I")
        .arg(header().parent().unwrap())
        .arg(&file)
        .output()
        .expect("a C compiler (`cc`, or $CC) runs");
    assert!(
        out.status.success(),
        "the C header disagrees with the Rust ABI:\n{}\n--- generated file ---\n{c}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh folder under the target directory's test scratch space.
fn tempfile_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugin-api-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The header without comments.
fn header_code() -> String {
    let text = std::fs::read_to_string(header()).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let j = rest[i..].find("*/").expect("closed comment");
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn c_header_declares_the_same_fields_in_the_same_order() {
    let code = header_code();
    for s in LAYOUTS {
        let open = [
            format!("typedef struct {} {{", s.name),
            format!("struct {} {{", s.name),
        ]
        .into_iter()
        .find_map(|pat| code.find(&pat).map(|i| i + pat.len()))
        .unwrap_or_else(|| panic!("the header does not define struct {}", s.name));
        let body = &code[open..open + code[open..].find('}').unwrap()];
        let c_fields: Vec<&str> = body
            .split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()
            })
            .collect();
        let rust_fields: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
        assert_eq!(c_fields, rust_fields, "fields of {}", s.name);
    }
}

#[test]
fn c_header_defines_the_same_constants() {
    let code = header_code();
    let c: BTreeSet<&str> = code
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|name| !name.contains('(') && !matches!(*name, "REEFKNOT_PLUGIN_H" | "RK_EXPORT"))
        .collect();
    let rust: BTreeSet<&str> = CONSTANTS.iter().map(|(n, _)| *n).collect();
    assert_eq!(c, rust);
}

#[test]
fn growable_structs_start_with_their_size_and_have_no_padding() {
    for s in LAYOUTS {
        let fields: usize = s.fields.iter().map(|f| f.size).sum();
        assert_eq!(fields, s.size, "{} has implicit padding", s.name);
        if !matches!(s.name, "RkStr" | "RkAbiVersion") {
            assert_eq!(
                s.fields[0].name, "size",
                "{} must start with its size",
                s.name
            );
            assert_eq!(s.fields[0].offset, 0);
        }
    }
}
