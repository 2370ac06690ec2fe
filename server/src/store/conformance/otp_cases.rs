//! Conformance cases of OTP verifications, TOTP enrolments and lockout guards: the
//! atomic transitions under concurrency, run the way `otp_service` runs them.

use super::cases::{count, entry, events};
use super::{Harness, T0};
use crate::otp::lockout::{step_up_subject, Guard, LockoutPolicy};
use crate::otp::{CheckOutcome, Policy, Status, Verification};
use crate::store::ports::{check_verification, update_verification, TotpPut};
use crate::store::{Backend, StepUpStart, TotpEnrolment};

const OWNER: [u8; 16] = [1; 16];

async fn new_verification(b: &Backend, channel: &str, to: &str) -> (Verification, String, [u8; 32]) {
    let key = *b.otp_key().await.expect("otp key").expose();
    let (v, code) = Verification::create(&mut rand_core::OsRng, &key, OWNER, channel, to, Policy::default(), T0)
        .expect("verification");
    (v, code.to_string(), key)
}

/// A check as `otp_service` makes it: against the key's guard, counting a wrong code
/// there too, with an `otp.check` event.
async fn check(b: &Backend, v: &Verification, key: [u8; 32], code: String, now: u64) -> CheckOutcome {
    let policy = LockoutPolicy { max_failures: 1_000, ..LockoutPolicy::default() };
    check_verification(
        &**b,
        v.id,
        |v| Some(step_up_subject(&v.owner)),
        move |view| {
            let outcome = view.verification.check(&key, &code, now);
            if let (Some(guard), CheckOutcome::Wrong { .. }) = (view.guard, outcome) {
                guard.record_failure(now, &policy);
            }
            outcome
        },
        move |_, _| Some(entry(now, "otp.check")),
    )
    .await
    .expect("check")
    .expect("the verification exists")
}

pub(crate) async fn fifty_parallel_wrong_checks_across_four_connections_evaluate_exactly_five(h: &dyn Harness) {
    let handles = h.handles(4).await;
    let (v, code, key) = new_verification(&handles[0], "console", "dev").await;
    handles[0].put_verification(v.clone(), Some(entry(T0, "otp.generate"))).await.expect("put");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (b, v) = (handles[i % 4].clone(), v.clone());
        tasks.spawn(async move { check(&b, &v, key, wrong.to_owned(), T0 + 1).await });
    }
    let outcomes = tasks.join_all().await;
    let evaluated = outcomes.iter().filter(|o| matches!(o, CheckOutcome::Wrong { .. })).count();
    let refused = outcomes.iter().filter(|o| **o == CheckOutcome::NotPending(Status::MaxAttemptsReached)).count();
    assert_eq!((evaluated, refused), (5, 45));
    // The right code is refused too: the counter, not luck, ended it.
    assert_eq!(check(&handles[1], &v, key, code, T0 + 2).await, CheckOutcome::NotPending(Status::MaxAttemptsReached));
    let stored = handles[2].get_verification(v.id).await.expect("get").expect("stored");
    assert_eq!((stored.attempts, stored.status), (5, Status::MaxAttemptsReached));
    // The guard counted in the same transactions: exactly the five evaluated.
    assert_eq!(handles[3].get_guard(step_up_subject(&OWNER)).await.expect("guard").failures.len(), 5);
    assert_eq!(count(&events(&handles[0]).await, "otp.check"), 51, "one event per check, none lost");
}

pub(crate) async fn a_transition_is_written_back_with_its_audit(h: &dyn Harness) {
    let b = h.open().await;
    let (v, _, _) = new_verification(&b, "console", "dev").await;
    b.put_verification(v.clone(), None).await.expect("put");
    let canceled = update_verification(
        &*b,
        v.id,
        |v| v.cancel(T0 + 1),
        |v, ok| {
            assert_eq!(v.status, Status::Canceled, "the audit sees the state being written");
            ok.then(|| entry(T0 + 1, "otp.cancel"))
        },
    )
    .await
    .expect("update");
    assert_eq!(canceled, Some(true));
    assert_eq!(b.get_verification(v.id).await.expect("get").expect("stored").status, Status::Canceled);
    let again = update_verification(&*b, v.id, |v| v.cancel(T0 + 2), |_, ok| ok.then(|| entry(T0, "otp.cancel")))
        .await
        .expect("update");
    assert_eq!(again, Some(false));
    let missing = update_verification(&*b, [7; 16], |v| v.cancel(T0), |_, _| Some(entry(T0, "otp.cancel")))
        .await
        .expect("update");
    assert_eq!(missing, None);
    assert_eq!(count(&events(&b).await, "otp.cancel"), 1, "only the cancel that happened is recorded");
}

