//! The process's one actix system, and one arbiter on it per subsystem (the farm, the mining loop, an
//! in-process agent).
//!
//! Actors live on an actix system; a process that ran one system per subsystem (as the coordinator once
//! did, the farm on one and the mining loop on another) has several actor worlds that cannot share an
//! arbiter, a registry or a shutdown. Here every subsystem is a [`Subsystem`]: an [`actix_rt::Arbiter`]
//! of the process's one system, with the tokio runtime the subsystem asks for (the farm's has worker
//! threads for its QUIC and spot-check tasks; the mining loop's runs on its own thread). A process whose
//! thread already runs a system (the agent binary's `main`) gets its arbiters there; any other caller (the
//! coordinator's tokio `main`, a `#[tokio::test]`) gets them on a system this module starts once, on a
//! thread of its own, for the life of the process.
//!
//! Stopping a subsystem stops its arbiter: the actors and tasks on it are dropped, the system goes on.

use actix_rt::{Arbiter, System};
use std::{
    future::Future,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::ThreadId,
};

/// The system this module started, when the process had none of its own.
static PROCESS_SYSTEM: Mutex<Option<System>> = Mutex::new(None);

/// The tokio runtime a subsystem's arbiter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemRuntime {
    /// Everything on the arbiter's thread (`tokio::spawn` too).
    CurrentThread,
    /// Actors on the arbiter's thread, `tokio::spawn`ed tasks on this many worker threads.
    MultiThread {
        /// Worker threads.
        workers: usize,
        /// Their name (for `top -H` and debuggers).
        name: &'static str,
    },
}

impl SubsystemRuntime {
    fn build(self) -> io::Result<tokio::runtime::Runtime> {
        match self {
            Self::CurrentThread => {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            }
            Self::MultiThread { workers, name } => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .thread_name(name)
                .enable_all()
                .build(),
        }
    }
}

/// One subsystem's arbiter on the process's actix system. Dropping it detaches the subsystem: it runs until
/// its `main` returns.
#[derive(Debug)]
pub struct Subsystem {
    arbiter: Option<Arbiter>,
    thread: ThreadId,
    finished: Arc<AtomicBool>,
}

impl Subsystem {
    /// Starts an arbiter with `runtime` on the process's actix system (the calling thread's, else the one
    /// this module keeps), and runs `main` on it: `main` starts the subsystem's actors and drives it; the
    /// arbiter stops when `main` returns.
    pub fn start<F, Fut>(runtime: SubsystemRuntime, main: F) -> io::Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let arbiter = new_arbiter(runtime)?;
        let (thread_tx, thread_rx) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let spawned = arbiter.spawn_fn(move || {
            let _ = thread_tx.send(std::thread::current().id());
            actix_rt::spawn(async move {
                // Its own task, so that a panic in it (caught by the runtime) still stops the arbiter.
                let _ = actix_rt::spawn(async move { main().await }).await;
                done.store(true, Ordering::Release);
                Arbiter::current().stop();
            });
        });
        let thread = thread_rx.recv().ok().filter(|_| spawned).ok_or_else(|| {
            io::Error::other("the subsystem's arbiter stopped before it could start")
        })?;
        Ok(Self { arbiter: Some(arbiter), thread, finished })
    }

    /// Whether the subsystem's `main` has returned.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits until the arbiter has stopped (its `main` returned, or [`Subsystem::stop`] was called).
    /// From the subsystem's own thread it does not wait (that would never end).
    pub fn join(mut self) {
        if let Some(arbiter) = self.arbiter.take()
            && std::thread::current().id() != self.thread
        {
            let _ = arbiter.join();
        }
    }

    /// Stops the arbiter now (its actors and tasks are dropped where they stand) and waits for it.
    pub fn stop(mut self) {
        if let Some(arbiter) = &self.arbiter {
            arbiter.stop();
        }
        if let Some(arbiter) = self.arbiter.take()
            && std::thread::current().id() != self.thread
        {
            let _ = arbiter.join();
        }
    }
}

/// An arbiter with `runtime` on the calling thread's system, else on the process's own.
fn new_arbiter(runtime: SubsystemRuntime) -> io::Result<Arbiter> {
    if System::try_current().is_some() {
        return Arbiter::try_with_tokio_rt(move || runtime.build());
    }
    let system = process_system()?;
    let (tx, rx) = mpsc::channel();
    // An arbiter is made on a thread of its system: ask the system's own arbiter to make it.
    let asked = system.arbiter().spawn_fn(move || {
        let _ = tx.send(Arbiter::try_with_tokio_rt(move || runtime.build()));
    });
    if !asked {
        return Err(io::Error::other("the process's actix system has stopped"));
    }
    rx.recv().map_err(|_| io::Error::other("the process's actix system has stopped"))?
}

/// The system this module keeps for the process, started on first use.
fn process_system() -> io::Result<System> {
    let mut slot = PROCESS_SYSTEM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(system) = slot.as_ref() {
        return Ok(system.clone());
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("cpc-actix-system".into()).spawn(move || {
        let runner = System::new();
        let _ = tx.send(System::current());
        // Runs until the process exits: nothing stops the process's system.
        let _ = runner.run();
    })?;
    let system =
        rx.recv().map_err(|_| io::Error::other("the actix system thread died while starting"))?;
    *slot = Some(system.clone());
    Ok(system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystems_share_the_process_system_and_stop_on_their_own() {
        let (tx, rx) = mpsc::channel();
        let subsystems: Vec<Subsystem> = (0..2)
            .map(|i| {
                let tx = tx.clone();
                let runtime = if i == 0 {
                    SubsystemRuntime::CurrentThread
                } else {
                    SubsystemRuntime::MultiThread { workers: 2, name: "test-io" }
                };
                Subsystem::start(runtime, move || async move {
                    let _ = tx.send(System::current().id());
                })
                .expect("subsystem")
            })
            .collect();
        let ids = [rx.recv().expect("first"), rx.recv().expect("second")];
        assert_eq!(ids[0], ids[1], "one system");
        for s in subsystems {
            s.join();
        }
    }

    #[test]
    fn a_stopped_subsystem_drops_its_work() {
        let (tx, rx) = mpsc::channel::<()>();
        let subsystem = Subsystem::start(SubsystemRuntime::CurrentThread, move || async move {
            std::future::pending::<()>().await;
            drop(tx);
        })
        .expect("subsystem");
        assert!(!subsystem.is_finished());
        subsystem.stop();
        assert!(rx.recv().is_err(), "the pending future was dropped with its sender");
    }
}
