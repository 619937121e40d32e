//! A store's identity: at its first start a store file gets an id, kept in
//! the file and in a marker beside it (`<file>.id`), so a file that is later
//! missing, empty or another store is refused rather than silently taken for
//! the one that held acknowledged data.

use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};

/// Why a store is not the one its marker names. The message says what to do.
#[derive(Debug, thiserror::Error)]
pub(super) enum IdentityError {
    #[error(
        "the {found}, but `{}` says it held store {id}: its acknowledged data would be lost. Restore the file from a backup, or start with --accept-empty-store to begin a new, empty store",
        marker.display()
    )]
    NotTheStore {
        found: String,
        marker: PathBuf,
        id: String,
    },
    #[error("{0}")]
    Storage(#[from] redb::Error),
    #[error("cannot write the store marker: {0}")]
    Marker(std::io::Error),
}

/// The id the marker beside `path` names, if there is one.
pub(super) fn read_marker(path: &Path) -> Option<String> {
    std::fs::read_to_string(marker_path(path))
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// What opening does when a store's marker says it held data but the file
/// is missing, empty or another store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmptyStore {
    /// Refuse to open, changing nothing.
    #[default]
    Refuse,
    /// Start a new, empty store (the operator accepted losing the old one).
    Accept,
}

/// The id of a store, written once at its first start.
const STORE_ID: TableDefinition<&str, &str> = TableDefinition::new("switchyard_store");
const STORE_ID_KEY: &str = "id";

/// `<file>.id` beside the store file.
pub(super) fn marker_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".id");
    path.with_file_name(name)
}

/// Refuses, before touching the file, to open a missing or empty store
/// whose marker says it held data.
pub(super) fn refuse_vanished_store(
    path: &Path,
    marker: &Option<String>,
) -> Result<(), IdentityError> {
    let Some(id) = marker else { return Ok(()) };
    let state = match std::fs::metadata(path) {
        Err(_) => "missing",
        Ok(meta) if meta.len() == 0 => "empty",
        Ok(_) => return Ok(()),
    };
    Err(IdentityError::NotTheStore {
        found: format!("store file is {state}"),
        marker: marker_path(path),
        id: id.clone(),
    })
}

/// Checks the opened store is the one the marker names; gives a new store
/// its id (and marker). Writes nothing when it refuses.
pub(super) fn claim_store_id(
    db: &Database,
    path: &Path,
    marker: Option<String>,
    empty: EmptyStore,
) -> Result<(), IdentityError> {
    let stored: Option<String> = {
        let txn = db.begin_read().map_err(redb::Error::from)?;
        match txn.open_table(STORE_ID) {
            Ok(table) => table
                .get(STORE_ID_KEY)
                .map_err(redb::Error::from)?
                .map(|id| id.value().to_owned()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(err) => return Err(redb::Error::from(err).into()),
        }
    };
    let id = match (marker, stored) {
        (Some(marker), Some(stored)) if marker == stored => return Ok(()),
        (Some(marker), stored) if empty == EmptyStore::Refuse => {
            let found = match stored {
                Some(stored) => format!("file holds store {stored}"),
                None => "file holds a new, empty store".to_owned(),
            };
            return Err(IdentityError::NotTheStore {
                found,
                marker: marker_path(path),
                id: marker,
            });
        }
        (_, Some(stored)) => stored,
        (_, None) => {
            let id = format!("{:032x}", rand::random::<u128>());
            let txn = db.begin_write().map_err(redb::Error::from)?;
            txn.open_table(STORE_ID)
                .map_err(redb::Error::from)?
                .insert(STORE_ID_KEY, id.as_str())
                .map_err(redb::Error::from)?;
            txn.commit().map_err(redb::Error::from)?;
            id
        }
    };
    // After the id is durable in the file: a crash in between only leaves
    // the marker to be written at the next start.
    write_marker(&marker_path(path), &id).map_err(IdentityError::Marker)
}

fn write_marker(marker: &Path, id: &str) -> std::io::Result<()> {
    let temporary = marker.with_extension("id.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(format!("{id}\n").as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, marker)?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