pub(crate) async fn one_step_up_is_pending_per_key_under_concurrency(h: &dyn Harness) {
    let handles = h.handles(4).await;
    let subject = step_up_subject(&OWNER);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (b, subject) = (handles[i % 4].clone(), subject.clone());
        let (v, _, _) = new_verification(&b, "console", "dev").await;
        tasks.spawn(async move {
            let resumable = move |v: &mut Verification| {
                v.refresh(T0);
                v.status == Status::Pending
            };
            b.start_step_up(subject, T0, Box::new(resumable), v, entry(T0, "otp.step_up")).await.expect("start")
        });
    }
    let starts = tasks.join_all().await;
    let created: Vec<&Verification> =
        starts.iter().filter_map(|s| if let StepUpStart::Created(v) = s { Some(v) } else { None }).collect();
    assert_eq!(created.len(), 1, "exactly one start stores a verification");
    let id = created[0].id;
    for s in &starts {
        match s {
            StepUpStart::Created(_) => {}
            StepUpStart::Pending(v) => assert_eq!(v.id, id, "the others get the pending one"),
            StepUpStart::Locked(_) => panic!("nothing locked the key"),
        }
    }
    let b = &handles[0];
    assert_eq!(b.get_guard(subject.clone()).await.expect("guard").pending_step_up, Some(hex::encode(id)));
    assert_eq!(count(&events(b).await, "otp.step_up"), 1);
    // A locked key starts nothing.
    b.update_guard(
        subject.clone(),
        Box::new(|g: &mut Guard| {
            g.locked_until = Some(T0 + 100);
            None
        }),
    )
    .await
    .expect("lock");
    let (v, _, _) = new_verification(b, "console", "dev").await;
    let start = b.start_step_up(subject, T0, Box::new(|_| false), v.clone(), entry(T0, "otp.step_up")).await;
    assert!(matches!(start.expect("start"), StepUpStart::Locked(100)));
    assert_eq!(b.get_verification(v.id).await.expect("get"), None);
}

pub(crate) async fn a_totp_enrolment_is_kept_unless_replaced_and_checks_see_it(h: &dyn Harness) {
    let b = h.open().await;
    let put = |secret: u8, replace: bool| TotpPut {
        owner: OWNER,
        account: "alice".into(),
        secret: zeroize::Zeroizing::new(vec![secret; 20]),
        now: T0,
        replace,
    };
    let audit = || {
        Box::new(|outcome: TotpEnrolment| {
            entry(T0, if outcome == TotpEnrolment::Replaced { "totp.replaced" } else { "totp.enrol" })
        })
    };
    assert_eq!(b.put_totp(put(1, false), audit()).await.expect("enrol"), TotpEnrolment::Enrolled);
    assert_eq!(b.put_totp(put(2, false), audit()).await.expect("enrol"), TotpEnrolment::AlreadyEnrolled);
    assert_eq!(b.put_totp(put(3, true), audit()).await.expect("replace"), TotpEnrolment::Replaced);
    assert!(b.has_totp(OWNER, "alice".into()).await.expect("has"));
    assert!(!b.has_totp(OWNER, "bob".into()).await.expect("has"));
    let names = events(&b).await;
    assert_eq!((count(&names, "totp.enrol"), count(&names, "totp.replaced")), (2, 1));

    // A check sees the replacing secret, and the step it accepts is written back.
    let (v, _, _) = new_verification(&b, "totp", "alice").await;
    b.put_verification(v.clone(), None).await.expect("put");
    for expected_step in [None, Some(42)] {
        let seen = check_verification(
            &*b,
            v.id,
            |_| None,
            move |view| {
                let (secret, last_step) = view.totp.expect("the enrolment is visible");
                let seen = (secret.to_vec(), *last_step);
                *last_step = Some(42);
                seen
            },
            |_, _| None,
        )
        .await
        .expect("check")
        .expect("exists");
        assert_eq!(seen, (vec![3; 20], expected_step));
    }
}

pub(crate) async fn guards_change_with_their_audit_and_clear_ones_go(h: &dyn Harness) {
    let b = h.open().await;
    let subject = b"totp:x".to_vec();
    assert_eq!(b.get_guard(subject.clone()).await.expect("guard"), Guard::default());
    let policy = LockoutPolicy { max_failures: 2, window_secs: 100, lock_secs: 50, max_lock_secs: 500 };
    let changed = b
        .update_guard(
            subject.clone(),
            Box::new(move |g: &mut Guard| {
                g.record_failure(T0, &policy);
                g.record_failure(T0 + 1, &policy).map(|_| entry(T0, "otp.locked"))
            }),
        )
        .await
        .expect("update");
    assert_eq!(changed.locked(T0 + 1), Some(50));
    assert_eq!(b.get_guard(subject.clone()).await.expect("guard"), changed);
    let cleared = b
        .update_guard(
            subject.clone(),
            Box::new(|g: &mut Guard| {
                g.unlock();
                Some(entry(T0, "otp.unlocked"))
            }),
        )
        .await
        .expect("unlock");
    assert!(cleared.is_clear());
    assert_eq!(b.get_guard(subject).await.expect("guard"), Guard::default());
    let names = events(&b).await;
    assert_eq!((count(&names, "otp.locked"), count(&names, "otp.unlocked")), (1, 1));
}

pub(crate) async fn expired_verifications_are_swept(h: &dyn Harness) {
    let b = h.open().await;
    let (v, _, _) = new_verification(&b, "console", "dev").await;
    b.put_verification(v.clone(), None).await.expect("put");
    let end = v.expires_at;
    assert_eq!(b.sweep_verifications(end + 100, 100).await.expect("sweep"), 0, "kept `keep` seconds past its end");
    assert_eq!(b.sweep_verifications(50, 100).await.expect("sweep"), 0, "a clock before `keep` sweeps nothing");
    assert_eq!(b.sweep_verifications(end + 101, 100).await.expect("sweep"), 1);
    assert_eq!(b.get_verification(v.id).await.expect("get"), None);
}
