//! The revision store on sled: every commit is a numbered, immutable revision (time, author,
//! comment, text); one key says which revision is active.
//!
//! Crash safety: a commit writes the revision's metadata, its text, the revision counter and the
//! active pointer in **one sled transaction**, then flushes. sled applies a transaction
//! atomically on recovery, so a process killed at any moment leaves either the old state or the
//! new one; a commit that returned is durable. Nothing is ever rewritten in place: rollbacks and
//! automatic reverts are new revisions whose text is an older one's.
//!
//! Commit-confirm: the deadline is stored with the commit, in the same transaction. The daemon
//! calls [`Store::poll`] at start-up and whenever [`Store::pending`]'s deadline passes; after a
//! crash or power cut inside the window, the first `poll` after restart reverts. Time is an input
//! (`now`), never read here.
//!
//! Texts are stored as content-defined chunks of whole lines, each under its SHA-256, and a
//! revision's text is the list of its chunks' hashes. A one-line change to a large document writes
//! one or two new chunks, not the whole document again: commits stay fast and a long history of
//! small changes costs little disk.
//!
//! Layout (one tree): `meta/last` (u64 BE, highest revision), `meta/active` (u64 BE),
//! `meta/pending` (JSON, only while a commit awaits confirmation), `meta/applied` (u64 BE
//! each, the last revisions the daemon brought every plane to, newest last), `rev/<u64 BE>` (JSON
//! [`RevisionInfo`]), `text/<u64 BE>` (the text's chunk hashes, 32 bytes each), `chunk/<hash>`
//! (chunk bytes). Texts hold inline secrets: the directory is created mode 0700.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::Checked;
use crate::error::{Error, Issue};
use crate::schema::Config;

const LAST: &[u8] = b"meta/last";
const ACTIVE: &[u8] = b"meta/active";
const PENDING: &[u8] = b"meta/pending";
const APPLIED: &[u8] = b"meta/applied";

/// How many applied revisions [`Store::applied_revisions`] remembers.
const APPLIED_KEPT: usize = 16;

fn rev_key(n: u64) -> Vec<u8> {
    let mut k = b"rev/".to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn text_key(n: u64) -> Vec<u8> {
    let mut k = b"text/".to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn chunk_key(hash: &[u8]) -> Vec<u8> {
    let mut k = b"chunk/".to_vec();
    k.extend_from_slice(hash);
    k
}

/// Chunks of about 2 KiB (at least 1 KiB, at most 64 KiB) that end after a line whose hash
/// matches: where a chunk ends depends on the lines around it, not on its offset, so an edit
/// changes only the chunks it touches.
fn chunks(text: &str) -> Vec<&str> {
    const MIN: usize = 1024;
    const MAX: usize = 64 * 1024;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2048 + 1);
    let mut start = 0;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a of the current line
    for (i, &b) in bytes.iter().enumerate() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        if b == b'\n' {
            let len = i + 1 - start;
            if (len >= MIN && h.rotate_left(17).is_multiple_of(32)) || len >= MAX {
                out.push(&text[start..=i]);
                start = i + 1;
            }
            h = 0xcbf2_9ce4_8422_2325;
        }
    }
    if start < bytes.len() {
        out.push(&text[start..]);
    }
    out
}

