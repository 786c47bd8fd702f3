//! The watchdog: a small process, started by `merge`, that removes the partial output
//! when the merging process dies without removing it itself.
//!
//! A merge's partial folder and lock file are removed by the merge on an error and by
//! the signal thread on SIGINT, SIGTERM and SIGHUP. A process that dies outright
//! cannot: a plugin that crashes it, `kill -9`, the out-of-memory killer. So `merge`
//! starts `reefknot watch-outputs` (this binary, a hidden command) with a pipe on its
//! standard input and tells it of every path the engine registers and unregisters
//! (`reefknot_engine::watch_outputs`): `+PATH\0` and `-PATH\0`. When the pipe closes
//! (the merging process ended, however it ended) the watchdog removes what is still
//! registered and exits, which closes its standard output: the merging process's crash
//! handler waits for that before it exits (see `reefknot_plugins::contain_crashes`), so
//! the exit code is seen only once nothing is left behind.
//!
//! Starting the watchdog costs a few milliseconds; when it cannot be started the merge
//! runs without it (with a debug line), as it did before there was one.

use std::collections::BTreeSet;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The running watchdog: kept for the life of the process.
struct Watchdog {
    _child: Child,
    to: Mutex<ChildStdin>,
}

static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();

/// Starts the watchdog (once) and routes the engine's output registrations and the
/// plugin crash handler to it.
pub(crate) fn start() {
    WATCHDOG.get_or_init(|| match spawn() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!("no watchdog for the partial output: {e}");
            None
        }
    });
    let Some(Some(_)) = WATCHDOG.get() else {
        return;
    };
    reefknot_engine::watch_outputs(|change| {
        let Some(Some(w)) = WATCHDOG.get() else {
            return;
        };
        let (sign, path) = match change {
            reefknot_engine::OutputChange::Added(p) => (b'+', p),
            reefknot_engine::OutputChange::Removed(p) => (b'-', p),
        };
        let mut line = vec![sign];
        line.extend_from_slice(path.as_os_str().as_encoded_bytes());
        line.push(0);
        let mut to = w.to.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = to.write_all(&line) {
            tracing::debug!("the watchdog is gone: {e}");
        }
    });
}

fn spawn() -> std::io::Result<Watchdog> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("watch-outputs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let to = child.stdin.take().expect("piped");
    let from = child.stdout.take().expect("piped");
    #[cfg(unix)]
    {
        use std::os::fd::{AsRawFd as _, IntoRawFd as _};
        reefknot_plugins::contain_crashes(Some(reefknot_plugins::Watchdog {
            send: to.as_raw_fd(),
            // Owned by the crash handler from now on: it reads it to the end.
            done: from.into_raw_fd(),
        }));
    }
    #[cfg(not(unix))]
    drop(from);
    Ok(Watchdog {
        _child: child,
        to: Mutex::new(to),
    })
}

/// `reefknot watch-outputs`: the watchdog's side. Reads registrations from standard
/// input until it closes, then removes every path still registered.
pub(crate) fn run() {
    // A terminal's Ctrl-C reaches the whole process group: the watchdog outlives it,
    // to clean up after the merge whatever the merge does about it.
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            let _ = signal_hook::flag::register(signal, std::sync::Arc::clone(&flag));
        }
    }
    let mut listed = BTreeSet::new();
    let mut input = std::io::stdin().lock();
    let mut record = Vec::new();
    loop {
        record.clear();
        match input.read_until(0, &mut record) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if record.last() != Some(&0) || record.len() < 2 {
            break;
        }
        let path = PathBuf::from(os_string(&record[1..record.len() - 1]));
        match record[0] {
            b'+' => {
                listed.insert(path);
            }
            b'-' => {
                listed.remove(&path);
            }
            _ => break,
        }
    }
    for path in listed {
        remove(&path);
    }
}

/// The path a registration names (the merging process wrote its bytes, on Unix the
/// path's own bytes).
fn os_string(bytes: &[u8]) -> std::ffi::OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        std::ffi::OsStr::from_bytes(bytes).to_os_string()
    }
    #[cfg(not(unix))]
    {
        std::ffi::OsString::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Removes a partial folder or a lock file. Threads of the dead process may have
/// created a file in the folder while it was being emptied, so it is tried again.
fn remove(path: &std::path::Path) {
    for _ in 0..50 {
        let gone = match std::fs::symlink_metadata(path) {
            Err(_) => true,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
            Ok(_) => std::fs::remove_file(path).is_ok(),
        };
        if gone {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!(
        "warning: could not remove the partial output {}",
        path.display()
    );
}
