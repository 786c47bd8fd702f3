//! Isolation: plugin calls run in helper processes over shared memory, so that a crash,
//! a hang or memory corruption inside a plugin fails the merge with an error instead of
//! taking it down (`reefknot merge --isolate-plugins`).
//!
//! Each worker thread of the merge gets its own helper per library (started on its
//! first call, so the merge keeps its parallelism): this binary again, as
//! `reefknot plugin-host LIB SHA256 SHM`, which loads and validates the library (and
//! checks it is the build the merge loaded) and serves calls. A call's inputs and
//! outputs live in a file both processes map (in `/dev/shm` where there is one,
//! unlinked once the helper has opened it); the request (operator, types, range, shape,
//! layer, tensor, arguments) and the reply (status, message) go over the helper's
//! standard input and output. The host waits for the reply at most the timeout; a
//! helper that does not answer in time is killed, one that dies is reported with its
//! signal, and either fails the merge through the normal error path (the partial output
//! is removed, exit code 1).
//!
//! Both sides compute the shared file's layout from the request ([`layout`]), so no
//! offset crosses the pipe. The host touches the map only between a reply and the next
//! request, the helper only between a request and its reply: the pipe orders them.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use memmap2::MmapMut;
use reefknot_plugin_api::{RK_PARAM_BOOL, RK_PARAM_CHOICE, RK_PARAM_NUMBER, RK_STATUS_OK};

use super::{ArgBlock, CallViews, OutView};

/// How the host starts helpers.
#[derive(Clone, Debug)]
pub struct Isolation {
    /// The program to run (this binary).
    pub program: PathBuf,
    /// Its arguments before the library, the hash and the shared file
    /// (`["plugin-host"]`).
    pub args: Vec<String>,
    /// The longest a call may take before its helper is killed.
    pub timeout: Duration,
}

/// Where one operator's isolated calls go.
#[derive(Debug)]
pub(crate) struct Target {
    pub isolation: Isolation,
    pub library: PathBuf,
    pub sha256: String,
    /// The operator's index in the plugin's table.
    pub index: usize,
}

/// Presence bits of a request: which regions of the shared file it uses.
const STACK: u32 = 1;
const SIGN: u32 = 2;
const DELTA: u32 = 4;
const BASE: u32 = 8;
const FISHER: u32 = 16;
const TASKS: u32 = 32;
const OUT_STACK: u32 = 64;
const OUT_SIGN: u32 = 128;
const OUT_DELTA: u32 = 256;

/// The regions of the shared file in `f32`s, in this order: weights, then each
/// present region of [`STACK`]..[`OUT_DELTA`]. Returns (start, length) per region (the
/// weights first) and the total.
fn layout(models: usize, len: usize, present: u32) -> ([(usize, usize); 10], usize) {
    let sizes = [
        (u32::MAX, models),
        (STACK, models * len),
        (SIGN, len),
        (DELTA, len),
        (BASE, len),
        (FISHER, models * len),
        (TASKS, models * len),
        (OUT_STACK, models * len),
        (OUT_SIGN, len),
        (OUT_DELTA, len),
    ];
    let mut out = [(0, 0); 10];
    let mut at = 0;
    for (k, (bit, n)) in sizes.into_iter().enumerate() {
        let n = if bit == u32::MAX || present & bit != 0 {
            n
        } else {
            0
        };
        out[k] = (at, n);
        at += n;
    }
    (out, at)
}

/// A little-endian writer of a request.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// Its reader.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a truncated request".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }
}

/// A running helper and its end of the shared file.
struct Helper {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    file: File,
    map: Option<MmapMut>,
    /// Bytes of the shared file.
    size: usize,
}

