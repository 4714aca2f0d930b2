//! The device threads of one VM (virtio notification servers, rate-limit retry timers, tap
//! pollers, the serial input reader), stopped and joined together when the VM goes away, so
//! none outlives it when the VMM is embedded in a longer-lived process.
//!
//! Every worker waits with `poll(2)` on its own file descriptor plus the VM's stop eventfd,
//! which is written once and never read: it stays readable, so every worker sees it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// What a worker's wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The watched descriptor is readable.
    Ready,
    /// The timeout passed.
    Timeout,
    /// The VM is stopping: the worker must return.
    Stop,
}

/// A worker's handle on the VM's stop signal.
#[derive(Clone)]
pub struct Stop(Arc<EventFd>);

impl Stop {
    /// Waits until `fd` (if any) is readable, `timeout` passes (`None`: forever), or the VM
    /// stops. A stop wins over a readable descriptor.
    pub fn wait(&self, fd: Option<RawFd>, timeout: Option<Duration>) -> Wake {
        let mut fds = [
            libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(t.subsec_nanos()),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        loop {
            // SAFETY: two valid pollfds (a negative fd is ignored); both descriptors outlive
            // the call (the caller owns `fd`, this handle owns the eventfd); `ts_ptr` is null
            // or points at `ts`, alive here; no signal mask change.
            let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, ts_ptr, std::ptr::null()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return if fds[0].revents != 0 {
                Wake::Stop
            } else if n > 0 {
                Wake::Ready
            } else {
                Wake::Timeout
            };
        }
    }

    /// Whether the VM is stopping (does not wait).
    pub fn is_set(&self) -> bool {
        self.wait(None, Some(Duration::ZERO)) == Wake::Stop
    }
}

/// The worker threads of one VM.
pub struct Workers {
    stop: Stop,
    threads: Vec<JoinHandle<()>>,
    on_stop: Vec<Box<dyn FnOnce() + Send>>,
}

impl Workers {
    /// No workers yet.
    pub fn new() -> std::io::Result<Workers> {
        Ok(Workers {
            stop: Stop(Arc::new(EventFd::new(libc::EFD_NONBLOCK)?)),
            threads: Vec::new(),
            on_stop: Vec::new(),
        })
    }

    /// Starts a worker named `name`; it must return soon after its [`Stop`] is set.
    pub fn spawn(
        &mut self,
        name: String,
        body: impl FnOnce(Stop) + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.stop.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(stop))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Runs `f` when the workers stop, before they are joined (to close a channel a worker
    /// blocks on).
    pub fn on_stop(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_stop.push(Box::new(f));
    }

    /// Number of running worker threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Signals every worker to stop and waits for them.
    pub fn stop(&mut self) {
        let _ = self.stop.0.write(1);
        for f in self.on_stop.drain(..) {
            f();
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_return_when_stopped_and_are_joined() {
        let mut workers = Workers::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let seen = evt.clone();
        workers
            .spawn("w".into(), move |stop| {
                loop {
                    match stop.wait(Some(seen.as_raw_fd()), None) {
                        Wake::Ready => {
                            let _ = seen.read();
                            tx.send("ready").unwrap();
                        }
                        Wake::Timeout => {}
                        Wake::Stop => {
                            tx.send("stop").unwrap();
                            return;
                        }
                    }
                }
            })
            .unwrap();
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok("ready"));
        assert_eq!(workers.len(), 1);
        workers.stop();
        assert!(workers.is_empty());
        assert_eq!(
            rx.try_recv(),
            Ok("stop"),
            "the worker ran to its end before stop returned"
        );
    }
}
