//! Durable file creation.
//!
//! POSIX makes a new file's name durable only once its directory is fsynced; some
//! filesystems do that as part of the file's own fsync, others do not. Every file
//! whose loss would lose history (journal files, published records, dead letters,
//! the audit log) goes through [`sync_dir_of`] after it is created.

use std::path::Path;

/// Fsyncs the directory holding `path`, making its entry for `path` durable.
pub(crate) fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_the_directory_of_a_new_file_and_of_a_bare_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.log");
        std::fs::write(&file, b"x").unwrap();
        sync_dir_of(&file).unwrap();
        sync_dir_of(Path::new("relative-name")).unwrap();
        let missing = dir.path().join("gone").join("b.log");
        assert_eq!(
            sync_dir_of(&missing).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
