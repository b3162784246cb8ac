//! The corpus of invalid resources (tests/corpus/invalid and
//! examples/invalid): each is rejected with the specific message its
//! `# expect:` line promises, by serde (types, enums, required fields) or by
//! `validate_resource` (the CRD's CEL rules evaluated client-side, then the
//! Rust rules). A file with two documents is an update: the first is the
//! stored object, the second the change (transition rules such as the
//! immutability of keyStoreId). tests/corpus/valid holds values just inside
//! each bound, which must pass, so that every "just outside" case is a
//! boundary and not an accident.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use xks_operator::api::validate::validate_resource;
use xks_operator::cli::files::Manifests;

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .expect("directory exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn header(text: &str, tag: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(tag).map(|v| v.trim().to_string()))
}

/// The error a user would see for this file, or `None` if it is accepted.
fn rejection(text: &str) -> Option<String> {
    let mut manifests = Manifests::default();
    if let Err(e) = manifests.add_yaml(text) {
        return Some(format!("{e:#}"));
    }
    match manifests.stores.as_slice() {
        [new] => validate_resource(new, None).err(),
        [old, new] => validate_resource(new, Some(old)).err(),
        other => panic!("expected one or two ExternalKeyStores, got {}", other.len()),
    }
}

#[test]
fn every_invalid_resource_is_rejected_with_its_specific_message() {
    let files: Vec<PathBuf> = yaml_files("tests/corpus/invalid")
        .into_iter()
        .chain(yaml_files("examples/invalid"))
        .collect();
    assert!(files.len() >= 40, "only {} invalid resources", files.len());
    let mut messages = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        // examples/invalid states the API server's words in `# expect:`
        // and, where the Rust side words it differently, `# rust:`.
        let expect = header(&text, "# rust:")
            .or_else(|| header(&text, "# expect:"))
            .unwrap_or_else(|| panic!("{}: no # expect: line", file.display()));
        assert!(expect.len() >= 10, "{}: message too vague", file.display());
        let error = rejection(&text).unwrap_or_else(|| panic!("{} was accepted", file.display()));
        assert!(
            error.contains(&expect),
            "{}: error {error:?} does not contain {expect:?}",
            file.display()
        );
        messages.insert(expect);
    }
    assert!(messages.len() >= 30, "too many cases share one message");
}

/// Every field of the spec has at least one invalid case in the corpus.
#[test]
fn the_corpus_covers_every_field() {
    let covered: BTreeSet<String> = yaml_files("tests/corpus/invalid")
        .iter()
        .filter_map(|f| header(&std::fs::read_to_string(f).expect("read"), "# field:"))
        .collect();
    for field in [
        "spec.keyStoreName",
        "spec.region",
        "spec.keyStoreId",
        "spec.proxy",
        "spec.proxy.connectivity",
        "spec.proxy.uriEndpoint",
        "spec.proxy.uriPath",
        "spec.proxy.vpcEndpointService.name",
        "spec.proxy.vpcEndpointService.owner",
        "spec.proxy.credentialsSecretRef.name",
        "spec.connectionState",
        "spec.deletionPolicy",
        "spec.managementPolicy",
        "spec.disruptiveUpdates",
        "spec.proxyChecks",
        "spec.rollback",
        "spec.driftInterval",
        "spec.suspend",
    ] {
        assert!(covered.contains(field), "no invalid case for {field}");
    }
}

#[test]
fn values_just_inside_every_bound_are_accepted() {
    let files = yaml_files("tests/corpus/valid");
    assert!(files.len() >= 3);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        if let Some(error) = rejection(&text) {
            panic!("{} was rejected: {error}", file.display());
        }
    }
}

/// Setting keyStoreId where there was none is adoption, not a change.
#[test]
fn key_store_id_may_be_set_once() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus/invalid/key-store-id-removed.yaml"),
    )
    .expect("read");
    let mut manifests = Manifests::default();
    manifests.add_yaml(&text).expect("parses");
    let (with_id, without_id) = (&manifests.stores[0], &manifests.stores[1]);
    assert!(validate_resource(with_id, Some(without_id)).is_ok());
    assert!(validate_resource(with_id, Some(with_id)).is_ok());
}
