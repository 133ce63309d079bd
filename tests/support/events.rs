//! [`EventLog`]: every `watch` event of several in-process agents, recorded in the background
//! with the time (tokio's clock, so a paused test clock) at which the test read it.
//!
//! A test follows each agent once ([`EventLog::follow`], again after a restart) and asks the
//! log afterwards: [`EventLog::wait_for`] an event with a deadline, or [`EventLog::events`]
//! for "this never happened" checks at the end of a named observation window.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chorus_agent::api::{Response, WatchEvent};
use chorus_core::alert::Alert;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::agent::watch;
use super::wait_until;

/// One event as read from an agent's `watch` stream.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When the test read it. With in-process agents on one runtime this is the instant the
    /// agent raised it (no clock tick passes between the two, see `partition.rs`).
    pub at: Instant,
    /// Which [`EventLog::follow`] call recorded it: tells two runs of one node apart.
    pub run: usize,
    pub event: WatchEvent,
}

impl Recorded {
    pub fn observer(&self) -> &str {
        &self.event.observer
    }

    pub fn alert(&self) -> &Alert {
        &self.event.alert
    }
}

#[derive(Default)]
struct Inner {
    events: Vec<Recorded>,
    /// Anything a stream said that is not an event (a lag report, an error): a journal with
    /// a hole cannot be checked.
    problems: Vec<String>,
    followers: HashMap<usize, JoinHandle<()>>,
    runs: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, task) in self.followers.drain() {
            task.abort();
        }
    }
}

/// The recorded `watch` events of any number of agents. Clones share the log.
#[derive(Clone, Default)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
}

impl EventLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to the agent at `socket` and records its events from now on (every event
    /// raised after this returns is recorded). Returns the run number stamped on them.
    pub async fn follow(&self, node: &str, socket: &Path) -> usize {
        let mut client = watch(socket).await;
        let run = {
            let mut inner = self.lock();
            inner.runs += 1;
            inner.runs
        };
        let log = Arc::downgrade(&self.inner);
        let node = node.to_string();
        let task = tokio::spawn(async move {
            loop {
                let response = client.next_response().await;
                let Some(inner) = log.upgrade() else { return };
                let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
                match response {
                    Ok(Response::Event { event }) => inner.events.push(Recorded {
                        at: Instant::now(),
                        run,
                        event,
                    }),
                    Ok(other) => inner
                        .problems
                        .push(format!("{node} (run {run}) sent {other:?}")),
                    // The agent stopped (a crash in-process leaves the stream open, so this is
                    // a real end or a broken socket).
                    Err(_) => return,
                }
            }
        });
        self.lock().followers.insert(run, task);
        run
    }

    /// Everything recorded so far, in the order it was read.
    pub fn events(&self) -> Vec<Recorded> {
        self.lock().events.clone()
    }

    /// The events `observer` raised that match.
    pub fn seen_by(&self, observer: &str, matches: impl Fn(&Alert) -> bool) -> Vec<Recorded> {
        self.lock()
            .events
            .iter()
            .filter(|r| r.observer() == observer && matches(r.alert()))
            .cloned()
            .collect()
    }

    /// What the streams said besides events (should be nothing).
    pub fn problems(&self) -> Vec<String> {
        self.lock().problems.clone()
    }

    /// Waits until an event raised by `observer` matches, and returns the first one.
    pub async fn wait_for(
        &self,
        observer: &str,
        what: &str,
        within: Duration,
        matches: impl Fn(&Alert) -> bool,
    ) -> Recorded {
        let what = format!("{observer} raises {what}");
        wait_until(&what, within, || {
            let found = self.seen_by(observer, &matches).into_iter().next();
            let kinds: Vec<&str> = self
                .seen_by(observer, |_| true)
                .iter()
                .map(|r| r.alert().kind())
                .collect();
            async move { found.ok_or_else(|| format!("not yet; it raised {kinds:?}")) }
        })
        .await
    }
}