impl Helper {
    fn start(target: &Target) -> Result<Helper, String> {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let shm = tempfile::Builder::new()
            .prefix("reefknot-plugin-")
            .tempfile_in(&dir)
            .map_err(|e| format!("cannot create its shared memory in {}: {e}", dir.display()))?;
        let mut child = Command::new(&target.isolation.program)
            .args(&target.isolation.args)
            .arg(&target.library)
            .arg(&target.sha256)
            .arg(shm.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start its helper process {}: {e}",
                    target.isolation.program.display()
                )
            })?;
        let to = child.stdin.take().expect("piped");
        let from = BufReader::new(child.stdout.take().expect("piped"));
        let mut helper = Helper {
            child,
            to,
            from,
            file: shm
                .reopen()
                .map_err(|e| format!("its shared memory: {e}"))?,
            map: None,
            size: 0,
        };
        // The helper has opened the file once it answers; then no name is left behind.
        let (status, message) = helper.reply(target)?;
        if status != RK_STATUS_OK {
            return Err(format!("its helper process could not start: {message}"));
        }
        drop(shm);
        Ok(helper)
    }

    /// Grows the shared file to hold `bytes` and maps it.
    fn reserve(&mut self, bytes: usize) -> Result<&mut [f32], String> {
        if self.map.is_none() || self.size < bytes {
            let size = bytes.max(1 << 16).next_power_of_two();
            self.map = None;
            self.file
                .set_len(size as u64)
                .map_err(|e| format!("cannot grow its shared memory to {size} bytes: {e}"))?;
            // SAFETY: the file is this merge's own (created with a unique name, unlinked
            // once the helper opened it), so only this process and its helper use it. The
            // helper writes the map only between a request and its reply, while this
            // process waits for the reply and does not touch the map; the pipe orders the
            // two. Its length is set just above and never shrinks while mapped.
            let map = unsafe { MmapMut::map_mut(&self.file) }
                .map_err(|e| format!("cannot map its shared memory: {e}"))?;
            self.map = Some(map);
            self.size = size;
        }
        Ok(&mut floats(self.map.as_mut().expect("mapped just above"))[..bytes / 4])
    }

    /// Waits for the helper's reply, at most the timeout.
    fn reply(&mut self, target: &Target) -> Result<(u32, String), String> {
        let timeout = target.isolation.timeout;
        if self.from.buffer().is_empty() {
            let mut poll = libc::pollfd {
                fd: self.from.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            loop {
                // SAFETY: one pollfd on the stack, the descriptor of our open pipe.
                let ready = unsafe { libc::poll(&mut poll, 1, ms) };
                if ready > 0 {
                    break;
                }
                if ready == 0 {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "it did not return within {:.1} s (--plugin-timeout), so its helper \
                         process was stopped",
                        timeout.as_secs_f64()
                    ));
                }
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    return Err("waiting for its helper process failed".into());
                }
            }
        }
        let mut head = [0u8; 8];
        if self.from.read_exact(&mut head).is_err() {
            return Err(self.died());
        }
        let status = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let n = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
        let mut message = vec![0u8; n];
        if self.from.read_exact(&mut message).is_err() {
            return Err(self.died());
        }
        Ok((status, String::from_utf8_lossy(&message).into_owned()))
    }

    /// Why the helper is gone.
    fn died(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt as _;
                    if let Some(signal) = status.signal() {
                        return format!(
                            "it crashed its helper process ({}); the merge stops, nothing \
                             of the plugin's call is kept",
                            signal_name(signal)
                        );
                    }
                }
                format!("its helper process ended ({status}) during the call")
            }
            Err(e) => format!("its helper process is gone ({e})"),
        }
    }
}

/// The whole map as `f32`s (its length rounded down to whole floats).
fn floats(map: &mut MmapMut) -> &mut [f32] {
    let ptr = map.as_mut_ptr();
    assert!(
        (ptr as usize).is_multiple_of(std::mem::align_of::<f32>()),
        "a memory map is page-aligned"
    );
    // SAFETY: the map is page-aligned (checked), `len / 4` floats lie within it, every
    // bit pattern is a valid f32, and the returned slice borrows the map mutably, so
    // nothing in this process aliases it; the other process of the pair touches it only
    // while this one waits on the pipe (see the module's documentation).
    unsafe { std::slice::from_raw_parts_mut(ptr.cast::<f32>(), map.len() / 4) }
}

fn signal_name(signal: i32) -> String {
    let what = match signal {
        libc::SIGSEGV => "SIGSEGV, an invalid memory access",
        libc::SIGBUS => "SIGBUS, a bus error",
        libc::SIGILL => "SIGILL, an illegal instruction",
        libc::SIGFPE => "SIGFPE, an arithmetic fault",
        libc::SIGABRT => "SIGABRT: it called abort()",
        libc::SIGKILL => "SIGKILL: killed",
        _ => return format!("signal {signal}"),
    };
    what.to_string()
}

