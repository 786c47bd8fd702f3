//! Crash containment: a fault inside a plugin call becomes an error message and exit
//! code 1, with the partial output removed, instead of a silent death by signal.
//!
//! Every plugin call marks its thread with the call's [`Site`] (plugin, operator,
//! tensor) for its duration. [`contain_crashes`] installs a handler for the signals a
//! faulting call raises (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT; on the thread's
//! alternate stack, so a plugin's stack overflow is caught too). On a thread inside a
//! plugin call the handler writes the message with `write(2)` only, closes its pipe to
//! the watchdog (which then removes the partial output) and waits, at most
//! [`WATCHDOG_WAIT_MS`], for the watchdog to finish, then `_exit(1)`s. On any other
//! thread it puts back the action it replaced and returns: the fault repeats and meets
//! that action (Rust's stack-overflow report, a core dump), so reefknot's own faults
//! are not disguised as a plugin's.
//!
//! Everything the handler touches is async-signal-safe: a `const` thread-local
//! pointer, atomics, `write`, `close`, `poll`, `read`, `sigaction` and `_exit`; no
//! allocation and no lock.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use super::Site;

/// How long the handler waits for the watchdog to remove the partial output.
const WATCHDOG_WAIT_MS: i32 = 10_000;

/// The signals a fault in a call raises.
const SIGNALS: [(libc::c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV, an invalid memory access"),
    (libc::SIGBUS, "SIGBUS, a bus error"),
    (libc::SIGILL, "SIGILL, an illegal instruction"),
    (libc::SIGFPE, "SIGFPE, an arithmetic fault"),
    (libc::SIGABRT, "SIGABRT: it called abort()"),
];

/// The pipes to the command line's watchdog process.
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    /// The write end of the watchdog's standard input: closing it tells the watchdog
    /// that this process is ending.
    pub send: RawFd,
    /// The read end of the watchdog's standard output: it reaches end of file when
    /// the watchdog has removed what was left and exited. The handler owns it.
    pub done: RawFd,
}

thread_local! {
    /// The call this thread is in (null outside plugin calls).
    static CURRENT: Cell<*const Site<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Marks the thread as inside a call until dropped.
pub(crate) struct Entered {
    previous: *const Site<'static>,
}

/// Marks the calling thread as inside `site`'s call.
pub(crate) fn enter(site: &Site<'_>) -> Entered {
    let ptr = (site as *const Site<'_>).cast::<Site<'static>>();
    Entered {
        previous: CURRENT.with(|c| c.replace(ptr)),
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

static SEND: AtomicI32 = AtomicI32::new(-1);
static DONE: AtomicI32 = AtomicI32::new(-1);
static CRASHING: AtomicBool = AtomicBool::new(false);
/// The actions the handler replaced, in the order of [`SIGNALS`].
static PREVIOUS: OnceLock<[libc::sigaction; SIGNALS.len()]> = OnceLock::new();

/// Installs the crash handler (once; later calls only change the watchdog). With a
/// watchdog (a merge) the handler waits for it to remove the partial output before
/// exiting; without one (`reefknot plugin test`) it exits at once.
pub fn contain_crashes(watchdog: Option<Watchdog>) {
    if let Some(w) = watchdog {
        SEND.store(w.send, Ordering::SeqCst);
        DONE.store(w.done, Ordering::SeqCst);
    }
    PREVIOUS.get_or_init(|| {
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_fault;
        // SAFETY: an all-zero sigaction is a valid value (no handler, empty mask, no
        // flags); every one is filled in by sigaction(2) or below before use.
        let mut previous: [libc::sigaction; SIGNALS.len()] = unsafe { std::mem::zeroed() };
        for (i, (signal, _)) in SIGNALS.iter().enumerate() {
            // SAFETY: as above, then set to our handler with an empty mask.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `action.sa_mask` is ours to initialise; sigaction(2) installs a
            // handler that only does async-signal-safe work and stores the action it
            // replaces into `previous[i]`.
            unsafe {
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(*signal, &action, &mut previous[i]);
            }
        }
        previous
    });
}

/// Writes `bytes` to standard error (async-signal-safe).
fn say(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a live slice; write(2) reads at most its length.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

extern "C" fn on_fault(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let Some(index) = SIGNALS.iter().position(|(s, _)| *s == signal) else {
        return;
    };
    let site = CURRENT.with(Cell::get);
    if site.is_null() {
        // Not a plugin's fault: the action this handler replaced takes it (a
        // synchronous fault repeats when the handler returns; abort() raises again).
        if let Some(previous) = PREVIOUS.get() {
            // SAFETY: restores an action sigaction(2) itself returned.
            unsafe { libc::sigaction(signal, &previous[index], std::ptr::null_mut()) };
        }
        return;
    }
    if CRASHING.swap(true, Ordering::SeqCst) {
        // Another thread is reporting its crash and will end the process.
        loop {
            // SAFETY: pause(2) only waits.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: the pointer was set by `enter` from a `Site` that outlives the call,
    // and the call is still running on this thread (it is what faulted).
    let site = unsafe { &*site };
    say(b"Error: the operator `");
    say(site.operator.as_bytes());
    say(b"` of plugin `");
    say(site.plugin.as_bytes());
    say(b"` (");
    say(site.library.as_bytes());
    say(b") crashed on tensor `");
    say(site.tensor.as_bytes());
    say(b"`: ");
    say(SIGNALS[index].1.as_bytes());
    say(b".\n");
    let (send, done) = (SEND.load(Ordering::SeqCst), DONE.load(Ordering::SeqCst));
    if send >= 0 && done >= 0 {
        // SAFETY: the watchdog's pipes; closing ours tells it to clean up, and its
        // output reaches end of file once it has.
        unsafe { libc::close(send) };
        if wait_for_end(done) {
            say(b"The merge was stopped and its partial output removed.");
        } else {
            say(b"The merge was stopped; its hidden partial folder beside the output may be left (the next merge into the same output removes it).");
        }
    } else {
        // No merge output to look after (`reefknot plugin test`, or no watchdog).
        say(b"The run was stopped.");
    }
    say(b" A crash inside a plugin cannot be recovered from in the process: merge with --isolate-plugins to keep plugin calls in helper processes, and report it to the plugin's author.\n");
    // SAFETY: _exit(2) ends the process at once, running nothing of this one's.
    unsafe { libc::_exit(1) };
}

/// Reads `fd` to its end, for at most [`WATCHDOG_WAIT_MS`]; whether it ended.
fn wait_for_end(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        let ready = unsafe { libc::poll(&mut poll, 1, WATCHDOG_WAIT_MS) };
        if ready == 0 {
            return false;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return true,
            n if n > 0 => {}
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}
