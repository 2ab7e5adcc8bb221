//! Requests per key (a client, an address) in a window: past the budget the caller is told to
//! wait (429 with `Retry-After`) until its window ends. Used for `$bulk-submit` per submitting
//! client (`SUBMIT_REQUESTS_PER_MINUTE`; status polls are not counted, so a provider that stops
//! polling on a 429 is never cut off) and for `GET /generator` per address.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Clients remembered at once; ended windows are dropped first when full.
const MAX_CLIENTS: usize = 10_000;

pub struct WindowBudget {
    per_window: u32,
    window: Duration,
    clients: Mutex<HashMap<String, (Instant, u32)>>,
}

impl WindowBudget {
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    fn with_window(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, clients: Mutex::default() }
    }

    /// Count one request of `client` (any key): `Err(wait)` when it is over its budget.
    pub fn take(&self, client: &str) -> Result<(), Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            let window = self.window;
            clients.retain(|_, (started, _)| started.elapsed() < window);
            if clients.len() >= MAX_CLIENTS {
                return Err(self.window);
            }
        }
        let (started, used) = clients.entry(client.to_string()).or_insert((Instant::now(), 0));
        if started.elapsed() >= self.window {
            (*started, *used) = (Instant::now(), 0);
        }
        if *used >= self.per_window {
            return Err(self.window.saturating_sub(started.elapsed()).max(Duration::from_secs(1)));
        }
        *used += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_budget_waits_for_its_window_and_others_do_not() {
        let budget = WindowBudget::with_window(2, Duration::from_millis(50));
        assert!(budget.take("a").is_ok() && budget.take("a").is_ok());
        assert!(budget.take("a").is_err(), "the third in the window");
        assert!(budget.take("b").is_ok(), "per client");
        std::thread::sleep(Duration::from_millis(60));
        assert!(budget.take("a").is_ok(), "a new window");
    }
}
