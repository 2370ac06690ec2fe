//! OTP operations shared by the handshake's step-up and the JSON API: send limits,
//! durable state transitions in the store, delivery in the background (a failure
//! becomes status `failed`, never silence) and the audit trail. Callers only
//! translate the results into HTTP answers or handshake replies.

use onetrip_protocol::Channel;
use zeroize::Zeroizing;

use crate::otp::lockout;
use crate::otp::metrics::CheckLabel;
use crate::otp::{self, CheckOutcome, Policy, Purpose, ResendOutcome, Status, Verification};
use crate::state::AppState;
use crate::store::ports::{self, StateStore, TotpPut};
use crate::store::{AuditEntry, StepUpStart, StoreError, TotpEnrolment};

/// TOTP account that stands for the API key itself (step-up); API accounts may not
/// start with `@`.
pub const STEP_UP_ACCOUNT: &str = "@key";
/// How long a resend may hold its verification's lease: far longer than the store
/// round trips it covers (delivery runs after it), and short enough that a replica
/// that died holding it blocks that verification's resends only briefly.
const RESEND_LEASE_SECS: u64 = 10;

/// Longest destination accepted.
pub const MAX_DESTINATION_LEN: usize = 256;

/// Why an OTP operation was refused. Each has a stable [`OtpError::code`].
#[derive(Debug, thiserror::Error)]
pub enum OtpError {
    /// A request field is out of range or malformed.
    #[error("{0}")]
    InvalidParameter(String),
    /// The channel is not configured on this server, or cannot reach `to`.
    #[error("{0}")]
    ChannelUnavailable(String),
    /// A send limit is reached (see [`crate::limits`]).
    #[error("too many codes sent {scope}: retry in {retry_after} s")]
    SendLimited {
        /// Seconds until the next send is allowed.
        retry_after: u64,
        /// `for this API key`, `to this destination by this API key` or `to this destination`.
        scope: &'static str,
    },
    /// No verification with this id for this key (another key's ids look the same).
    #[error("no such verification for this API key")]
    NotFound,
    /// The verification is no longer pending.
    #[error("the verification is {}: start a new one", .0.as_str())]
    NotPending(Status),
    /// A resend came before the cooldown ended.
    #[error("a new code can be sent in {retry_after} s")]
    ResendTooSoon {
        /// Seconds until a resend is allowed.
        retry_after: u64,
    },
    /// Every resend was used.
    #[error("all resends of this verification are used: start a new verification")]
    ResendsExhausted,
    /// TOTP verifications have nothing to send.
    #[error("nothing to resend: TOTP codes come from the authenticator app")]
    NothingToSend,
    /// TOTP for an account that was never enrolled.
    #[error("{0} has no TOTP enrolment: enrol it first (POST /v1/otp/totp or onetrip keys totp-enroll)")]
    TotpNotEnrolled(String),
    /// Too many wrong codes for this key (step-up) or TOTP account, across
    /// verifications: locked; nothing is compared until the lock ends.
    #[error("too many wrong codes: locked for {retry_after} s (an administrator can unlock sooner)")]
    Locked {
        /// Seconds until the lock ends.
        retry_after: u64,
    },
    /// The TOTP account already has an enrolment and `replace` was not asked.
    #[error("{0} already has a TOTP enrolment: send \"replace\": true to replace its secret")]
    TotpAlreadyEnrolled(String),
    /// The store or shared state failed.
    #[error("OTP storage unavailable: {0}")]
    Unavailable(String),
}