/// A text cut into chunks: (hash, bytes) per chunk, and the manifest (the hashes in order).
fn split(text: &str) -> (Vec<([u8; 32], &str)>, Vec<u8>) {
    let parts: Vec<([u8; 32], &str)> =
        chunks(text).into_iter().map(|c| (Sha256::digest(c.as_bytes()).into(), c)).collect();
    let manifest = parts.iter().flat_map(|(h, _)| h.iter().copied()).collect();
    (parts, manifest)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn u64_of(v: &[u8]) -> Result<u64, Error> {
    let b: [u8; 8] = v.try_into().map_err(|_| Error::Corrupt("a counter is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// How a revision came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RevisionKind {
    /// A plain commit.
    Commit,
    /// A commit that reverts unless confirmed by `deadline`.
    CommitConfirmed {
        /// When it reverts.
        deadline: SystemTime,
    },
    /// An operator's rollback to an older revision.
    Rollback {
        /// The revision whose text this one repeats.
        to: u64,
    },
    /// The automatic revert of an unconfirmed commit.
    Revert {
        /// The revision that was not confirmed.
        unconfirmed: u64,
        /// The revision whose text this one repeats.
        to: u64,
    },
}

/// What is known about a revision without reading its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Revision number, from 1.
    pub number: u64,
    /// When it was committed (the `now` given).
    pub time: SystemTime,
    /// Who committed it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// How.
    #[serde(flatten)]
    pub kind: RevisionKind,
    /// SHA-256 of the text (hex), to check the text read back.
    pub sha256: String,
}

/// A revision with its text.
#[derive(Clone)]
pub struct Revision {
    /// Metadata.
    pub info: RevisionInfo,
    text: String,
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The text holds inline secrets: never print it.
        f.debug_struct("Revision")
            .field("info", &self.info)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

impl Revision {
    /// The text exactly as committed. It may hold inline secrets: do not log or return it
    /// through the API; use [`Revision::show`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Parses the text.
    pub fn config(&self) -> Result<Config, Error> {
        Config::from_toml(&self.text).map_err(Error::Invalid)
    }

    /// The canonical, secret-free form.
    pub fn show(&self) -> Result<String, Error> {
        Ok(self.config()?.to_toml_redacted())
    }
}

/// A commit awaiting confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The unconfirmed revision (the active one).
    pub rev: u64,
    /// The revision it reverts to.
    pub previous: u64,
    /// When it reverts.
    pub deadline: SystemTime,
}

/// The result of a successful commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The new revision, now active.
    pub rev: u64,
    /// Validation warnings about it.
    pub warnings: Vec<Issue>,
}

/// What an automatic revert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reverted {
    /// The revision that was not confirmed in time.
    pub unconfirmed: u64,
    /// The revision whose configuration is back.
    pub restored: u64,
    /// The new revision that holds it (now active).
    pub rev: u64,
}

