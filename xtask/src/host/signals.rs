//! Signals turned into a flag: a long command (flash, vm) checks it between steps and stops cleanly.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// Whether one of the caught signals arrived since the last [`Interrupts::catch`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// While alive, the signals given to [`Interrupts::catch`] only set a flag; on drop their previous
/// handlers are back.
pub struct Interrupts {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl Interrupts {
    /// Catches `signals` (such as `libc::SIGINT`).
    pub fn catch(signals: &[libc::c_int]) -> Result<Interrupts> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut guard = Interrupts { old: Vec::new() };
        for &signal in signals {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler only stores to an atomic,
            // which is async-signal-safe; `old` receives the previous action, restored on drop.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &new, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("catching signal {signal}"));
                }
                guard.old.push((signal, old));
            }
        }
        Ok(guard)
    }

    pub fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for (signal, old) in self.old.drain(..).rev() {
            // SAFETY: puts back the action `catch` saved for this signal.
            unsafe {
                libc::sigaction(signal, &old, std::ptr::null_mut());
            }
        }
    }
}
