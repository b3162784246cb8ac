//! The file-mode commands as a user runs them: the built binary against an
//! emulator, every output checked for the secret.

use std::path::PathBuf;
use std::process::Command;
use xks_emulator::config::{DEMO_ROTATED_SECRET, DEMO_SECRET};
use xks_emulator::{self as emulator, EmulatorConfig};

const BIN: &str = env!("CARGO_BIN_EXE_xks-operator");

fn examples(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

struct Run {
    code: i32,
    /// stdout and stderr together.
    out: String,
    stdout: String,
}

fn run(args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .args(args)
        .env("XKS_LOG", "trace")
        .output()
        .expect("binary runs");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in [DEMO_SECRET, DEMO_ROTATED_SECRET] {
        assert!(!out.contains(secret), "the secret leaked in {args:?}");
    }
    Run {
        code: output.status.code().unwrap_or(-1),
        out,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// The embedded emulator with fast transitions, on a free port.
async fn quick_emulator() -> emulator::RunningEmulator {
    emulator::start(
        EmulatorConfig {
            connect_delay_ms: 30,
            disconnect_delay_ms: 30,
            ..EmulatorConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("emulator")
}

/// `host=URL` for every proxy of `emu`, for `--proxy-resolve`.
fn resolve_args(emu: &emulator::RunningEmulator) -> Vec<String> {
    emu.proxy_resolve_map()
        .into_iter()
        .map(|(h, u)| format!("{h}={u}"))
        .collect()
}

/// The public example with another endpoint, in a temporary directory with
/// the Secret, as a GitOps change would look.
fn changed_example(dir: &tempfile::TempDir, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(examples("public-endpoint.yaml"))
        .expect("example")
        .replace(from, to);
    std::fs::write(dir.path().join("store.yaml"), text).expect("write");
    std::fs::copy(
        examples("credentials-secret.yaml"),
        dir.path().join("secret.yaml"),
    )
    .expect("copy");
    dir.path().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_reconcile_from_files() {
    let emu = quick_emulator().await;
    let kms = emu.kms_endpoint();
    let resolve = resolve_args(&emu);
    let store = examples("public-endpoint.yaml").display().to_string();
    let secret = examples("credentials-secret.yaml").display().to_string();
    let mut base = vec!["--kms-endpoint", kms.as_str()];
    for r in &resolve {
        base.extend(["--proxy-resolve", r.as_str()]);
    }

    let kms2 = kms.clone();
    let plan =
        tokio::task::spawn_blocking(move || run(&["plan", "-f", &store, "--kms-endpoint", &kms2]))
            .await
            .expect("join");
    assert_eq!(plan.code, 0, "{}", plan.out);
    assert!(
        plan.out.contains("no store named \"payments\" in KMS yet"),
        "{}",
        plan.out
    );
    assert!(plan.out.contains("Create"), "{}", plan.out);
    assert!(plan.out.contains("creates a new store"), "{}", plan.out);

    let mut args = vec!["reconcile", "-f"];
    let store = examples("public-endpoint.yaml").display().to_string();
    args.extend([store.as_str(), "-f", secret.as_str()]);
    args.extend(base.iter().copied());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let reconcile = tokio::task::spawn_blocking(move || {
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    assert_eq!(reconcile.code, 0, "{}", reconcile.out);
    assert!(
        reconcile.out.contains("connectionState: CONNECTED"),
        "{}",
        reconcile.out
    );
    assert!(
        reconcile.out.contains("keyStoreId: cks-"),
        "{}",
        reconcile.out
    );

    // An endpoint change is disruptive; a rename is not.
    let dir = tempfile::tempdir().expect("tmp");
    let changed = changed_example(&dir, "xks-primary.example.com", "xks-replica.example.com");
    let kms3 = kms.clone();
    let plan = tokio::task::spawn_blocking(move || {
        run(&[
            "plan",
            "-f",
            &changed,
            "--kms-endpoint",
            &kms3,
            "--fail-on-disruptive",
        ])
    })
    .await
    .expect("join");
    assert_eq!(plan.code, 2, "{}", plan.out);
    assert!(plan.out.contains("DISRUPTIVE"), "{}", plan.out);
    assert!(plan.out.contains("uriEndpoint changed"), "{}", plan.out);

    // A rename is recognised through the status reconcile printed (in a
    // cluster, the resource's status), and is online.
    let dir = tempfile::tempdir().expect("tmp");
    let with_status = reconcile
        .stdout
        .split("---\n")
        .find(|doc| doc.contains("kind: ExternalKeyStore"))
        .expect("reconcile printed the resource")
        .replace(
            "  region: us-east-1",
            "  keyStoreName: payments-eu\n  region: us-east-1",
        );
    std::fs::write(dir.path().join("store.yaml"), with_status).expect("write");
    std::fs::copy(
        examples("credentials-secret.yaml"),
        dir.path().join("secret.yaml"),
    )
    .expect("copy");
    let renamed = dir.path().display().to_string();
    let kms4 = kms.clone();
    let plan = tokio::task::spawn_blocking(move || {
        run(&[
            "plan",
            "-f",
            &renamed,
            "--kms-endpoint",
            &kms4,
            "--fail-on-disruptive",
        ])
    })
    .await
    .expect("join");
    assert_eq!(plan.code, 0, "{}", plan.out);
    assert!(plan.out.contains("online"), "{}", plan.out);
    assert!(plan.out.contains("keyStoreName changed"), "{}", plan.out);

    // Invalid input fails the check with a message naming the field.
    let dir = tempfile::tempdir().expect("tmp");
    let invalid = changed_example(
        &dir,
        "https://xks-primary.example.com",
        "https://xks-primary.example.com:8443",
    );
    let kms5 = kms.clone();
    let plan = tokio::task::spawn_blocking(move || {
        run(&["plan", "-f", &invalid, "--kms-endpoint", &kms5])
    })
    .await
    .expect("join");
    assert_eq!(plan.code, 1, "{}", plan.out);
    assert!(
        plan.out.contains("uriEndpoint must be https://"),
        "{}",
        plan.out
    );
    emu.shutdown().await;
}

/// Two resources of one commit that name the same KMS store: file mode
/// refuses the one that does not hold it, as the controller would, and
/// neither `plan` nor `reconcile` touches KMS for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_refuses_a_second_resource_claiming_the_same_store() {
    let emu = quick_emulator().await;
    let kms = emu.kms_endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = changed_example(&dir, "xks-primary", "xks-primary");
    // Another namespace, another proxy, the same store name.
    let copy = std::fs::read_to_string(examples("public-endpoint.yaml"))
        .expect("example")
        .replace(
            "name: payments\n  namespace: default",
            "name: payments-copy\n  namespace: team-b",
        )
        .replace("spec:\n", "spec:\n  keyStoreName: payments\n")
        .replace("xks-primary", "xks-replica");
    assert!(copy.contains("namespace: team-b"), "{copy}");
    std::fs::write(dir.path().join("copy.yaml"), copy).expect("write");
    std::fs::write(
        dir.path().join("copy-secret.yaml"),
        std::fs::read_to_string(examples("credentials-secret.yaml"))
            .expect("secret")
            .replace("namespace: default", "namespace: team-b"),
    )
    .expect("write");

    let plan = run(&["plan", "-f", &path, "--kms-endpoint", &kms]);
    assert_eq!(plan.code, 1, "{}", plan.out);
    assert!(plan.stdout.contains("StoreClaimed"), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("held by ExternalKeyStore default/payments"),
        "{}",
        plan.stdout
    );

    let mut args = vec![
        "reconcile",
        "-f",
        path.as_str(),
        "--kms-endpoint",
        kms.as_str(),
    ];
    let resolve = resolve_args(&emu);
    for r in &resolve {
        args.extend(["--proxy-resolve", r.as_str()]);
    }
    let reconcile = run(&args);
    assert_eq!(reconcile.code, 1, "{}", reconcile.out);
    assert!(
        reconcile.stdout.contains("reason: StoreClaimed"),
        "{}",
        reconcile.stdout
    );
    assert_eq!(emu.control().requests("CreateCustomKeyStore"), 1);
    assert_eq!(
        emu.control().requests("UpdateCustomKeyStore"),
        0,
        "the copy rewrote the store"
    );
}
