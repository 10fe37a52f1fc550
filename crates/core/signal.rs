//! SIGINT and SIGTERM end a run cleanly: reading stops (after what a pipe already holds), what was
//! read is decided, written and flushed, `--stats` is printed, and the exit status is 128 + the
//! signal number (130, 143).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::Relaxed);
}

/// Installs the handlers, without `SA_RESTART`, so a blocked `read` returns `EINTR` and the
/// reader below sees the signal at once.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is given a zeroed, then filled, `struct sigaction` that lives for
        // the call; the handler only performs an atomic store, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Set by SIGHUP, cleared by the thread that reloads.
static HANGUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_hangup_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    HANGUP.store(true, Ordering::Relaxed);
}

/// Runs `reload` on a background thread after each SIGHUP (checked every 100 ms; signals that
/// arrive during a reload make one more), and, when `changed` is given, whenever it says so
/// (asked every second: `--watch-rules`). `reload` is told which. The handler does not stop the
/// run, and, installed with `SA_RESTART`, does not interrupt reads.
pub fn on_hangup(
    reload: impl Fn(Reload) + Send + 'static,
    mut changed: Option<Box<dyn FnMut() -> bool + Send>>,
) {
    // SAFETY: as in `install`: a filled `struct sigaction` that lives for the call, and a
    // handler that only performs an atomic store.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_hangup_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("kmsguard-reload".into())
        .spawn(move || {
            for tick in 1u64.. {
                std::thread::sleep(Duration::from_millis(100));
                if HANGUP.swap(false, Ordering::Relaxed) {
                    // The watcher takes the files as they are before this load reads them, so
                    // it does not load them again next second; a later edit is still a change.
                    if let Some(changed) = changed.as_mut() {
                        changed();
                    }
                    reload(Reload::Hangup);
                } else if tick % 10 == 0 && changed.as_mut().is_some_and(|changed| changed()) {
                    reload(Reload::Changed);
                }
            }
        })
        .expect("spawn the reload thread");
}

/// Why the rules are reloaded.
#[derive(Clone, Copy, Debug)]
pub enum Reload {
    /// A SIGHUP.
    Hangup,
    /// `--watch-rules` saw a rule file change.
    Changed,
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reload::Hangup => "SIGHUP",
            Reload::Changed => "rules changed",
        })
    }
}

/// The signal that asked the run to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// The longest a stopping run keeps draining a pipe, and the most it reads from it meanwhile.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: u64 = 64 << 20;

/// A reader that ends (reads as EOF) once a stop signal has arrived, so the transform finishes
/// the data it holds and returns normally.
///
/// From a regular file it stops at once. From a pipe or a socket it first reads what is already
/// there, without waiting for more (for at most 2 s or 64 MiB): a shipper that closes kmsguard's
/// stdin and signals it at once, as Fluentd's exec_filter does at shutdown, loses nothing it wrote.
pub struct StopOnSignal<R> {
    inner: R,
    /// The descriptor to poll while draining; `None` for a regular file.
    pipe: Option<RawFd>,
    drain: Option<(Instant, u64)>,
}

impl<R: Read + AsFd> StopOnSignal<R> {
    /// Wraps `inner`, looking at what kind of file it reads.
    pub fn new(inner: R) -> StopOnSignal<R> {
        let fd = inner.as_fd().as_raw_fd();
        // SAFETY: `fstat` fills the zeroed `stat` we own, for a descriptor `inner` keeps open.
        let regular = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
        };
        StopOnSignal { inner, pipe: (!regular).then_some(fd), drain: None }
    }

    /// Whether the pipe holds data (or its end) now.
    fn ready(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one `pollfd` we own, a zero timeout: `poll` only fills `revents`.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }
}

impl<R: Read + AsFd> Read for StopOnSignal<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if received().is_some() {
                let Some(fd) = self.pipe else { return Ok(0) };
                let (since, read) = *self.drain.get_or_insert((Instant::now(), 0));
                if since.elapsed() > DRAIN_TIME || read > DRAIN_BYTES || !Self::ready(fd) {
                    return Ok(0);
                }
                let n = self.inner.read(buf)?;
                self.drain = Some((since, read + n as u64));
                return Ok(n);
            }
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
}