/// The revision store.
pub struct Store {
    db: sled::Db,
    // One writer at a time: commits read the active revision and write the next one.
    write: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

type Tx<T> = Result<T, ConflictableTransactionError<Error>>;

fn abort<T>(e: Error) -> Tx<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::from(e),
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn tx_u64(tx: &TransactionalTree, key: &[u8]) -> Tx<Option<u64>> {
    match tx.get(key)? {
        Some(v) => match u64_of(&v) {
            Ok(n) => Ok(Some(n)),
            Err(e) => abort(e),
        },
        None => Ok(None),
    }
}

fn tx_pending(tx: &TransactionalTree) -> Tx<Option<Pending>> {
    match tx.get(PENDING)? {
        Some(v) => match serde_json::from_slice(&v) {
            Ok(p) => Ok(Some(p)),
            Err(e) => abort(Error::Corrupt(format!("pending confirmation record: {e}"))),
        },
        None => Ok(None),
    }
}

fn tx_info(tx: &TransactionalTree, rev: u64) -> Tx<RevisionInfo> {
    match tx.get(rev_key(rev))? {
        Some(v) => match serde_json::from_slice(&v) {
            Ok(i) => Ok(i),
            Err(e) => abort(Error::Corrupt(format!("revision {rev} metadata: {e}"))),
        },
        None => abort(Error::NoSuchRevision(rev)),
    }
}

/// Stores the chunks that are not stored yet, inside a transaction.
fn tx_chunks(tx: &TransactionalTree, parts: &[([u8; 32], &str)]) -> Tx<()> {
    for (h, c) in parts {
        let k = chunk_key(h);
        if tx.get(&k)?.is_none() {
            tx.insert(k, c.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes revision `info` whose text is `manifest` (chunks already stored) and makes it
/// active, inside a transaction.
fn tx_write(tx: &TransactionalTree, info: &RevisionInfo, manifest: &[u8]) -> Tx<()> {
    tx.insert(rev_key(info.number), json(info))?;
    tx.insert(text_key(info.number), manifest)?;
    tx.insert(LAST, &info.number.to_be_bytes())?;
    tx.insert(ACTIVE, &info.number.to_be_bytes())?;
    Ok(())
}

fn remaining(deadline: SystemTime, now: SystemTime) -> u64 {
    deadline.duration_since(now).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`. The directory is made private (mode 0700): the
    /// revisions hold inline secrets.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, Error> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("{}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::Store(format!("{}: {e}", dir.display())))?;
        }
        let db = sled::Config::new().path(dir).cache_capacity(64 << 20).open()?;
        Ok(Store { db, write: Mutex::new(()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }

    /// Validates `text` and commits it as a new active revision.
    ///
    /// Refused while a commit-confirmed revision awaits confirmation, and when `text` is
    /// identical to the active revision.
    pub fn commit(
        &self,
        text: &str,
        author: &str,
        comment: &str,
        now: SystemTime,
    ) -> Result<Committed, Error> {
        let checked = Config::check(text).map_err(Error::Invalid)?;
        self.commit_inner(&checked, author, comment, now, None)
    }

    /// [`Store::commit`] of a text already checked with [`Config::check`] (a daemon that builds
    /// its apply plan from the parsed configuration does not parse it twice).
    pub fn commit_checked(
        &self,
        checked: &Checked,
        author: &str,
        comment: &str,
        now: SystemTime,
    ) -> Result<Committed, Error> {
        self.commit_inner(checked, author, comment, now, None)
    }

    /// Like [`Store::commit`], but the revision reverts to the current one unless
    /// [`Store::confirm`] is called within `timeout`. The deadline is stored with the commit, so
    /// the revert also happens after a restart ([`Store::poll`]).
    pub fn commit_confirmed(
        &self,
        text: &str,
        author: &str,
        comment: &str,
        timeout: Duration,
        now: SystemTime,
    ) -> Result<Committed, Error> {
        let checked = Config::check(text).map_err(Error::Invalid)?;
        self.commit_inner(&checked, author, comment, now, Some(now + timeout))
    }

    /// [`Store::commit_confirmed`] of a text already checked with [`Config::check`].
    pub fn commit_confirmed_checked(
        &self,
        checked: &Checked,
        author: &str,
        comment: &str,
        timeout: Duration,
        now: SystemTime,
    ) -> Result<Committed, Error> {
        self.commit_inner(checked, author, comment, now, Some(now + timeout))
    }

    fn commit_inner(
        &self,
        checked: &Checked,
        author: &str,
        comment: &str,
        now: SystemTime,
        deadline: Option<SystemTime>,
    ) -> Result<Committed, Error> {
        let text = checked.text();
        let _w = self.lock();
        self.poll_locked(now)?;
        let sha = sha256_hex(text);
        let (parts, manifest) = split(text);
        let rev = self
            .db
            .transaction(|tx| {
                if let Some(p) = tx_pending(tx)? {
                    return abort(Error::ConfirmPending {
                        rev: p.rev,
                        previous: p.previous,
                        remaining_secs: remaining(p.deadline, now),
                    });
                }
                let active = tx_u64(tx, ACTIVE)?;
                if let Some(a) = active
                    && tx_info(tx, a)?.sha256 == sha
                {
                    return abort(Error::Unchanged(a));
                }
                let number = tx_u64(tx, LAST)?.unwrap_or(0) + 1;
                let kind = match deadline {
                    Some(d) => {
                        let Some(previous) = active else { return abort(Error::NothingToRevertTo) };
                        tx.insert(PENDING, json(&Pending { rev: number, previous, deadline: d }))?;
                        RevisionKind::CommitConfirmed { deadline: d }
                    }
                    None => RevisionKind::Commit,
                };
                let info = RevisionInfo {
                    number,
                    time: now,
                    author: author.to_owned(),
                    comment: comment.to_owned(),
                    kind,
                    sha256: sha.clone(),
                };
                tx_chunks(tx, &parts)?;
                tx_write(tx, &info, &manifest)?;
                Ok(number)
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(Committed { rev, warnings: checked.warnings.clone() })
    }

    /// Confirms the pending commit-confirmed revision. Returns its number.
    ///
    /// After the deadline this reverts instead and returns [`Error::ConfirmExpired`].
    pub fn confirm(&self, now: SystemTime) -> Result<u64, Error> {
        let _w = self.lock();
        if let Some(r) = self.poll_locked(now)? {
            return Err(Error::ConfirmExpired { rev: r.unconfirmed, restored_as: r.rev });
        }
        let rev = self
            .db
            .transaction(|tx| {
                let Some(p) = tx_pending(tx)? else { return abort(Error::NothingToConfirm) };
                tx.remove(PENDING)?;
                Ok(p.rev)
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(rev)
    }

    /// Reverts the pending commit when its deadline has passed. Call at start-up and when the
    /// deadline from [`Store::pending`] comes. Returns what it did, if anything.
    pub fn poll(&self, now: SystemTime) -> Result<Option<Reverted>, Error> {
        let _w = self.lock();
        self.poll_locked(now)
    }

    fn poll_locked(&self, now: SystemTime) -> Result<Option<Reverted>, Error> {
        match self.pending()? {
            Some(p) if now >= p.deadline => {}
            _ => return Ok(None),
        }
        let done = self
            .db
            .transaction(|tx| {
                let Some(p) = tx_pending(tx)? else { return Ok(None) };
                let Some(manifest) = tx.get(text_key(p.previous))? else {
                    return abort(Error::Corrupt(format!(
                        "revision {} (to revert to) has no text",
                        p.previous
                    )));
                };
                let sha256 = tx_info(tx, p.previous)?.sha256;
                let number = tx_u64(tx, LAST)?.unwrap_or(0) + 1;
                let info = RevisionInfo {
                    number,
                    time: now,
                    author: "isthmus".into(),
                    comment: format!(
                        "automatic revert: revision {} was not confirmed in time",
                        p.rev
                    ),
                    kind: RevisionKind::Revert { unconfirmed: p.rev, to: p.previous },
                    sha256,
                };
                tx_write(tx, &info, &manifest)?;
                tx.remove(PENDING)?;
                Ok(Some(Reverted { unconfirmed: p.rev, restored: p.previous, rev: number }))
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(done)
    }

    /// Makes a new revision whose text is revision `to`'s (the history stays linear). Cancels a
    /// pending commit-confirm. The text is validated again: rules may have changed since.
    pub fn rollback(
        &self,
        to: u64,
        author: &str,
        comment: &str,
        now: SystemTime,
    ) -> Result<Committed, Error> {
        let old = self.get(to)?;
        let checked = Config::check(old.text()).map_err(Error::Invalid)?;
        let _w = self.lock();
        let rev = self
            .db
            .transaction(|tx| {
                // Rolling back to what is already active would only add noise to the history.
                if let Some(a) = tx_u64(tx, ACTIVE)?
                    && tx_info(tx, a)?.sha256 == old.info.sha256
                {
                    return abort(Error::Unchanged(a));
                }
                let number = tx_u64(tx, LAST)?.unwrap_or(0) + 1;
                let info = RevisionInfo {
                    number,
                    time: now,
                    author: author.to_owned(),
                    comment: comment.to_owned(),
                    kind: RevisionKind::Rollback { to },
                    sha256: old.info.sha256.clone(),
                };
                let Some(manifest) = tx.get(text_key(to))? else {
                    return abort(Error::Corrupt(format!("revision {to} has no text")));
                };
                tx_write(tx, &info, &manifest)?;
                tx.remove(PENDING)?;
                Ok(number)
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(Committed { rev, warnings: checked.warnings })
    }

    /// The active revision number; `None` before the first commit.
    pub fn active(&self) -> Result<Option<u64>, Error> {
        self.db.get(ACTIVE)?.map(|v| u64_of(&v)).transpose()
    }

    /// Records that revision `rev` was applied in full (the daemon calls this after an apply
    /// succeeds): the revisions to fall back to when a newer one cannot be applied.
    pub fn mark_applied(&self, rev: u64) -> Result<(), Error> {
        let mut list = self.applied_revisions()?;
        list.retain(|r| *r != rev);
        list.push(rev);
        let keep = list.len().saturating_sub(APPLIED_KEPT);
        let bytes: Vec<u8> = list[keep..].iter().flat_map(|r| r.to_be_bytes()).collect();
        self.db.insert(APPLIED, bytes)?;
        self.flush()
    }

    /// The last revision applied in full ([`Store::mark_applied`]); `None` when none ever was.
    pub fn last_applied(&self) -> Result<Option<u64>, Error> {
        Ok(self.applied_revisions()?.last().copied())
    }

    /// The revisions last applied in full, oldest first (at most 16, each once).
    pub fn applied_revisions(&self) -> Result<Vec<u64>, Error> {
        let Some(v) = self.db.get(APPLIED)? else { return Ok(Vec::new()) };
        v.chunks(8).map(u64_of).collect()
    }

    /// The active revision.
    pub fn active_revision(&self) -> Result<Revision, Error> {
        let a = self.active()?.ok_or(Error::Empty)?;
        self.get(a)
    }

    /// The pending commit-confirm, if one awaits confirmation.
    pub fn pending(&self) -> Result<Option<Pending>, Error> {
        match self.db.get(PENDING)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("pending confirmation record: {e}"))),
            None => Ok(None),
        }
    }

    fn info(&self, rev: u64) -> Result<RevisionInfo, Error> {
        let v = self.db.get(rev_key(rev))?.ok_or(Error::NoSuchRevision(rev))?;
        serde_json::from_slice(&v)
            .map_err(|e| Error::Corrupt(format!("revision {rev} metadata: {e}")))
    }

    /// Revision `rev`, with its text (checked against its recorded hash).
    pub fn get(&self, rev: u64) -> Result<Revision, Error> {
        let info = self.info(rev)?;
        let manifest = self
            .db
            .get(text_key(rev))?
            .ok_or_else(|| Error::Corrupt(format!("revision {rev} has no text")))?;
        if manifest.len() % 32 != 0 {
            return Err(Error::Corrupt(format!("revision {rev} has a torn chunk list")));
        }
        let mut raw = Vec::new();
        for h in manifest.chunks(32) {
            let c = self
                .db
                .get(chunk_key(h))?
                .ok_or_else(|| Error::Corrupt(format!("revision {rev} misses a chunk")))?;
            raw.extend_from_slice(&c);
        }
        let text = String::from_utf8(raw)
            .map_err(|_| Error::Corrupt(format!("revision {rev} text is not UTF-8")))?;
        if sha256_hex(&text) != info.sha256 {
            return Err(Error::Corrupt(format!("revision {rev} text does not match its hash")));
        }
        Ok(Revision { info, text })
    }

    /// Every revision's metadata, oldest first.
    pub fn revisions(&self) -> Result<Vec<RevisionInfo>, Error> {
        self.db
            .scan_prefix(b"rev/")
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v)
                    .map_err(|e| Error::Corrupt(format!("revision metadata: {e}")))
            })
            .collect()
    }

    /// A unified line diff of the canonical, secret-free forms of revisions `a` and `b`
    /// (empty when they configure the same thing).
    pub fn diff(&self, a: u64, b: u64) -> Result<String, Error> {
        let (ta, tb) = (self.get(a)?.show()?, self.get(b)?.show()?);
        Ok(crate::diff::unified(&ta, &tb, &format!("revision {a}"), &format!("revision {b}")))
    }

    /// Checks that the store is consistent: counters, the active pointer and a pending confirm
    /// point at revisions that exist; every revision has its text, the text matches its hash
    /// and (when `parse` is set) parses. For start-up checks and the crash test.
    pub fn verify(&self, parse: bool) -> Result<(), Error> {
        let last = self.db.get(LAST)?.map(|v| u64_of(&v)).transpose()?.unwrap_or(0);
        let infos = self.revisions()?;
        let numbers: Vec<u64> = infos.iter().map(|i| i.number).collect();
        let expected: Vec<u64> = (1..=last).collect();
        if numbers != expected {
            return Err(Error::Corrupt(format!(
                "revisions {}..={last} expected, found {} revisions",
                u64::from(last > 0),
                numbers.len()
            )));
        }
        match (self.active()?, last) {
            (None, 0) => {}
            (Some(a), l) if a >= 1 && a <= l => {}
            (a, l) => {
                return Err(Error::Corrupt(format!(
                    "active revision {a:?} with last revision {l}"
                )));
            }
        }
        if let Some(p) = self.pending()?
            && (Some(p.rev) != self.active()? || p.previous >= p.rev)
        {
            return Err(Error::Corrupt(format!(
                "pending confirmation {p:?} does not match the active revision"
            )));
        }
        for n in numbers {
            let r = self.get(n)?;
            if parse {
                r.config()
                    .map_err(|e| Error::Corrupt(format!("revision {n} does not parse: {e}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_and_an_edit_changes_few_of_them() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!(
                "[[route_table.route]]\nprefix = \"10.{}.{}.0/24\"\nmetric = 100\n",
                i / 256,
                i % 256
            ));
        }
        let a = chunks(&text);
        assert_eq!(a.concat(), text);
        assert!(a.iter().all(|c| c.len() <= 64 * 1024 && c.ends_with('\n')));
        assert!(a.len() > 20, "{} chunks", a.len());
        let edited = text.replacen("metric = 100", "metric = 150", 1);
        let (pa, _) = split(&text);
        let (pb, _) = split(&edited);
        let old: std::collections::HashSet<_> = pa.iter().map(|(h, _)| *h).collect();
        let new = pb.iter().filter(|(h, _)| !old.contains(h)).count();
        assert!(new <= 2, "{new} chunks changed for one line");
        assert_eq!(chunks(""), Vec::<&str>::new());
        assert_eq!(chunks("no newline"), vec!["no newline"]);
    }

    #[test]
    fn applied_revisions_are_remembered_newest_last_each_once_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_applied().unwrap(), None);
        for r in [1, 2, 1, 3] {
            s.mark_applied(r).unwrap();
        }
        assert_eq!(s.applied_revisions().unwrap(), [2, 1, 3]);
        assert_eq!(s.last_applied().unwrap(), Some(3));
        for r in 10..40 {
            s.mark_applied(r).unwrap();
        }
        let list = s.applied_revisions().unwrap();
        assert_eq!(list.len(), APPLIED_KEPT);
        assert_eq!(list.last(), Some(&39));
    }
}
