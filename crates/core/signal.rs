//! SIGINT and SIGTERM end a run cleanly: reading stops, what was read and decided is written and
//! flushed, `--stats` is printed, and the exit status is 128 + the signal number (130, 143).

use std::io::{self, Read};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// The signal that asked the run to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// A reader that ends (reads as EOF) once a stop signal has arrived, so the transform finishes
/// the data it holds and returns normally.
pub struct StopOnSignal<R>(pub R);

impl<R: Read> Read for StopOnSignal<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if received().is_some() {
                return Ok(0);
            }
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
}
