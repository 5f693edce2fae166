//! Paths that are not what the caller thinks: a folder handed to residency, prefetch or evict, and
//! snapshot destinations that cannot be written. Each must fail up front with an I/O error that
//! names the path the caller gave (never a temporary file, never "No such device").

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use snapload_core::residency::{evict, residency, Prefetch, Priority};
use snapload_core::{check_destination, Dtype, Error, SnapshotWriter, TensorSpec};

fn io_error(result: Result<impl Sized, Error>) -> (std::path::PathBuf, std::io::Error, String) {
    match result {
        Err(e @ Error::Io { .. }) => {
            let text = e.to_string();
            let Error::Io { path, source, .. } = e else { unreachable!() };
            (path, source, text)
        }
        Err(other) => panic!("expected an I/O error, got {other}"),
        Ok(_) => panic!("expected an I/O error, got success"),
    }
}

#[test]
fn a_folder_is_reported_as_a_folder_by_residency_prefetch_and_evict() {
    let dir = tempfile::tempdir().unwrap();
    for (what, result) in [
        ("residency", residency(dir.path()).map(|_| ())),
        ("evict", evict(dir.path())),
        ("prefetch", Prefetch::start(dir.path(), 1, 1 << 20, Priority::Normal).map(|_| ())),
    ] {
        let (path, source, text) = io_error(result);
        assert_eq!(path, dir.path(), "{what}");
        assert_eq!(source.raw_os_error(), Some(libc::EISDIR), "{what}: {text}");
        assert!(!text.contains("No such device"), "{what}: {text}");
    }
}

fn spec() -> Vec<TensorSpec> {
    vec![TensorSpec { name: "a".into(), dtype: Dtype::U8, shape: vec![4], alias_of: None }]
}

fn create(dest: &Path) -> Result<SnapshotWriter, Error> {
    SnapshotWriter::create(dest, &spec(), 4096, BTreeMap::new())
}

#[test]
fn a_missing_parent_folder_names_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("missing").join("out.snap");
    for result in [check_destination(&dest).map(|_| ()), create(&dest).map(|_| ())] {
        let (path, source, text) = io_error(result);
        assert_eq!(path, dest);
        assert_eq!(source.kind(), ErrorKind::NotFound, "{text}");
        assert!(!text.contains("snapload-tmp"), "{text}");
    }
}

#[test]
fn a_destination_that_is_a_folder_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, source, _) = io_error(create(dir.path()));
    assert_eq!(path, dir.path());
    assert_eq!(source.raw_os_error(), Some(libc::EISDIR));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file was left behind");
}

#[test]
fn a_parent_that_is_a_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let dest = file.join("out.snap");
    let (path, source, _) = io_error(check_destination(&dest));
    assert_eq!(path, dest);
    assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR));
}

#[test]
fn a_good_destination_passes() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("ok.snap");
    let (folder, name) = check_destination(&dest).unwrap();
    assert_eq!((folder.as_path(), name.as_str()), (dir.path(), "ok.snap"));
}
