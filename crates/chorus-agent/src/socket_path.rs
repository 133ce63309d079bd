//! Making a place for the socket without trusting or destroying what another user put there:
//! the default socket's directory must belong to this user and be closed to others, and
//! only a stale socket is ever removed (a regular file, a link or a directory at the path is
//! refused and left as it is).

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

/// Why the socket's place was refused. Each is one line naming the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
    #[error(
        "refusing to replace {path}: it is {what}, not a socket; remove it or choose another --socket"
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error(
        "refusing the socket directory {dir}: it is owned by uid {owner}, not by this user (uid {me}); \
         another user may have created it: remove it or set --socket"
    )]
    DirOwner { dir: PathBuf, owner: u32, me: u32 },
    #[error(
        "refusing the socket directory {dir}: other users may write in it (mode {mode:04o}); \
         make it 0700 or set --socket"
    )]
    DirWritable { dir: PathBuf, mode: u32 },
    #[error("refusing the socket directory {dir}: it is {what}, not a directory")]
    DirNotADirectory { dir: PathBuf, what: &'static str },
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes sure the default socket's directory is this user's own: creates it with `mode` when
/// it is missing, and refuses one that is not a directory (a symbolic link included), is
/// owned by another user, or is writable by group or others.
pub fn prepare_private_dir(dir: &Path, mode: u32, me: u32) -> Result<(), PlaceError> {
    let io = |source| PlaceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // A missing parent (`$XDG_RUNTIME_DIR` gone): create the chain, the last one private.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io)?,
        Err(e) => return Err(io(e)),
    }
    // Not following a link: a link to a directory elsewhere is someone else's choice of place.
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(PlaceError::DirNotADirectory {
            dir: dir.to_path_buf(),
            what: describe(&meta.file_type()),
        });
    }
    if meta.uid() != me {
        return Err(PlaceError::DirOwner {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PlaceError::DirWritable {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Clears `path` for a new socket: nothing there is fine; a socket no agent answers on is a
/// dead agent's and is removed; a live socket, and anything that is not a socket, is refused.
pub async fn clear_stale_socket(path: &Path) -> Result<(), PlaceError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PlaceError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(PlaceError::NotASocket {
            path: path.to_path_buf(),
            what: describe(&meta.file_type()),
        });
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(PlaceError::InUse(path.to_path_buf()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PlaceError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        crate::api::effective_uid()
    }

    #[test]
    fn a_missing_private_dir_is_created_0700_and_an_existing_one_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/chorus-1");
        prepare_private_dir(&dir, 0o700, me()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        prepare_private_dir(&dir, 0o700, me()).unwrap();
    }

    #[test]
    fn a_dir_of_another_user_or_open_to_others_or_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("chorus-1");
        std::fs::create_dir(&dir).unwrap();
        let err = prepare_private_dir(&dir, 0o700, me().wrapping_add(1)).unwrap_err();
        assert!(matches!(err, PlaceError::DirOwner { .. }), "{err}");
        assert!(err.to_string().contains("owned by uid"), "{err}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_private_dir(&dir, 0o700, me()).unwrap_err();
        assert!(err.to_string().contains("mode 0777"), "{err}");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = prepare_private_dir(&link, 0o700, me()).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
    }

    #[tokio::test]
    async fn only_a_dead_socket_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "precious").unwrap();
        let err = clear_stale_socket(&file).await.unwrap_err();
        assert!(
            err.to_string().contains("a regular file, not a socket"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

        let dir = tmp.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        assert!(clear_stale_socket(&dir).await.is_err());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(clear_stale_socket(&link).await.is_err());
        assert!(file.exists() && link.exists() && dir.exists());

        let sock = tmp.path().join("s.sock");
        let live = tokio::net::UnixListener::bind(&sock).unwrap();
        assert!(matches!(
            clear_stale_socket(&sock).await,
            Err(PlaceError::InUse(_))
        ));
        drop(live);
        clear_stale_socket(&sock).await.unwrap();
        assert!(!sock.exists());
        clear_stale_socket(&sock).await.unwrap();
    }
}
