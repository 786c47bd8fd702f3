//! Portable binaries that still use the machine's vector units.
//!
//! reefknot is built for the baseline of its target (x86-64: SSE2), so a binary runs on
//! any CPU of the architecture. The hot loops are written once, as plain Rust the
//! compiler vectorises, and [`multiversion!`] compiles each of them several times: for
//! the baseline, with AVX2 (and FMA, BMI, F16C) enabled, and with AVX-512 (F, BW, VL,
//! DQ) enabled. At run time the best level the CPU supports is picked once per process
//! ([`level`]) and every call goes to that version. Each version is the same source
//! compiled with other instructions allowed: integer and IEEE float arithmetic give the
//! same bits whatever the vector width (Rust never fuses a multiply and an add into an
//! FMA on its own), which the tests check by forcing each level in turn ([`force`]).
//!
//! On aarch64 the baseline already has NEON, which the compiler uses; there is one
//! level. `REEFKNOT_SIMD=portable|avx2|avx512` caps the level (for measurements, or to
//! rule the vector paths out); a level the CPU lacks is never used.
//!
//! This crate is the one place `unsafe` is needed for it: calling a function compiled
//! for features the caller was not compiled for is `unsafe`, and the macro does so only
//! for the level [`level`] found the CPU to support.

use std::sync::atomic::{AtomicU8, Ordering};

/// A set of vector instructions a version of a function is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// The target's baseline (x86-64: SSE2; aarch64: NEON).
    Portable = 1,
    /// x86-64 with AVX2, FMA, BMI1/2, LZCNT, POPCNT and F16C.
    Avx2 = 2,
    /// x86-64 with AVX-512 F, BW, VL and DQ, and everything of [`Level::Avx2`].
    Avx512 = 3,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The name `REEFKNOT_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    fn from_u8(x: u8) -> Option<Level> {
        Level::ALL.into_iter().find(|l| *l as u8 == x)
    }

    /// Whether this CPU can run code of this level.
    pub fn supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                    && std::arch::is_x86_feature_detected!("lzcnt")
                    && std::arch::is_x86_feature_detected!("popcnt")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The level in use: 0 until detected.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU supports, capped by `REEFKNOT_SIMD`; found once.
#[inline]
pub fn level() -> Level {
    match Level::from_u8(LEVEL.load(Ordering::Relaxed)) {
        Some(l) => l,
        None => {
            let l = detect();
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

fn detect() -> Level {
    let cap = std::env::var("REEFKNOT_SIMD")
        .ok()
        .and_then(|v| Level::ALL.into_iter().find(|l| l.name() == v.trim()))
        .unwrap_or(Level::Avx512);
    Level::ALL
        .into_iter()
        .rev()
        .find(|l| *l <= cap && l.supported())
        .unwrap_or(Level::Portable)
}

/// Uses `level` from now on, in the whole process, if the CPU supports it (tests run
/// every path in turn with it); `None` returns to the detected level. Returns the level
/// now in use.
pub fn force(level: Option<Level>) -> Level {
    let l = match level {
        Some(l) if l.supported() => l,
        Some(_) => self::level(),
        None => detect(),
    };
    LEVEL.store(l as u8, Ordering::Relaxed);
    l
}

/// Runs `f` at the portable level, then at every other level this CPU supports, and
/// panics naming the first level whose result differs; returns the portable result.
/// For tests: the levels are switched for the whole process ([`force`]), and the
/// detected level is restored afterwards.
pub fn at_every_level<T: PartialEq>(mut f: impl FnMut() -> T) -> T {
    force(Some(Level::Portable));
    let want = f();
    for level in Level::ALL {
        if force(Some(level)) == level && f() != want {
            force(None);
            panic!("{level:?} differs from the portable code");
        }
    }
    force(None);
    want
}

/// Defines a function compiled once per [`Level`] and dispatched at run time:
///
/// ```
/// reefknot_simd::multiversion! {
///     /// Adds `b` to `a`.
///     pub fn add(a: &mut [f32], b: &[f32]) {
///         for (x, y) in a.iter_mut().zip(b) {
///             *x += *y;
///         }
///     }
/// }
/// let mut a = [1.0, 2.0];
/// add(&mut a, &[0.5, 0.5]);
/// assert_eq!(a, [1.5, 2.5]);
/// ```
///
/// The body is an ordinary safe function body; functions it calls are compiled into
/// each version when they are inlined (mark them `#[inline]`).
///
/// `multiversion! { max_avx2: fn ... }` compiles no AVX-512 version: the AVX2 one runs
/// on AVX-512 machines too. Measured on an AMD EPYC (Zen 4) VM, the bf16 conversions
/// run slower with 512-bit vectors (task arithmetic 1.34 s against 0.86 s), while the
/// 64-bit multiplies of the random draws run much faster (AVX2 has none).
#[macro_export]
macro_rules! multiversion {
    (
        max_avx2:
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $crate::multiversion!(@levels [] $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? $body);
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $crate::multiversion!(@levels [avx512] $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? $body);
    };
    (
        @levels [$($wide:ident)?]
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                $crate::multiversion!(@version [$($wide)?] [$($arg: $ty),*] [$(-> $ret)?]);
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::level() >= $crate::Level::Avx2 {
                    #[allow(unsafe_code)]
                    // SAFETY: `level()` is Avx2 or above only when the CPU has every
                    // feature `avx2` is compiled with (`Level::supported`).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
    (@version [] [$($arg:ident : $ty:ty),*] [$($ret:tt)*]) => {};
    (@version [avx512] [$($arg:ident : $ty:ty),*] [$($ret:tt)*]) => {
        #[target_feature(
            enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c"
        )]
        fn avx512($($arg: $ty),*) $($ret)* {
            body($($arg),*)
        }
        if $crate::level() == $crate::Level::Avx512 {
            #[allow(unsafe_code)]
            // SAFETY: `level()` is Avx512 only when the CPU has every feature `avx512`
            // is compiled with (`Level::supported`).
            return unsafe { avx512($($arg),*) };
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        fn sum(x: &[u32]) -> u64 {
            x.iter().map(|&v| u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15)).fold(0, u64::wrapping_add)
        }
    }

    #[test]
    fn every_supported_level_gives_the_same_result() {
        let x: Vec<u32> = (0..1000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let want = {
            force(Some(Level::Portable));
            sum(&x)
        };
        for l in Level::ALL {
            let used = force(Some(l));
            assert!(used <= l.max(Level::Portable));
            assert_eq!(sum(&x), want, "{l:?}");
        }
        force(None);
        assert!(Level::Portable.supported());
        assert_eq!(at_every_level(|| sum(&x)), want);
        // A result that depends on the level is caught (where the CPU has a second
        // level to run). In this one test: levels are switched for the whole process.
        if Level::Avx2.supported() {
            let caught = std::panic::catch_unwind(|| at_every_level(level));
            assert!(caught.is_err(), "the level itself differs between levels");
        }
    }
}
