//! crds/ must be exactly what `crdgen` writes: CI fails on drift.

#[test]
fn committed_crds_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let generated = kubekms_k8s::crds_yaml().expect("serialize CRDs");
    for (file, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{file} is out of date: run `cargo run -p kubekms-k8s --bin crdgen` and commit crds/"
        );
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    let mut expected: Vec<_> = generated.into_iter().map(|(file, _)| file).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "crds/ holds files crdgen does not write");
}
