//! The data directory as one coordinator's private state: an exclusive lock (two coordinators on one data dir
//! would each sign the same results with the same nonces), and a journal that is never silently recreated.
//!
//! The journal is what makes submissions exactly-once. A journal that disappears from a data dir where `run`
//! made one before (it leaves [`JOURNAL_MARKER`] next to it) is a lost journal, not a first start: carrying
//! on with an empty one would re-submit whatever the old one had already sent. The operator has to say so (`--new-journal`), and
//! the submitters then recover from the chain before they sign anything (see
//! [`crate::mining::submitter`]).

use crate::{
    farm::{FarmError, Identity, identity::TOKEN_FILE},
    mining::journal::{Journal, JournalError},
};
use std::{
    fs::File,
    path::{Path, PathBuf},
};

/// File name of the journal in the data directory.
pub const JOURNAL_FILE: &str = "journal.sqlite";
/// File name of the lock in the data directory.
pub const LOCK_FILE: &str = "coordinator.lock";
/// Left next to the journal when `run` makes one: its presence without a journal means the journal was lost.
pub const JOURNAL_MARKER: &str = "journal.made";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory cannot be created or read.
    #[error("data dir {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data dir {0} is in use by another coordinator (its lock is held): stop it, or give this one its own --data-dir"
    )]
    InUse(PathBuf),
    /// The journal is missing or empty although an earlier run made one here.
    #[error(
        "the journal {0} is missing or empty, but an earlier run made one in this data dir (journal.made is there): \
         restore the journal, or pass --new-journal to start a new one (results already on chain are then \
         recovered from the chain before anything is signed)"
    )]
    JournalLost(PathBuf),
    /// The journal does not open or fails its integrity check.
    #[error("journal {path}: {source}")]
    Journal {
        /// The journal's path.
        path: PathBuf,
        /// What is wrong.
        source: JournalError,
    },
}

/// The data directory when none is given: `~/.cpc-farm`; `None` without a home directory.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cpc-farm"))
}

/// The coordinator's certificate, key and join token: read from `identity_dir` when given (a Kubernetes
/// Secret, a backup: nothing is created there), else from `data_dir`, made on first start. Answers the
/// identity and the path of its join-token file.
pub fn load_farm_identity(
    data_dir: &Path,
    identity_dir: Option<&Path>,
) -> Result<(Identity, PathBuf), FarmError> {
    Ok(match identity_dir {
        Some(dir) => (Identity::load(dir)?, dir.join(TOKEN_FILE)),
        None => (Identity::load_or_create(data_dir)?, data_dir.join(TOKEN_FILE)),
    })
}

/// The held lock on a data directory; released when dropped (or when the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Takes the exclusive lock on `dir` (created if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, dir: dir.to_owned() }),
            Err(std::fs::TryLockError::WouldBlock) => Err(DataDirError::InUse(dir.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How the journal was opened.
#[derive(Debug)]
pub struct OpenedJournal {
    /// The journal.
    pub journal: Journal,
    /// True when it was made in this run: the submitters first recover from the chain.
    pub created: bool,
}

/// Opens the journal of `dir` for reading only, without taking the lock: reports (`identities`) run beside
/// the coordinator that holds it. A missing journal is an error (nothing is created).
pub fn open_journal_read_only(dir: &Path) -> Result<Journal, DataDirError> {
    let path = dir.join(JOURNAL_FILE);
    if !path.is_file() {
        return Err(DataDirError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no journal here: is this the --data-dir of `cpc-coordinator run`?",
            ),
        });
    }
    Journal::open_read_only(&path).map_err(|source| DataDirError::Journal { path, source })
}

/// Opens the journal of a locked data directory, checking its integrity. A missing or empty journal is
/// made anew only on a data dir that was never used, or with `allow_new` (`--new-journal`).
pub fn open_journal(lock: &DataDirLock, allow_new: bool) -> Result<OpenedJournal, DataDirError> {
    let dir = lock.dir();
    let path = dir.join(JOURNAL_FILE);
    let present = std::fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false);
    let marker = dir.join(JOURNAL_MARKER);
    if !present && marker.exists() && !allow_new {
        return Err(DataDirError::JournalLost(path));
    }
    let journal_err = |source| DataDirError::Journal { path: path.clone(), source };
    let journal = Journal::open(&path).map_err(journal_err)?;
    journal.check_integrity().map_err(journal_err)?;
    if !present || !marker.exists() {
        write_synced(&marker, format!("{}\n", crate::mining::journal::now_ms()).as_bytes())
            .map_err(|source| DataDirError::Io { path: marker.clone(), source })?;
    }
    Ok(OpenedJournal { journal, created: !present })
}

fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = File::create(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first");
        let e = DataDirLock::acquire(dir.path()).expect_err("second refused");
        assert!(matches!(e, DataDirError::InUse(_)), "{e}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again");
    }

    #[test]
    fn a_lost_journal_needs_new_journal_and_a_first_start_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `serve` or `job` may have made the farm identity first: still a first start for the journal.
        crate::farm::Identity::load_or_create(dir.path()).expect("identity");
        let lock = DataDirLock::acquire(dir.path()).expect("lock");
        let first = open_journal(&lock, false).expect("first start");
        assert!(first.created);
        drop(first);
        assert!(!open_journal(&lock, false).expect("reopen").created);
        std::fs::remove_file(dir.path().join(JOURNAL_FILE)).expect("delete");
        let e = open_journal(&lock, false).expect_err("lost journal refused");
        assert!(matches!(e, DataDirError::JournalLost(_)), "{e}");
        // An empty file is a lost journal too.
        std::fs::write(dir.path().join(JOURNAL_FILE), b"").expect("truncate");
        assert!(matches!(open_journal(&lock, false), Err(DataDirError::JournalLost(_))));
        assert!(open_journal(&lock, true).expect("--new-journal").created);
    }

    #[test]
    fn a_corrupt_journal_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = DataDirLock::acquire(dir.path()).expect("lock");
        let noise: Vec<u8> =
            (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(dir.path().join(JOURNAL_FILE), noise).expect("write");
        let e = open_journal(&lock, true).expect_err("corrupt refused").to_string();
        assert!(e.contains("journal"), "{e}");
    }
}
