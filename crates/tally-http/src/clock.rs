//! The server's sense of "now". Every handler and background job asks the clock instead of
//! the system, so tests can move time forward (a grant's expiry, a renewal, a top-up's payment
//! window) without waiting for it. In production the offset stays zero.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The system clock plus an offset that only ever grows. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_micros: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::microseconds(self.offset_micros.load(Ordering::SeqCst))
    }

    /// A clock that reads `start` now and runs on from there: `tally demo` makes its history
    /// days in the past through the API this way. Once made, it too only moves forward.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        let offset = (start - Utc::now()).num_microseconds().unwrap_or(0);
        Clock { offset_micros: Arc::new(AtomicI64::new(offset)) }
    }

    /// Moves this clock (and every clone of it) forward by `by`. Time never goes back, so a
    /// negative duration is ignored.
    pub fn advance(&self, by: chrono::Duration) {
        if let Some(micros) = by.num_microseconds().filter(|micros| *micros > 0) {
            self.offset_micros.fetch_add(micros, Ordering::SeqCst);
        }
    }
}
