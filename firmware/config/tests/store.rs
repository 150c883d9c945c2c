//! The revision store: commit, diff, commit-confirm (also across a restart), rollback, and the
//! refusals an operator meets.

mod common;

use std::time::{Duration, SystemTime};

use isthmus_config::{Error, RevisionKind, Store};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

const PSK: &str = "first-pre-shared-key-0123";

#[test]
fn commits_are_numbered_revisions_with_metadata_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.active().unwrap(), None);
    assert!(matches!(s.active_revision(), Err(Error::Empty)));
    let one = common::gateway(PSK, 0);
    let c1 = s.commit(&one, "alice", "initial", t(0)).unwrap();
    assert_eq!(c1.rev, 1);
    let two = common::gateway(PSK, 2);
    let c2 = s.commit(&two, "bob", "two more routes", t(60)).unwrap();
    assert_eq!(c2.rev, 2);
    assert_eq!(s.active().unwrap(), Some(2));
    let revs = s.revisions().unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(
        (revs[0].author.as_str(), revs[0].comment.as_str(), revs[0].time),
        ("alice", "initial", t(0))
    );
    assert_eq!(revs[1].kind, RevisionKind::Commit);
    assert_eq!(s.get(1).unwrap().text(), one);
    assert_eq!(s.get(2).unwrap().config().unwrap().route_tables[0].routes.len(), 3);
    assert!(matches!(s.get(3), Err(Error::NoSuchRevision(3))));
    // The Debug of a revision does not print its text (it holds the PSK).
    assert!(!format!("{:?}", s.get(1).unwrap()).contains(PSK));
    s.verify(true).unwrap();
}

#[test]
fn invalid_and_unchanged_commits_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let good = common::gateway(PSK, 0);
    s.commit(&good, "a", "", t(0)).unwrap();
    let bad = good.replace("customer_gateway = \"idc\"\npsk", "customer_gateway = \"nope\"\npsk");
    match s.commit(&bad, "a", "", t(1)) {
        Err(Error::Invalid(e)) => assert!(e.has_path("tunnel[0].customer_gateway"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.commit(&good, "a", "", t(2)), Err(Error::Unchanged(1))));
    assert_eq!(s.revisions().unwrap().len(), 1);
}

#[test]
fn diff_is_readable_and_shows_key_changes_only_as_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.commit(&common::gateway(PSK, 0), "a", "", t(0)).unwrap();
    s.commit(&common::gateway("second-pre-shared-key-4567", 1), "a", "", t(1)).unwrap();
    let d = s.diff(1, 2).unwrap();
    assert!(d.contains("--- revision 1") && d.contains("+++ revision 2"), "{d}");
    assert!(d.contains("+prefix = \"10.30.0.0/24\""), "{d}");
    let (fp1, fp2) = (
        isthmus_config::secret::fingerprint(PSK),
        isthmus_config::secret::fingerprint("second-pre-shared-key-4567"),
    );
    assert!(d.contains(&format!("-psk = \"<redacted sha256:{fp1}>\"")), "{d}");
    assert!(d.contains(&format!("+psk = \"<redacted sha256:{fp2}>\"")), "{d}");
    assert!(!d.contains(PSK) && !d.contains("second-pre-shared"), "{d}");
    // Reformatting alone changes nothing in the canonical form.
    let reformatted =
        common::gateway(PSK, 0).replace("name = \"gw\"", "name   =   \"gw\"   # same");
    s.commit(&reformatted, "a", "", t(2)).unwrap();
    assert_eq!(s.diff(1, 3).unwrap(), "");
}

