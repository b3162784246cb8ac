//! docs/troubleshooting.md's "Retries" section against the code it
//! describes: every error category and ConnectionErrorCode with the class
//! `ErrorCategory::class` and `connection_error_class` give it, and the
//! retry policy's values. A category added, reclassified or renamed in
//! src/error.rs fails here until the table says the same.

use std::path::Path;
use xks_operator::error::{Class, ErrorCategory, connection_error_class};
use xks_operator::retry::RetryPolicy;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the `## {title}` section, up to the next `## `.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/troubleshooting.md has no \"## {title}\" section"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The body rows of the table whose header row starts with `| {first} |`,
/// as trimmed cells.
fn table(text: &str, first: &str) -> Vec<Vec<String>> {
    let header = format!("| {first} |");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&header));
    assert!(
        lines.next().is_some(),
        "the Retries section has no table headed \"{header}\""
    );
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn class_in(cell: &str) -> Option<Class> {
    if cell.starts_with("transient") {
        Some(Class::Transient)
    } else if cell.starts_with("needs a person") {
        Some(Class::NeedsPerson)
    } else {
        None
    }
}

/// What the user sees, as the table must say it for `class`.
fn seen_right(class: Class, cell: &str) -> bool {
    match class {
        Class::Transient => cell.contains("Reconciling") && cell.contains("status.retry"),
        Class::NeedsPerson => cell.starts_with("Stalled"),
    }
}

/// The variants of `ErrorCategory`, read from its source: a variant added
/// there is one the table must have.
fn categories() -> Vec<ErrorCategory> {
    let source = read("src/error.rs");
    let start = source
        .find("pub enum ErrorCategory {")
        .expect("src/error.rs declares ErrorCategory");
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("the enum ends")];
    let names: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#"))
        .filter_map(|l| l.strip_suffix(','))
        .filter(|l| l.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect();
    assert!(names.len() >= 19, "read only {names:?} from src/error.rs");
    names
        .iter()
        .map(|name| {
            serde_json::from_value(serde_json::Value::from(*name))
                .unwrap_or_else(|e| panic!("ErrorCategory::{name}: {e}"))
        })
        .collect()
}

fn retries() -> String {
    section(&read("docs/troubleshooting.md"), "Retries")
}

#[test]
fn every_error_category_is_in_the_table_with_its_class() {
    let rows = table(&retries(), "reason (category)");
    let categories = categories();
    for category in &categories {
        let reason = format!("`{}`", category.reason());
        let row = rows
            .iter()
            .find(|r| r[0] == reason)
            .unwrap_or_else(|| {
                panic!(
                    "docs/troubleshooting.md, Retries: no row for {reason} ({category:?}, {:?} in src/error.rs)",
                    category.class()
                )
            });
        assert_eq!(
            class_in(&row[1]),
            Some(category.class()),
            "docs/troubleshooting.md, Retries: {reason} is {:?} in src/error.rs, the table says {:?}",
            category.class(),
            row[1]
        );
        assert!(
            seen_right(category.class(), &row[2]),
            "docs/troubleshooting.md, Retries: {reason}: what you see ({:?}) does not match {:?}",
            row[2],
            category.class()
        );
    }
    let known: Vec<String> = categories
        .iter()
        .map(|c| format!("`{}`", c.reason()))
        .collect();
    for row in &rows {
        assert!(
            known.contains(&row[0]),
            "docs/troubleshooting.md, Retries: {} is no error category's reason in src/error.rs",
            row[0]
        );
    }
    assert_eq!(rows.len(), categories.len(), "one row per category");
}

#[test]
fn every_connection_error_code_is_in_the_table_with_its_class() {
    let rows = table(&retries(), "ConnectionErrorCode");
    let mut listed = Vec::new();
    for row in &rows {
        let code = if row[0] == "any other code" {
            // What KMS may add later.
            "A_CODE_KMS_ADDS_LATER".to_string()
        } else {
            let code = row[0].trim_matches('`').to_string();
            listed.push(code.clone());
            code
        };
        let class = connection_error_class(&code);
        assert_eq!(
            class_in(&row[1]),
            Some(class),
            "docs/troubleshooting.md, Retries: {} is {class:?} in src/error.rs, the table says {:?}",
            row[0],
            row[1]
        );
        assert!(
            seen_right(class, &row[2]),
            "docs/troubleshooting.md, Retries: {}: what you see ({:?}) does not match {class:?}",
            row[0],
            row[2]
        );
    }
    assert!(
        rows.iter().any(|r| r[0] == "any other code"),
        "the table says what happens with a code KMS adds later"
    );
    // The same codes as the "Connection error codes" section explains.
    let explained: Vec<String> =
        section(&read("docs/troubleshooting.md"), "Connection error codes")
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .map(str::to_string)
            .collect();
    listed.sort();
    let mut explained_sorted = explained.clone();
    explained_sorted.sort();
    assert_eq!(
        listed, explained_sorted,
        "the Retries table and the Connection error codes section list different codes"
    );
    // Every one of them is a code the SDK knows.
    for code in &explained {
        assert!(
            aws_sdk_kms::types::ConnectionErrorCodeType::values().contains(&code.as_str()),
            "{code} is no ConnectionErrorCode of aws-sdk-kms"
        );
    }
}

fn words(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

#[test]
fn the_backoff_table_is_the_default_retry_policy() {
    let rows = table(&retries(), "setting");
    let p = RetryPolicy::default();
    let want = [
        ("base", words(p.base)),
        ("cap", words(p.cap)),
        ("cap_while_down", words(p.cap_while_down)),
        (
            "attempts_before_rollback",
            p.attempts_before_rollback.to_string(),
        ),
        (
            "attempts_for_a_missing_pinned_store",
            p.attempts_for_a_missing_pinned_store.to_string(),
        ),
        ("after_rollback", words(p.after_rollback)),
    ];
    for (setting, value) in &want {
        let row = rows
            .iter()
            .find(|r| r[0] == format!("`{setting}`"))
            .unwrap_or_else(|| panic!("docs/troubleshooting.md, Retries: no row for `{setting}`"));
        assert_eq!(
            &row[1], value,
            "docs/troubleshooting.md, Retries: `{setting}` is {value} in RetryPolicy::default()"
        );
    }
    assert_eq!(rows.len(), want.len(), "one row per setting");
}
