//! OTP counters for `/metrics`: verifications created and deliveries by channel,
//! code checks by outcome. The label values are fixed sets, and every series is
//! exported from start at 0, so that rates and the delivery-failure alert
//! (`deploy/prometheus-alerts.yml`) work before the first event.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use onetrip_protocol::Channel;

const CHANNELS: [Channel; 4] = [Channel::Email, Channel::Webhook, Channel::Totp, Channel::Console];

/// What became of a code check.
#[derive(Debug, Clone, Copy)]
pub enum CheckLabel {
    /// The right code.
    Approved,
    /// A wrong code (attempts counted).
    WrongCode,
    /// The verification is no longer pending (approved, expired, cancelled, spent).
    NotPending,
    /// Refused: too many wrong codes lately.
    Locked,
    /// No such verification for this key.
    NotFound,
}

impl CheckLabel {
    const ALL: [CheckLabel; 5] =
        [CheckLabel::Approved, CheckLabel::WrongCode, CheckLabel::NotPending, CheckLabel::Locked, CheckLabel::NotFound];

    fn as_str(self) -> &'static str {
        match self {
            CheckLabel::Approved => "approved",
            CheckLabel::WrongCode => "wrong_code",
            CheckLabel::NotPending => "not_pending",
            CheckLabel::Locked => "locked",
            CheckLabel::NotFound => "not_found",
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct OtpCounters {
    created: [AtomicU64; CHANNELS.len()],
    delivered: [AtomicU64; CHANNELS.len()],
    failed: [AtomicU64; CHANNELS.len()],
    checks: [AtomicU64; CheckLabel::ALL.len()],
}

fn slot(channel: Channel) -> usize {
    CHANNELS.iter().position(|c| *c == channel).unwrap_or(0)
}

impl OtpCounters {
    /// A verification was stored (its code goes out next, TOTP excepted).
    pub fn created(&self, channel: Channel) {
        self.created[slot(channel)].fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery ended, after its retries.
    pub fn delivery(&self, channel: Channel, delivered: bool) {
        let counters = if delivered { &self.delivered } else { &self.failed };
        counters[slot(channel)].fetch_add(1, Ordering::Relaxed);
    }

    /// A code was checked.
    pub fn checked(&self, outcome: CheckLabel) {
        self.checks[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of the counters.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP onetrip_otp_created_total OTP verifications created, by channel.");
        let _ = writeln!(out, "# TYPE onetrip_otp_created_total counter");
        for (i, c) in CHANNELS.iter().enumerate() {
            let _ = writeln!(out, "onetrip_otp_created_total{{channel=\"{}\"}} {}", c.as_str(), get(&self.created[i]));
        }
        let _ = writeln!(
            out,
            "# HELP onetrip_otp_deliveries_total OTP code deliveries that ended, by channel and outcome."
        );
        let _ = writeln!(out, "# TYPE onetrip_otp_deliveries_total counter");
        for (i, c) in CHANNELS.iter().enumerate().filter(|(_, c)| **c != Channel::Totp) {
            for (outcome, n) in [("delivered", get(&self.delivered[i])), ("failed", get(&self.failed[i]))] {
                let _ = writeln!(
                    out,
                    "onetrip_otp_deliveries_total{{channel=\"{}\",outcome=\"{outcome}\"}} {n}",
                    c.as_str()
                );
            }
        }
        let _ = writeln!(out, "# HELP onetrip_otp_checks_total OTP code checks, by outcome.");
        let _ = writeln!(out, "# TYPE onetrip_otp_checks_total counter");
        for label in CheckLabel::ALL {
            let _ = writeln!(
                out,
                "onetrip_otp_checks_total{{outcome=\"{}\"}} {}",
                label.as_str(),
                get(&self.checks[label as usize])
            );
        }
    }
}