std::thread_local! {
    /// This thread's helpers, one per (library, hash).
    static HELPERS: std::cell::RefCell<Vec<(PathBuf, Helper)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs one call in this thread's helper for `target`'s library: writes the inputs
/// into the shared file, sends the request, waits for the reply and copies the outputs
/// back. Returns the call's status and message, or why the helper failed.
pub(crate) fn invoke(
    target: &Target,
    views: &CallViews<'_>,
    out: OutView<'_>,
) -> Result<(u32, String), String> {
    HELPERS.with_borrow_mut(|helpers| {
        let i = match helpers.iter().position(|(lib, _)| *lib == target.library) {
            Some(i) => i,
            None => {
                helpers.push((target.library.clone(), Helper::start(target)?));
                helpers.len() - 1
            }
        };
        let result = call(&mut helpers[i].1, target, views, out);
        if result.is_err() {
            // A helper that failed is not used again.
            let (_, mut gone) = helpers.swap_remove(i);
            let _ = gone.child.kill();
            let _ = gone.child.wait();
        }
        result
    })
}

fn call(
    helper: &mut Helper,
    target: &Target,
    views: &CallViews<'_>,
    out: OutView<'_>,
) -> Result<(u32, String), String> {
    let (models, len) = (views.models, views.len);
    let mut present = 0;
    for (bit, on) in [
        (STACK, views.stack.is_some()),
        (SIGN, views.sign.is_some()),
        (DELTA, views.delta.is_some()),
        (BASE, views.base.is_some()),
        (FISHER, views.fisher.is_some()),
        (TASKS, views.tasks.is_some()),
    ] {
        if on {
            present |= bit;
        }
    }
    present |= match &out {
        OutView::Stack(_) => OUT_STACK,
        OutView::Sign(_) => OUT_SIGN,
        OutView::Delta(_) => OUT_DELTA,
        OutView::Voted { .. } => OUT_STACK | OUT_SIGN,
    };
    let (regions, total) = layout(models, len, present);
    let map = helper.reserve(total * 4)?;
    let put = |map: &mut [f32], (start, n): (usize, usize), from: &[f32]| {
        map[start..start + n].copy_from_slice(&from[..n]);
    };
    put(map, regions[0], views.weights);
    for (k, view) in [
        views.stack,
        views.sign,
        views.delta,
        views.base,
        views.fisher,
        views.tasks,
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(v) = view {
            put(map, regions[k + 1], v);
        }
    }
    let mut e = Enc::default();
    e.u64(helper.size as u64);
    e.u32(target.index as u32);
    e.u32(views.input);
    e.u32(views.output);
    e.u64(views.seed);
    e.u64(views.offset);
    e.u64(views.numel);
    e.u64(len as u64);
    e.u64(models as u64);
    e.u64(views.layer.map_or(u64::MAX, |l| l as u64));
    e.u32(present);
    e.u32(views.shape.len() as u32);
    for &d in views.shape {
        e.u64(d);
    }
    e.bytes(views.tensor.as_bytes());
    views.args.encode(&mut e);
    let mut frame = Vec::with_capacity(e.0.len() + 4);
    frame.extend_from_slice(&(e.0.len() as u32).to_le_bytes());
    frame.extend_from_slice(&e.0);
    if helper.to.write_all(&frame).is_err() {
        return Err(helper.died());
    }
    let (status, message) = helper.reply(target)?;
    if status == RK_STATUS_OK {
        let map = &floats(helper.map.as_mut().expect("mapped"))[..total];
        let back = |(start, n): (usize, usize), to: &mut [f32]| {
            to[..n].copy_from_slice(&map[start..start + n]);
        };
        match out {
            OutView::Stack(s) => back(regions[7], s),
            OutView::Sign(s) => back(regions[8], s),
            OutView::Delta(d) => back(regions[9], d),
            OutView::Voted { stack, sign } => {
                back(regions[7], stack);
                back(regions[8], sign);
            }
        }
    }
    Ok((status, message))
}

impl ArgBlock {
    /// The arguments, for a request.
    fn encode(&self, e: &mut Enc) {
        e.u32(self.args.len() as u32);
        for a in &self.args {
            e.u32(a.kind);
            // SAFETY: the block's strings and numbers are its own (or static) data.
            let name = unsafe { super::view_bytes(a.name) };
            e.bytes(name);
            match a.kind {
                RK_PARAM_NUMBER => {
                    e.u32(a.number_count as u32);
                    // SAFETY: `numbers` points at `number_count` doubles of the block.
                    let xs = unsafe { std::slice::from_raw_parts(a.numbers, a.number_count) };
                    for &x in xs {
                        e.u64(x.to_bits());
                    }
                }
                RK_PARAM_BOOL => e.u32(a.boolean),
                // SAFETY: as above.
                _ => e.bytes(unsafe { super::view_bytes(a.text) }),
            }
        }
    }
}

/// An argument as a request carries it.
enum Decoded {
    Numbers(Vec<f64>),
    Bool(bool),
    Text(String),
}

impl ArgBlock {
    /// The ABI form of arguments decoded from a request: `(name, RK_PARAM_*, value)`.
    fn decoded(args: Vec<(String, u32, Decoded)>) -> ArgBlock {
        let mut block = ArgBlock {
            args: Vec::with_capacity(args.len()),
            _numbers: Vec::new(),
            _texts: Vec::new(),
        };
        for (name, kind, value) in args {
            let mut arg = reefknot_plugin_api::RkArg {
                size: std::mem::size_of::<reefknot_plugin_api::RkArg>(),
                name: super::view(&name),
                kind,
                boolean: 0,
                numbers: std::ptr::null(),
                number_count: 0,
                text: reefknot_plugin_api::RkStr::EMPTY,
            };
            block._texts.push(name);
            match value {
                Decoded::Numbers(xs) => {
                    arg.numbers = xs.as_ptr();
                    arg.number_count = xs.len();
                    block._numbers.push(xs);
                }
                Decoded::Bool(b) => arg.boolean = u32::from(b),
                Decoded::Text(t) => {
                    arg.text = super::view(&t);
                    block._texts.push(t);
                }
            }
            block.args.push(arg);
        }
        block
    }
}

/// `reefknot plugin-host LIB SHA256 SHM`: the helper's side. Loads the library, checks
/// its hash, opens the shared file, then answers requests until its input closes.
pub fn serve(library: &Path, sha256: &str, shm: &Path) -> Result<(), String> {
    // A helper never outlives its merge, even when a call hangs and the merge is
    // killed: it ends as soon as it is orphaned.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(1);
        }
    });
    let mut out = std::io::stdout().lock();
    let answer = |out: &mut std::io::StdoutLock<'_>, status: u32, message: &str| {
        let mut frame = Vec::with_capacity(8 + message.len());
        frame.extend_from_slice(&status.to_le_bytes());
        frame.extend_from_slice(&(message.len() as u32).to_le_bytes());
        frame.extend_from_slice(message.as_bytes());
        out.write_all(&frame).and_then(|()| out.flush())
    };
    let ready = (|| {
        let plugin = crate::load(library).map_err(|e| e.to_string())?;
        if plugin.sha256 != sha256 {
            return Err(format!(
                "{} changed since the merge loaded it (sha256 {} now, {sha256} then)",
                library.display(),
                plugin.sha256
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(shm)
            .map_err(|e| format!("cannot open the shared memory {}: {e}", shm.display()))?;
        Ok((plugin, file))
    })();
    let (plugin, file) = match ready {
        Ok(x) => x,
        Err(message) => {
            let _ = answer(&mut out, 1, &message);
            return Err(message);
        }
    };
    answer(&mut out, RK_STATUS_OK, "").map_err(|e| e.to_string())?;
    let mut input = std::io::stdin().lock();
    let mut map: Option<MmapMut> = None;
    let mut error = vec![0u8; 4096];
    loop {
        let mut head = [0u8; 4];
        if input.read_exact(&mut head).is_err() {
            return Ok(());
        }
        let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
        input.read_exact(&mut body).map_err(|e| e.to_string())?;
        let (status, message) = serve_one(&plugin, &file, &mut map, &body, &mut error)?;
        answer(&mut out, status, &message).map_err(|e| e.to_string())?;
    }
}

/// Decodes one request, runs it on the shared file, and returns the status.
fn serve_one(
    plugin: &crate::Plugin,
    file: &File,
    map: &mut Option<MmapMut>,
    body: &[u8],
    error: &mut [u8],
) -> Result<(u32, String), String> {
    let mut d = Dec(body);
    let size = d.u64()? as usize;
    let index = d.u32()? as usize;
    let (input, output) = (d.u32()?, d.u32()?);
    let (seed, offset, numel) = (d.u64()?, d.u64()?, d.u64()?);
    let (len, models) = (d.u64()? as usize, d.u64()? as usize);
    let layer = match d.u64()? {
        u64::MAX => None,
        l => Some(l as usize),
    };
    let present = d.u32()?;
    let ndim = d.u32()? as usize;
    let shape: Vec<u64> = (0..ndim).map(|_| d.u64()).collect::<Result<_, _>>()?;
    let tensor = d.text()?;
    let argc = d.u32()? as usize;
    let mut decoded = Vec::with_capacity(argc);
    for _ in 0..argc {
        let kind = d.u32()?;
        let name = d.text()?;
        let value = match kind {
            RK_PARAM_NUMBER => {
                let n = d.u32()? as usize;
                let xs = (0..n)
                    .map(|_| d.u64().map(f64::from_bits))
                    .collect::<Result<Vec<f64>, _>>()?;
                Decoded::Numbers(xs)
            }
            RK_PARAM_BOOL => Decoded::Bool(d.u32()? != 0),
            RK_PARAM_CHOICE => Decoded::Text(d.text()?),
            _ => Decoded::Text(d.text()?),
        };
        decoded.push((name, kind, value));
    }
    let op = plugin
        .operators
        .get(index)
        .ok_or_else(|| format!("no operator {index} in the plugin"))?;
    if map.as_ref().is_none_or(|m| m.len() != size) {
        *map = None;
        // SAFETY: the host made this file for this helper alone and sized it before the
        // request; the host leaves the map alone until the reply, and grows the file
        // only between calls (the next request then carries the new size).
        *map = Some(unsafe { MmapMut::map_mut(file) }.map_err(|e| e.to_string())?);
    }
    let all = floats(map.as_mut().expect("mapped just above"));
    let (regions, total) = layout(models, len, present);
    if total > all.len() {
        return Err("a request beyond the shared memory".into());
    }
    // The inputs and the outputs are disjoint ranges of the map, in layout order.
    let (inputs, outputs) = all[..total].split_at_mut(regions[7].0);
    let region = |(start, n): (usize, usize)| &inputs[start..start + n];
    let arg_block = ArgBlock::decoded(decoded);
    let has = |bit: u32| present & bit != 0;
    let views = CallViews {
        tensor: &tensor,
        seed,
        offset,
        numel,
        len,
        models,
        input,
        output,
        stack: has(STACK).then(|| region(regions[1])),
        sign: has(SIGN).then(|| region(regions[2])),
        delta: has(DELTA).then(|| region(regions[3])),
        base: has(BASE).then(|| region(regions[4])),
        fisher: has(FISHER).then(|| region(regions[5])),
        weights: region(regions[0]),
        args: &arg_block,
        shape: &shape,
        layer,
        tasks: has(TASKS).then(|| region(regions[6])),
    };
    let (out_stack, rest) = outputs.split_at_mut(regions[7].1);
    let (out_sign, out_delta) = rest.split_at_mut(regions[8].1);
    let out = if has(OUT_STACK) && has(OUT_SIGN) {
        OutView::Voted {
            stack: out_stack,
            sign: out_sign,
        }
    } else if has(OUT_STACK) {
        OutView::Stack(out_stack)
    } else if has(OUT_SIGN) {
        OutView::Sign(out_sign)
    } else {
        OutView::Delta(out_delta)
    };
    let site = super::Site {
        operator: op.qualified(),
        plugin: plugin.name,
        library: "",
        tensor: &tensor,
    };
    let (call, data) = op.entry();
    let (status, n) = super::invoke(call, data, &site, &views, out, error);
    let message = String::from_utf8_lossy(&error[..n]).into_owned();
    Ok((status, message))
}
