//! The `ExternalKeyStore` custom resource (`xks-operator.io/v1alpha1`).

mod spec;
mod status;
pub mod validate;

pub use spec::*;
pub use status::*;

/// The API group of every resource this operator defines.
pub const GROUP: &str = "xks-operator.io";
/// Field manager for server-side apply and the finalizer's owner.
pub const MANAGER: &str = "xks-operator";
/// Finalizer that guards deletion so `deletionPolicy` is honoured.
pub const FINALIZER: &str = "xks-operator.io/finalizer";
/// Annotation approving the disruptive change of one generation
/// (`disruptiveUpdates: RequireApproval`): its value is the generation.
pub const APPROVE_ANNOTATION: &str = "xks-operator.io/approve-generation";
/// Flux's "reconcile now" annotation, echoed into `status.lastHandledReconcileAt`.
pub const FLUX_REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// Whether the approval annotation approves the resource's current
/// generation. A resource without a generation is never approved.
pub fn is_approved(resource: &ExternalKeyStore) -> bool {
    let Some(generation) = resource.metadata.generation else {
        return false;
    };
    resource
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPROVE_ANNOTATION))
        .is_some_and(|v| v.trim() == generation.to_string())
}