impl OtpError {
    /// Stable machine-readable code (problem+json `code`).
    pub fn code(&self) -> &'static str {
        match self {
            OtpError::InvalidParameter(_) => "invalid_parameter",
            OtpError::ChannelUnavailable(_) => "channel_unavailable",
            OtpError::SendLimited { .. } => "send_limit_reached",
            OtpError::NotFound => "verification_not_found",
            OtpError::NotPending(_) => "verification_not_pending",
            OtpError::ResendTooSoon { .. } => "resend_too_soon",
            OtpError::ResendsExhausted => "max_sends_reached",
            OtpError::NothingToSend => "nothing_to_send",
            OtpError::TotpNotEnrolled(_) => "totp_not_enrolled",
            OtpError::Locked { .. } => "second_factor_locked",
            OtpError::TotpAlreadyEnrolled(_) => "totp_already_enrolled",
            OtpError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for OtpError {
    fn from(e: StoreError) -> Self {
        OtpError::Unavailable(e.to_string())
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewVerification {
    /// The API key that asks (and owns the verification).
    pub owner: [u8; 16],
    /// Its name (shown in step-up messages).
    pub owner_name: String,
    /// Step-up or API.
    pub purpose: Purpose,
    /// How the code travels.
    pub channel: Channel,
    /// Destination (email address, webhook recipient, TOTP account, console label).
    pub to: String,
    /// Length, TTL and limits.
    pub policy: Policy,
    /// Message language.
    pub locale: Option<String>,
}

/// Channel named in the JSON API.
pub fn parse_channel(name: &str) -> Option<Channel> {
    match name {
        "email" => Some(Channel::Email),
        "webhook" | "sms" => Some(Channel::Webhook),
        "totp" => Some(Channel::Totp),
        "console" => Some(Channel::Console),
        _ => None,
    }
}

/// Checks a destination for its channel before anything is stored or sent.
pub fn validate_destination(state: &AppState, channel: Channel, to: &str) -> Result<(), OtpError> {
    if to.is_empty() || to.len() > MAX_DESTINATION_LEN || to.chars().any(char::is_control) {
        return Err(OtpError::InvalidParameter(format!(
            "`to` must be 1 to {MAX_DESTINATION_LEN} printable characters"
        )));
    }
    match channel {
        Channel::Console | Channel::Totp => Ok(()),
        _ => state.delivery.validate(channel, to).map_err(|e| match e {
            crate::otp::delivery::DeliveryError::InvalidDestination { .. } => OtpError::InvalidParameter(e.to_string()),
            other => OtpError::ChannelUnavailable(other.to_string()),
        }),
    }
}

/// The audit event for `event` on `v` (never the code); stored in the same
/// transaction as the change it records where there is one.
fn audit_entry(now: u64, event: &'static str, v: &Verification, outcome: &str) -> AuditEntry {
    AuditEntry {
        at: now,
        event,
        detail: serde_json::json!({
            "key_id": hex::encode(v.owner),
            "verification": hex::encode(v.id),
            "channel": v.channel,
            "to": otp::mask_destination(&v.to),
            "purpose": v.purpose,
            "outcome": outcome,
        }),
    }
}

/// Creates a verification, stores it, and sends its code in the background.
pub async fn create(state: &AppState, new: NewVerification, now: u64) -> Result<Verification, OtpError> {
    new.policy.validate().map_err(|e| OtpError::InvalidParameter(e.to_string()))?;
    validate_destination(state, new.channel, &new.to)?;
    if new.channel == Channel::Totp && new.purpose == Purpose::Api {
        // `@key` is the key's own step-up secret: never reachable through the API.
        crate::otp::api::validate_account(&new.to)?;
    }
    if new.channel == Channel::Totp {
        if !state.store.has_totp(new.owner, new.to.clone()).await? {
            return Err(OtpError::TotpNotEnrolled(new.to.clone()));
        }
    } else {
        let limits = &state.settings.otp;
        crate::limits::charge_send(&*state.shared, limits, &new.owner, new.purpose, new.channel, &new.to, now).await?;
    }
    let owner_name = new.owner_name.clone();
    let key = state.otp_key().await?;
    let (v, code) = new_verification(&new, key.expose(), now)?;
    // Stored before the code goes out: a crash cannot leave a code without its counter.
    let audit = audit_entry(now, "otp.generate", &v, "created");
    state.store.put_verification(v.clone(), Some(audit)).await?;
    state.metrics.otp.created(new.channel);
    if v.channel != Channel::Totp.as_str() {
        deliver_in_background(state, &v, owner_name, code);
    }
    Ok(v)
}

/// The lockout guard a check of `v` counts against: the key's own for a step-up
/// (every channel), the account's for an API TOTP verification.
fn guard_subject(v: &Verification) -> Option<Vec<u8>> {
    if v.purpose == Purpose::StepUp {
        Some(lockout::step_up_subject(&v.owner))
    } else if v.channel == Channel::Totp.as_str() {
        Some(lockout::totp_subject(&v.owner, &v.to))
    } else {
        None
    }
}

/// What the check transaction decided.
enum Checked {
    Outcome(CheckOutcome, Box<Verification>, Option<u64>),
    Locked(u64),
    OtherOwner,
}

/// Checks a code; the attempt (and, for step-up and TOTP, the lockout count across
/// verifications) is durable before the answer.
pub async fn check(
    state: &AppState,
    owner: [u8; 16],
    purpose: Purpose,
    id: [u8; 16],
    code: Zeroizing<String>,
    now: u64,
) -> Result<(CheckOutcome, Verification), OtpError> {
    let policy = state.settings.otp.lockout;
    let key = state.otp_key().await?;
    // Unknown ids and other keys' ids get the same answer; the audit tells them apart.
    let refused = move |outcome: &str| AuditEntry {
        at: now,
        event: "otp.check",
        detail: serde_json::json!({ "key_id": hex::encode(owner), "verification": hex::encode(id), "purpose": purpose, "outcome": outcome }),
    };
    {
        let result = ports::check_verification(
            &*state.store,
            id,
            move |v| (v.owner == owner).then(|| guard_subject(v)).flatten(),
            move |view| {
                let v = view.verification;
                if v.owner != owner || v.purpose != purpose {
                    return Checked::OtherOwner;
                }
                if let Some(retry_after) = view.guard.as_ref().and_then(|g| g.locked(now)) {
                    return Checked::Locked(retry_after);
                }
                let outcome = if v.channel == Channel::Totp.as_str() {
                    v.check_with(now, || match view.totp {
                        Some((secret, last_step)) => totp_check(secret, &code, now, last_step),
                        None => false,
                    })
                } else {
                    v.check(key.expose(), &code, now)
                };
                let mut locked_until = None;
                if let Some(guard) = view.guard {
                    match outcome {
                        CheckOutcome::Approved => guard.record_success(),
                        CheckOutcome::Wrong { .. } => locked_until = guard.record_failure(now, &policy),
                        CheckOutcome::NotPending(_) => {}
                    }
                }
                Checked::Outcome(outcome, Box::new(v.clone()), locked_until)
            },
            move |v, r| match r {
                Checked::OtherOwner => Some(refused("refused_other_key")),
                Checked::Locked(_) => Some(audit_entry(now, "otp.check", v, "refused_locked")),
                Checked::Outcome(outcome, _, locked_until) => {
                    let label = match outcome {
                        CheckOutcome::Approved => "approved".to_owned(),
                        CheckOutcome::Wrong { .. } => "wrong_code".to_owned(),
                        CheckOutcome::NotPending(s) => format!("refused_{}", s.as_str()),
                    };
                    let mut entry = audit_entry(now, "otp.check", v, &label);
                    if let Some(until) = locked_until {
                        entry.detail["locked_until"] = serde_json::json!(until);
                    }
                    Some(entry)
                }
            },
        )
        .await?;
        let counted = match &result {
            Some(Checked::Outcome(CheckOutcome::Approved, ..)) => CheckLabel::Approved,
            Some(Checked::Outcome(CheckOutcome::Wrong { .. }, ..)) => CheckLabel::WrongCode,
            Some(Checked::Outcome(CheckOutcome::NotPending(_), ..)) => CheckLabel::NotPending,
            Some(Checked::Locked(_)) => CheckLabel::Locked,
            Some(Checked::OtherOwner) | None => CheckLabel::NotFound,
        };
        state.metrics.otp.checked(counted);
        match result {
            Some(Checked::Outcome(outcome, v, _)) => Ok((outcome, *v)),
            Some(Checked::Locked(retry_after)) => Err(OtpError::Locked { retry_after }),
            Some(Checked::OtherOwner) => Err(OtpError::NotFound),
            None => {
                state.store.record_audit(refused("refused_unknown_operation")).await?;
                Err(OtpError::NotFound)
            }
        }
    }
}

/// Starts (or resumes) the step-up of `new.owner`: at most one pending step-up per
/// key, so a new handshake never opens a verification with fresh attempts while one
/// is pending; refused while the key is locked. Returns the verification and whether
/// it is new (its code was just sent).
pub async fn start_step_up(state: &AppState, new: NewVerification, now: u64) -> Result<(Verification, bool), OtpError> {
    let subject = lockout::step_up_subject(&new.owner);
    let resumable = move |v: &mut Verification| {
        v.refresh(now);
        v.status == Status::Pending
    };
    // A look first, so that resuming or a lock spends no send limit.
    let guard = state.store.get_guard(subject.clone()).await?;
    let pending = match guard.pending_step_up.as_deref().and_then(|h| hex::decode(h).ok()) {
        Some(id) => state.store.get_verification(id.try_into().unwrap_or([0; 16])).await?,
        None => None,
    };
    if let Some(retry_after) = guard.locked(now) {
        return Err(OtpError::Locked { retry_after });
    }
    if let Some(mut v) = pending {
        if resumable(&mut v) {
            return Ok((v, false));
        }
    }
    validate_destination(state, new.channel, &new.to)?;
    if new.channel == Channel::Totp {
        if !state.store.has_totp(new.owner, new.to.clone()).await? {
            return Err(OtpError::TotpNotEnrolled(new.to.clone()));
        }
    } else {
        crate::limits::charge_send(
            &*state.shared,
            &state.settings.otp,
            &new.owner,
            new.purpose,
            new.channel,
            &new.to,
            now,
        )
        .await?;
    }
    let owner_name = new.owner_name.clone();
    let key = state.otp_key().await?;
    let (v, code) = new_verification(&new, key.expose(), now)?;
    let audit = audit_entry(now, "otp.generate", &v, "created");
    let started = state.store.start_step_up(subject, now, Box::new(resumable), v, audit).await?;
    match started {
        StepUpStart::Created(v) => {
            state.metrics.otp.created(new.channel);
            if v.channel != Channel::Totp.as_str() {
                deliver_in_background(state, &v, owner_name, code);
            }
            Ok((v, true))
        }
        // Another handshake of the same key won the race: its verification stands.
        StepUpStart::Pending(v) => Ok((v, false)),
        StepUpStart::Locked(retry_after) => Err(OtpError::Locked { retry_after }),
    }
}

/// A new verification for `new` and its code (none for TOTP: the app holds the secret).
fn new_verification(
    new: &NewVerification,
    otp_key: &[u8; 32],
    now: u64,
) -> Result<(Verification, Zeroizing<String>), OtpError> {
    let (mut v, code) = Verification::create(
        &mut rand::thread_rng(),
        otp_key,
        new.owner,
        new.channel.as_str(),
        &new.to,
        new.policy,
        now,
    )
    .map_err(|e| OtpError::InvalidParameter(e.to_string()))?;
    v.purpose = new.purpose;
    v.locale.clone_from(&new.locale);
    if new.channel == Channel::Totp {
        v.code_hash = [0; 32];
    }
    Ok((v, code))
}

/// Enrols `account` of `owner` for TOTP and returns the new secret (shown once). An
/// existing enrolment is replaced only with `replace`, and the audit says which.
pub async fn enroll_totp(
    store: &dyn StateStore,
    owner: [u8; 16],
    account: &str,
    replace: bool,
    now: u64,
) -> Result<crate::otp::totp::TotpSecret, OtpError> {
    let secret = crate::otp::totp::generate_secret(&mut rand::thread_rng());
    let enrolment = TotpPut {
        owner,
        account: account.to_owned(),
        secret: Zeroizing::new(secret.as_bytes().to_vec()),
        now,
        replace,
    };
    let audited_account = account.to_owned();
    let audit = Box::new(move |outcome| AuditEntry {
        at: now,
        event: if outcome == TotpEnrolment::Replaced { "otp.totp_replace" } else { "otp.totp_enroll" },
        detail: serde_json::json!({
            "key_id": hex::encode(owner),
            "account": audited_account,
            "outcome": match outcome {
                TotpEnrolment::Enrolled => "enrolled",
                TotpEnrolment::Replaced => "replaced",
                TotpEnrolment::AlreadyEnrolled => "refused_already_enrolled",
            },
        }),
    });
    let outcome = store.put_totp(enrolment, audit).await?;
    if outcome == TotpEnrolment::AlreadyEnrolled {
        return Err(OtpError::TotpAlreadyEnrolled(account.to_owned()));
    }
    Ok(secret)
}

/// Sends a new code (it replaces the old one; the expiry does not move).
pub async fn resend(
    state: &AppState,
    owner: [u8; 16],
    owner_name: String,
    id: [u8; 16],
    now: u64,
) -> Result<Verification, OtpError> {
    // One resend of a verification at a time, across every replica (a lease in the
    // shared state): the look-then-charge below must not let parallel resends spend
    // the send limits for codes that the store transition then refuses. A resend
    // that finds the lease taken is answered like one inside the cooldown, which is
    // what it will be once the running resend has sent its code.
    let lease = format!("otp.resend:{}", hex::encode(id));
    let holder: u128 = rand::random();
    let taken = state
        .shared
        .try_lease(&lease, holder, now, now + RESEND_LEASE_SECS)
        .await
        .map_err(|e| OtpError::Unavailable(e.to_string()))?;
    if !taken {
        return Err(OtpError::ResendTooSoon { retry_after: 1 });
    }
    let result = resend_holding_lease(state, owner, owner_name, id, now).await;
    if let Err(e) = state.shared.release_lease(&lease, holder).await {
        // The lease ends by itself at its expiry; until then this verification's
        // resends are answered "too soon", never sent twice.
        tracing::warn!(error = %e, "cannot release an OTP resend lease");
    }
    result
}

/// [`resend`] once its lease is held.
async fn resend_holding_lease(
    state: &AppState,
    owner: [u8; 16],
    owner_name: String,
    id: [u8; 16],
    now: u64,
) -> Result<Verification, OtpError> {
    // Look first, so a refused resend does not use up the send limits.
    let mut current = get(state, owner, Purpose::Api, id, now).await?;
    if current.channel == Channel::Totp.as_str() {
        return Err(OtpError::NothingToSend);
    }
    let peek = current.resend(&mut rand::thread_rng(), &[0; 32], now).0;
    match peek {
        ResendOutcome::NotPending(s) => return Err(OtpError::NotPending(s)),
        ResendOutcome::Refused { retry_after: Some(retry_after) } => {
            return Err(OtpError::ResendTooSoon { retry_after })
        }
        ResendOutcome::Refused { retry_after: None } => return Err(OtpError::ResendsExhausted),
        ResendOutcome::Send => {}
    }
    let channel = parse_channel(&current.channel).ok_or(OtpError::NotFound)?;
    let limits = &state.settings.otp;
    crate::limits::charge_send(&*state.shared, limits, &owner, Purpose::Api, channel, &current.to, now).await?;
    let key = state.otp_key().await?;
    let (outcome, v, code) = ports::update_verification(
        &*state.store,
        id,
        move |v| {
            let (o, c) = v.resend(&mut rand::thread_rng(), key.expose(), now);
            (o, v.clone(), c)
        },
        move |v, (outcome, _, _)| {
            let label = if *outcome == ResendOutcome::Send { "sent" } else { "refused" };
            Some(audit_entry(now, "otp.resend", v, label))
        },
    )
    .await?
    .ok_or(OtpError::NotFound)?;
    match (outcome, code) {
        (ResendOutcome::Send, Some(code)) => {
            deliver_in_background(state, &v, owner_name, code);
            Ok(v)
        }
        (ResendOutcome::NotPending(s), _) => Err(OtpError::NotPending(s)),
        (ResendOutcome::Refused { retry_after: Some(retry_after) }, _) => Err(OtpError::ResendTooSoon { retry_after }),
        _ => Err(OtpError::ResendsExhausted),
    }
}

/// Cancels a pending verification.
pub async fn cancel(state: &AppState, owner: [u8; 16], id: [u8; 16], now: u64) -> Result<Verification, OtpError> {
    let r = ports::update_verification(
        &*state.store,
        id,
        move |v| {
            if v.owner != owner || v.purpose != Purpose::Api {
                return None;
            }
            Some((v.cancel(now), v.clone()))
        },
        move |v, r| {
            let (canceled, _) = r.as_ref()?;
            Some(audit_entry(now, "otp.cancel", v, if *canceled { "canceled" } else { "refused" }))
        },
    )
    .await?;
    let Some(Some((canceled, v))) = r else {
        return Err(OtpError::NotFound);
    };
    if canceled {
        Ok(v)
    } else {
        Err(OtpError::NotPending(v.status))
    }
}

/// One verification of `owner`, with its status brought up to date.
pub async fn get(
    state: &AppState,
    owner: [u8; 16],
    purpose: Purpose,
    id: [u8; 16],
    now: u64,
) -> Result<Verification, OtpError> {
    let mut v = state.store.get_verification(id).await?.filter(|v| v.owner == owner && v.purpose == purpose);
    if let Some(v) = v.as_mut() {
        v.refresh(now);
    }
    v.ok_or(OtpError::NotFound)
}

/// Sends `code` on the verification's channel without holding up the caller; a
/// delivery that fails after its retries (a webhook retries for minutes) marks the
/// verification `failed`, unless a resend has replaced the code meanwhile: that
/// newer code has its own delivery, and the old one's failure says nothing about it.
fn deliver_in_background(state: &AppState, v: &Verification, owner_name: String, code: Zeroizing<String>) {
    let Some(channel) = parse_channel(&v.channel) else { return };
    let state = state.clone();
    let v = v.clone();
    tokio::spawn(async move {
        let id = hex::encode(v.id);
        let purpose = match v.purpose {
            Purpose::StepUp => crate::otp::delivery::Purpose::StepUp { key_name: &owner_name },
            Purpose::Api => crate::otp::delivery::Purpose::Verification,
        };
        let message = crate::otp::delivery::OtpMessage {
            verification_id: &id,
            to: &v.to,
            code: &code,
            expires_at: v.expires_at,
            ttl_secs: v.expires_at.saturating_sub(state.now()),
            locale: v.locale.as_deref(),
            purpose,
        };
        let (vid, sent) = (v.id, v.sends);
        let lookup = state.clone();
        let still_wanted = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
            let state = lookup.clone();
            Box::pin(async move {
                match state.store.get_verification(vid).await {
                    Ok(Some(cur)) => cur.status == Status::Pending && cur.sends == sent,
                    Ok(None) => false,
                    // A store blip must not cost the code: keep trying.
                    Err(_) => true,
                }
            })
        };
        let result = state.delivery.deliver_while(channel, &message, &still_wanted).await;
        let now = state.now();
        let superseded = matches!(result, Err(crate::otp::delivery::DeliveryError::Superseded(_)));
        // A stop for a replaced or settled code says nothing about the channel.
        if !superseded {
            state.metrics.otp.delivery(channel, result.is_ok());
        }
        let failed = result.is_err() && !superseded;
        let outcome = match &result {
            Ok(report) => format!("delivered after {} attempt(s)", report.attempts),
            Err(e @ crate::otp::delivery::DeliveryError::Superseded(_)) => format!("stopped: {}", e.code()),
            Err(e) => {
                tracing::warn!(verification = %id, channel = channel.as_str(), error = %e, "OTP delivery failed");
                format!("failed: {}", e.code())
            }
        };
        if failed {
            let r = ports::update_verification(
                &*state.store,
                vid,
                move |v| {
                    if v.sends == sent {
                        v.delivery_failed();
                    }
                },
                move |v, _| Some(audit_entry(now, "otp.deliver", v, &outcome)),
            )
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot record an OTP delivery failure");
            }
        } else if let Err(e) = state.store.record_audit(audit_entry(now, "otp.deliver", &v, &outcome)).await {
            tracing::warn!(error = %e, "cannot record an OTP delivery");
        }
    });
}

/// Judges an authenticator code against the enrolled secret (±1 step), refusing any
/// step at or before the last accepted one; advances it on success.
fn totp_check(secret: &[u8], code: &str, now: u64, last_step: &mut Option<u64>) -> bool {
    let secret = crate::otp::totp::TotpSecret::from_bytes(secret);
    match crate::otp::totp::verify(&secret, &crate::otp::totp::TotpParams::default(), code.trim(), now, *last_step) {
        Ok(step) => {
            *last_step = Some(step);
            true
        }
        Err(_) => false,
    }
}
