//! The shipped examples and the committed CRD, checked the way a user meets
//! them: valid examples pass every rule, each invalid one is rejected with
//! the message its first lines promise, and crds/ is what the code generates.

use kube::CustomResourceExt;
use std::path::Path;
use xks_operator::api::ExternalKeyStore;
use xks_operator::api::validate::validate_resource;
use xks_operator::cli::files::Manifests;

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .expect("directory exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn committed_crd_is_the_generated_one() {
    let generated = serde_yaml::to_string(&ExternalKeyStore::crd()).expect("crd yaml");
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/externalkeystores.xks-operator.io.yaml"),
    )
    .expect("committed crd");
    assert!(
        generated == committed,
        "crds/ is stale: run `cargo run -q -- crd > crds/externalkeystores.xks-operator.io.yaml`"
    );
}

#[test]
fn every_example_is_valid_and_has_its_secret() {
    let files = yaml_files("examples");
    let manifests = Manifests::load(&files).expect("examples parse");
    assert!(
        manifests.stores.len() >= 4,
        "expected the documented examples"
    );
    for store in &manifests.stores {
        let name = store.metadata.name.clone().unwrap_or_default();
        validate_resource(store, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The public example is the demo's: its Secret must be usable.
    let public = manifests
        .stores
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("payments"))
        .expect("payments example");
    manifests
        .credential_for(public)
        .expect("credential of the public example");
}

#[test]
fn every_invalid_example_is_rejected_with_its_promised_message() {
    let files = yaml_files("examples/invalid");
    assert!(files.len() >= 12, "expected at least 12 invalid examples");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let header = |tag: &str| {
            text.lines()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| l.strip_prefix(tag).map(|v| v.trim().to_string()))
        };
        let expect = header("# rust:")
            .or_else(|| header("# expect:"))
            .unwrap_or_else(|| panic!("{}: no # expect: line", file.display()));
        let mut manifests = Manifests::default();
        let error = match manifests.add_yaml(&text) {
            Err(e) => format!("{e:#}"),
            Ok(()) => {
                let store = manifests.stores.first().expect("an ExternalKeyStore");
                match validate_resource(store, None) {
                    Err(e) => e,
                    Ok(()) => panic!("{} was accepted", file.display()),
                }
            }
        };
        assert!(
            error.contains(&expect),
            "{}: error {error:?} does not contain {expect:?}",
            file.display()
        );
    }
}

#[test]
fn key_store_id_cannot_change_once_set() {
    let mut manifests = Manifests::default();
    manifests
        .add_yaml(include_str!("../examples/observe-only-adoption.yaml"))
        .expect("parse");
    let old = manifests.stores[0].clone();
    let mut new = old.clone();
    new.spec.key_store_id = Some("cks-99999999999999999".into());
    let err = validate_resource(&new, Some(&old)).expect_err("immutable");
    assert!(err.contains("keyStoreId is immutable"), "{err}");
    new.spec.key_store_id = None;
    assert!(
        validate_resource(&new, Some(&old)).is_err(),
        "unsetting is a change too"
    );
    assert!(validate_resource(&old, Some(&old)).is_ok());
}

/// The emulator configuration the README shows must be one the emulator takes.
#[test]
fn readme_emulator_config_example_is_accepted() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let start = readme
        .find("A full example:\n\n```yaml\n")
        .expect("README has the emulator config example")
        + "A full example:\n\n```yaml\n".len();
    let len = readme[start..].find("```").expect("closed block");
    let config = xks_emulator::EmulatorConfig::from_yaml_str(&readme[start..start + len])
        .expect("the README's example is a valid emulator config");
    assert_eq!(config.proxies.len(), 1);
    assert_eq!(config.max_custom_key_stores, 10);
}
