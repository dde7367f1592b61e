//! File primitives of the state folder: atomic private writes, reads that refuse symbolic
//! links, the writers' lock, and the check of who may write the folder.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::PluginError;

/// An I/O error on `path`, as a state folder error.
pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> PluginError {
    PluginError::StateFolder(format!("{what} {}: {e}", path.display()))
}

/// `O_NOFOLLOW`: a path that is a symbolic link is refused.
fn no_follow() -> i32 {
    // The flag's bits fit an i32 (they are a C int).
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Reads a file of the folder through one handle opened with `O_NOFOLLOW`. `Ok(None)` when
/// it does not exist.
///
/// # Errors
/// I/O errors, a symbolic link, something else than a regular file.
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>, PluginError> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(PluginError::StateFolder(format!(
                "{} is a symbolic link; the state folder holds regular files only",
                path.display()
            )));
        }
        Err(e) => return Err(io_err("opening", path, e)),
    };
    let meta = file.metadata().map_err(|e| io_err("stat", path, e))?;
    if !meta.is_file() {
        return Err(PluginError::StateFolder(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| io_err("reading", path, e))?;
    Ok(Some(bytes))
}

/// Refuses a folder that group or others can write, or that another user owns: whoever
/// can write it can replace a key record, the active key or the lock.
///
/// # Errors
/// `StateFolder` naming the folder and what to do.
pub fn check_private_folder(path: &Path) -> Result<(), PluginError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_err("stat", path, e))?;
    let meta = if meta.file_type().is_symlink() {
        // The folder itself may be reached through a link (a mount layout); what counts
        // is the folder it names.
        fs::metadata(path).map_err(|e| io_err("stat", path, e))?
    } else {
        meta
    };
    if !meta.is_dir() {
        return Err(PluginError::StateFolder(format!(
            "{} is not a folder",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PluginError::StateFolder(format!(
            "state folder {} has mode {mode:04o}: group or others can write it (and so replace \
             keys); run chmod 700 {}",
            path.display(),
            path.display()
        )));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(PluginError::StateFolder(format!(
            "state folder {} is owned by uid {}, this process runs as uid {euid}; the folder \
             must belong to the user that runs the plugin",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Creates `path` (and parents) when missing, mode 0700.
///
/// # Errors
/// I/O errors.
pub fn ensure_private_folder(path: &Path) -> Result<(), PluginError> {
    fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("chmod 700", path, e))
}

/// The writers' lock: an exclusive `flock` on `path`, held until the file is dropped.
/// Threads of one process exclude each other too (each opens its own handle).
///
/// # Errors
/// I/O errors.
pub fn lock(path: &Path) -> Result<File, PluginError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| io_err("opening", path, e))?;
    file.lock().map_err(|e| io_err("locking", path, e))?;
    Ok(file)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new temp file beside `path`, mode 0600, with a name no other writer uses
/// (process id, a per-process counter and random bytes), exclusively (`O_CREAT|O_EXCL`)
/// and never through a symbolic link.
fn create_temp(dir: &Path, name: &str) -> Result<(std::path::PathBuf, File), PluginError> {
    let mut last = None;
    for _ in 0..16 {
        let random = kms_core::ops::generate_random(8)
            .map_err(|e| PluginError::StateFolder(format!("random temp file name: {e}")))?;
        let suffix: String = random.expose().iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{}-{suffix}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io_err("creating", &tmp, e)),
        }
    }
    Err(PluginError::StateFolder(format!(
        "no free temp file name in {}: {}",
        dir.display(),
        last.map_or_else(|| "?".to_owned(), |e| e.to_string())
    )))
}

/// Writes `bytes` to `path` atomically with mode 0600: a new temp file of its own in the
/// same folder, fsync, rename over `path`, fsync of the folder. Concurrent writers of the
/// same path never share a temp file: the last rename wins, each reader sees one whole
/// version.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let dir = path.parent().ok_or_else(|| {
        PluginError::StateFolder(format!("{} has no parent folder", path.display()))
    })?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PluginError::StateFolder(format!("{} has no file name", path.display())))?;
    let (tmp, mut file) = create_temp(dir, name)?;
    let result = (|| {
        // The mode passed to open is filtered by the umask: set it explicitly.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("chmod 600", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| io_err("writing", &tmp, e))?;
        file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("renaming into", path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_file_never_collide() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("seeded.json");
        std::thread::scope(|scope| {
            for writer in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..40u8 {
                        let body = vec![writer; 64 + usize::from(round)];
                        write_atomic(path, &body).expect("every write succeeds");
                    }
                });
            }
        });
        let last = fs::read(&path).expect("read");
        assert!(
            last.iter().all(|b| *b == last[0]),
            "a torn file: one writer's bytes only"
        );
        let left: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "seeded.json")
            .collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_folder_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        ensure_private_folder(&dir).expect("create");
        check_private_folder(&dir).expect("0700 is fine");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).expect("chmod");
        let err = check_private_folder(&dir).expect_err("group-writable");
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o702)).expect("chmod");
        assert!(check_private_folder(&dir).is_err(), "others-writable");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).expect("chmod");
        check_private_folder(&dir).expect("group may read");
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        ensure_private_folder(&dir).expect("create");
        // Only root can give a folder away; elsewhere the check is exercised by hand.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(4242), None).expect("chown");
            let err = check_private_folder(&dir).expect_err("another owner");
            assert!(err.to_string().contains("owned by uid 4242"), "{err}");
        }
    }

    #[test]
    fn a_symbolic_link_is_not_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("elsewhere.json");
        fs::write(&target, b"{}").expect("write");
        let link = tmp.path().join("active-key.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = read_private(&link).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            read_private(&tmp.path().join("none")).expect("absent"),
            None
        );
    }
}
