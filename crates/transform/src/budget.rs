//! The alert budget: at most N enriched alerts per wall-clock window, as Elastic caps a rule at
//! `max_signals` (100) alerts per execution (every 10 minutes for this rule).

use std::time::{Duration, Instant};

/// At most `max` alerts per `window` of wall-clock time, counted from the first alert of each
/// window. Wall clock rather than event time: a stream replayed from an archive must not be able
/// to spend its budget in the past, and a live stream's events arrive close to their time anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertBudget {
    /// Alerts allowed per window.
    pub max: u64,
    /// The window's length.
    pub window: Duration,
}

/// Spends an [`AlertBudget`].
#[derive(Debug)]
pub(crate) struct Spender {
    budget: AlertBudget,
    window_start: Option<Instant>,
    spent: u64,
    warned: bool,
}

/// What [`Spender::spend`] decided for one alert.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Within the budget: enrich it.
    Allowed,
    /// Over the budget; `warn` is true for the first such alert of the window.
    Over { warn: bool },
}

impl Spender {
    pub(crate) fn new(budget: AlertBudget) -> Spender {
        Spender { budget, window_start: None, spent: 0, warned: false }
    }

    pub(crate) fn spend(&mut self, now: Instant) -> Spend {
        let expired =
            self.window_start.is_none_or(|start| now.duration_since(start) >= self.budget.window);
        if expired {
            *self = Spender { window_start: Some(now), ..Spender::new(self.budget) };
        }
        if self.spent < self.budget.max {
            self.spent += 1;
            return Spend::Allowed;
        }
        let warn = !self.warned;
        self.warned = true;
        Spend::Over { warn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_window_and_warns_once() {
        let mut s = Spender::new(AlertBudget { max: 2, window: Duration::from_secs(60) });
        let t0 = Instant::now();
        assert_eq!(s.spend(t0), Spend::Allowed);
        assert_eq!(s.spend(t0 + Duration::from_secs(1)), Spend::Allowed);
        assert_eq!(s.spend(t0 + Duration::from_secs(2)), Spend::Over { warn: true });
        assert_eq!(s.spend(t0 + Duration::from_secs(59)), Spend::Over { warn: false });
        // A new window starts at the first alert after the old one ends.
        assert_eq!(s.spend(t0 + Duration::from_secs(60)), Spend::Allowed);
        assert_eq!(s.spend(t0 + Duration::from_secs(61)), Spend::Allowed);
        assert_eq!(s.spend(t0 + Duration::from_secs(62)), Spend::Over { warn: true });
    }

    #[test]
    fn a_zero_budget_allows_nothing() {
        let mut s = Spender::new(AlertBudget { max: 0, window: Duration::from_secs(1) });
        assert_eq!(s.spend(Instant::now()), Spend::Over { warn: true });
    }
}
