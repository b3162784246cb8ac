//! A status sink for the terminal: prints each step as it changes, so a
//! person sees the sequence live, and the final step table.

use crate::api::{ExternalKeyStoreStatus, Operation, Step, StepState};
use crate::engine::{SinkError, StatusSink};
use std::io::Write;

/// Prints step transitions to stdout and keeps the last status.
#[derive(Default)]
pub struct LiveTable {
    pub label: String,
    pub last: ExternalKeyStoreStatus,
    printed: Vec<(String, StepState, Option<String>)>,
    quiet: bool,
}

impl LiveTable {
    pub fn new(label: impl Into<String>, quiet: bool) -> Self {
        Self {
            label: label.into(),
            quiet,
            ..Default::default()
        }
    }

    pub fn start_with(mut self, status: ExternalKeyStoreStatus) -> Self {
        self.last = status;
        self
    }
}

impl StatusSink for LiveTable {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        if !self.quiet
            && let Some(op) = &status.operation
        {
            let mut out = std::io::stdout().lock();
            for step in &op.steps {
                let key = (step.name.to_string(), step.state, step.message.clone());
                if step.state != StepState::Pending && !self.printed.contains(&key) {
                    let _ = writeln!(
                        out,
                        "  {:<10} {:<18} {:<10} {}",
                        self.label,
                        key.0,
                        step.state.to_string(),
                        step.message.as_deref().unwrap_or("")
                    );
                    self.printed.push(key);
                }
            }
        }
        self.last = status.clone();
        Ok(())
    }
}

/// The step table of an operation, one line per step.
pub fn render(op: &Operation) -> String {
    let mut out = format!(
        "operation: {}  phase: {}  disruptive: {}\n",
        op.trigger, op.phase, op.disruptive
    );
    out.push_str(&format!(
        "  {:<3} {:<18} {:<10} {:<8} {}\n",
        "#", "STEP", "STATE", "ATTEMPTS", "MESSAGE"
    ));
    for (
        i,
        Step {
            name,
            state,
            message,
            attempts,
            ..
        },
    ) in op.steps.iter().enumerate()
    {
        out.push_str(&format!(
            "  {:<3} {:<18} {:<10} {:<8} {}\n",
            i + 1,
            name.to_string(),
            state.to_string(),
            attempts,
            message.as_deref().unwrap_or("")
        ));
    }
    out
}
