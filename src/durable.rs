//! Durable file creation.
//!
//! POSIX makes a new file's name durable only once its directory is fsynced; some
//! filesystems do that as part of the file's own fsync, others do not. Every file
//! whose loss would lose history (journal files, published records, dead letters,
//! the audit log, the state file) goes through [`sync_dir_of`] after it is created,
//! and the directories that hold them through [`create_dir_all_synced`].

use std::path::Path;

/// `create_dir_all` whose new directories survive a power cut: each one it creates is
/// then named durably in its parent, outermost first.
pub(crate) fn create_dir_all_synced(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        next = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_dir_of(created)?;
    }
    Ok(())
}

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

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_synced(&deep).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_all_synced(&file.join("under-a-file")).is_err());
    }
}