#[test]
fn commit_confirmed_reverts_by_itself_unless_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let old = common::gateway(PSK, 0);
    let new = common::gateway(PSK, 1);
    assert!(matches!(
        s.commit_confirmed(&old, "a", "", Duration::from_secs(60), t(0)),
        Err(Error::NothingToRevertTo)
    ));
    s.commit(&old, "a", "base", t(0)).unwrap();

    // Confirmed in time: stays.
    let c = s.commit_confirmed(&new, "a", "try", Duration::from_secs(300), t(10)).unwrap();
    assert_eq!(s.pending().unwrap().unwrap().deadline, t(310));
    assert!(matches!(
        s.commit(&old, "a", "", t(20)),
        Err(Error::ConfirmPending { rev: 2, previous: 1, remaining_secs: 290 })
    ));
    assert_eq!(s.poll(t(309)).unwrap(), None);
    assert_eq!(s.confirm(t(309)).unwrap(), c.rev);
    assert_eq!(s.pending().unwrap(), None);
    assert!(matches!(s.confirm(t(311)), Err(Error::NothingToConfirm)));
    assert_eq!(s.poll(t(10_000)).unwrap(), None);
    assert_eq!(s.active().unwrap(), Some(2));

    // Not confirmed: the deadline passes and the previous text comes back as a new revision.
    let c = s.commit_confirmed(&old, "a", "try again", Duration::from_secs(60), t(400)).unwrap();
    assert_eq!(c.rev, 3);
    let r = s.poll(t(460)).unwrap().unwrap();
    assert_eq!((r.unconfirmed, r.restored, r.rev), (3, 2, 4));
    assert_eq!(s.active().unwrap(), Some(4));
    assert_eq!(s.get(4).unwrap().text(), new);
    let info = &s.revisions().unwrap()[3];
    assert_eq!(info.kind, RevisionKind::Revert { unconfirmed: 3, to: 2 });
    assert!(info.comment.contains("not confirmed"));

    // Confirming too late says what happened.
    s.commit_confirmed(&old, "a", "", Duration::from_secs(60), t(500)).unwrap();
    match s.confirm(t(561)) {
        Err(Error::ConfirmExpired { rev: 5, restored_as: 6 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get(6).unwrap().text(), new);
    s.verify(true).unwrap();
}

#[test]
fn the_revert_deadline_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old = common::gateway(PSK, 0);
    {
        let s = Store::open(dir.path()).unwrap();
        s.commit(&old, "a", "", t(0)).unwrap();
        s.commit_confirmed(&common::gateway(PSK, 3), "a", "", Duration::from_secs(120), t(10))
            .unwrap();
        // The daemon dies here.
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.active().unwrap(), Some(2));
    assert_eq!(s.pending().unwrap().unwrap().deadline, t(130));
    assert_eq!(s.poll(t(100)).unwrap(), None);
    drop(s);
    // Restarted again after the deadline (power was off through it).
    let s = Store::open(dir.path()).unwrap();
    let r = s.poll(t(1000)).unwrap().unwrap();
    assert_eq!((r.unconfirmed, r.restored), (2, 1));
    assert_eq!(s.active_revision().unwrap().text(), old);
    s.verify(true).unwrap();
}

#[test]
fn rollback_makes_a_new_revision_and_cancels_a_pending_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    for k in 0..3 {
        s.commit(&common::gateway(PSK, k), "a", &format!("rev {}", k + 1), t(k as u64)).unwrap();
    }
    s.commit_confirmed(&common::gateway(PSK, 9), "a", "", Duration::from_secs(60), t(5)).unwrap();
    let c = s.rollback(1, "carol", "back to the start", t(6)).unwrap();
    assert_eq!(c.rev, 5);
    assert_eq!(s.pending().unwrap(), None);
    assert_eq!(s.active_revision().unwrap().text(), common::gateway(PSK, 0));
    let info = s.active_revision().unwrap().info;
    assert_eq!((info.kind, info.author.as_str()), (RevisionKind::Rollback { to: 1 }, "carol"));
    // Nothing to revert later: the rollback cancelled the trial.
    assert_eq!(s.poll(t(1000)).unwrap(), None);
    assert!(matches!(s.rollback(1, "a", "", t(7)), Err(Error::Unchanged(5))));
    assert!(matches!(s.rollback(42, "a", "", t(7)), Err(Error::NoSuchRevision(42))));
    assert_eq!(s.diff(1, 5).unwrap(), "");
    s.verify(true).unwrap();
}

#[test]
fn a_checked_configuration_commits_without_a_second_parse() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let weak = common::gateway("weak", 0);
    let checked = isthmus_config::Config::check(&weak).unwrap();
    assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
    assert!(!format!("{checked:?}").contains("psk = \"weak\""));
    let c = s.commit_checked(&checked, "a", "", t(0)).unwrap();
    assert_eq!(c.warnings, checked.warnings);
    assert_eq!(s.get(c.rev).unwrap().text(), weak);
    let next = isthmus_config::Config::check(&common::gateway("weak", 1)).unwrap();
    let c = s.commit_confirmed_checked(&next, "a", "", Duration::from_secs(5), t(1)).unwrap();
    assert_eq!(s.pending().unwrap().unwrap().rev, c.rev);
}
