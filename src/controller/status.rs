//! Writing status: one server-side apply of the whole status, by the operator's field
//! manager, on the status subresource. A write that fails is counted by reason, and a
//! budget's is reported on the budget itself ([`report_failed_write`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{controller::Action, events::EventType},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Context, Error, FIELD_MANAGER};
use crate::conditions::{self, Status};

/// The reason of the `Ready=False` condition and of the Warning Event that report a failed
/// status write.
pub const WRITE_FAILED: &str = "StatusWriteFailed";

/// Writes `status` as the status of `obj`.
pub async fn apply<K, S>(ctx: &Context, api: &Api<K>, obj: &impl Resource, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    apply_named(ctx, api, &obj.name_any(), status).await
}

/// Writes `status` as the status of `obj`, only if `obj` is the latest version of the object
/// (its `resourceVersion` is a precondition): a status computed from an older copy fails with
/// a conflict, and the reconcile is retried on the newer one.
pub async fn apply_unchanged<K, S>(ctx: &Context, api: &Api<K>, obj: &impl Resource, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let version = obj.resource_version().unwrap_or_default();
    apply_at_version(ctx, api, obj, &version, status).await
}

/// Writes `status` as the status of `obj`, only if the object is still at `version`: a
/// conflict ([`is_conflict`]) otherwise.
pub async fn apply_at_version<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &impl Resource,
    version: &str,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut patch = status_patch::<K>(status);
    patch["metadata"] = serde_json::json!({"resourceVersion": version});
    write(ctx, api, &obj.name_any(), &patch).await
}

/// Whether a write failed on its `resourceVersion` precondition.
pub fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(status)) if status.code == 409)
}

/// Writes `status` as the status of the object `name`.
async fn apply_named<K, S>(ctx: &Context, api: &Api<K>, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    write(ctx, api, name, &status_patch::<K>(status)).await
}

fn status_patch<K: Resource<DynamicType = ()>>(status: &impl Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

async fn write<K>(ctx: &Context, api: &Api<K>, name: &str, patch: &serde_json::Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    patch_counted(ctx, api, name, &params, &Patch::Apply(patch)).await
}

/// One status write, counted, and counted again by reason when it fails.
async fn patch_counted<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<&serde_json::Value>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    ctx.metrics.status_writes.with_label_values(&[&kind]).inc();
    if let Err(e) = api.patch_status(name, params, patch).await {
        let reason = failure_reason(&e);
        ctx.metrics
            .status_write_failures
            .with_label_values(&[&kind, reason])
            .inc();
        tracing::warn!(kind = %kind, name, reason, error = %e, "status write failed");
        return Err(e.into());
    }
    Ok(())
}

/// Why a status write failed, as the `reason` label of
/// `tokenbudget_status_write_failures_total`: one of a few words, whatever the server says.
/// `too_large` is a status the API server or etcd refuses for its size: 413, or any answer
/// that says "too large" or "too long" (etcd's limit comes back as a 500, `etcdserver:
/// request is too large`).
pub fn failure_reason(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(s) if s.code == 413 || too_large(&s.message) => "too_large",
        kube::Error::Api(s) => match s.code {
            404 => "not_found",
            409 => "conflict",
            422 => "invalid",
            502..=504 => "unavailable",
            _ => "api",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "unavailable",
        _ => "client",
    }
}

fn too_large(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("too large") || message.contains("too long")
}

/// Reports a status write of `obj` that failed with `error`, on `obj` itself, so that its
/// user learns that its status stands still: a Warning Event (reason `StatusWriteFailed`),
/// and `Ready=False` with the same reason, merged into the conditions the object has
/// (`existing`) and written alone, by a merge patch of `status.conditions`: a write a few
/// hundred bytes larger than the status the object already has, which fits where the whole
/// new status did not. The Event is sent once: not again while the object already says
/// `StatusWriteFailed` (the condition was written). Nothing is reported for an object that is
/// gone, nor while the API server is unavailable (nothing could be written; the metric and
/// the log say so).
pub async fn report_failed_write<K>(ctx: &Context, api: &Api<K>, obj: &K, existing: &[Condition], error: &Error)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Error::Kube(e) = error else { return };
    if matches!(failure_reason(e), "not_found" | "unavailable") {
        return;
    }
    let message = conditions::cut(&write_failure_message(e), conditions::MAX_MESSAGE_BYTES);
    let ready = conditions::Desired::new("Ready", Status::False, WRITE_FAILED, message.clone());
    let now = ctx.clock.now();
    // Ready first, as every status write puts it; the others as they are.
    let mut merged = conditions::merge(existing, &[ready], obj.meta().generation, now);
    merged.extend(existing.iter().filter(|c| c.type_ != "Ready").cloned());
    let reported = conditions::find(existing, "Ready").is_some_and(|c| c.status == "False" && c.reason == WRITE_FAILED);
    if merged != existing {
        let patch = serde_json::json!({"status": {"conditions": merged}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        // Failed too: the Event still tells, and the failure is counted.
        let _ = patch_counted(ctx, api, &obj.name_any(), &params, &Patch::Merge(&patch)).await;
    }
    if !reported {
        ctx.publish(obj, EventType::Warning, WRITE_FAILED, message).await;
    }
}

/// What a failed status write says to the object's user: the server's own words, not the
/// client's debug form of them.
fn write_failure_message(error: &kube::Error) -> String {
    let what = match error {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    };
    if failure_reason(error) == "too_large" {
        format!(
            "the status is too large for the API server and is not written; usage is still \
             counted and enforced in memory, and written when it fits again: {what}"
        )
    } else {
        format!("the status could not be written: {what}")
    }
}

/// An object the operator's types cannot read (written against another version of the CRD,
/// say) gets `Ready=False` with reason `InvalidObject` and an Event, instead of stalling the
/// watch of every other object of its kind. It waits for the next change of the object.
pub async fn report_unreadable<K>(guard: &DeserializeGuard<K>, ctx: &Context) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Err(invalid) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let meta = &invalid.metadata;
    let (Some(name), Some(ns)) = (meta.name.as_deref(), meta.namespace.as_deref()) else {
        return Err(Error::NoNamespace);
    };
    let message = format!("the operator cannot read this object: {}", invalid.error);
    tracing::warn!(kind = %K::kind(&()), error = %invalid.error, "unreadable object");
    let ready = conditions::Desired::new("Ready", Status::False, "InvalidObject", message.clone());
    let status = serde_json::json!({
        "conditions": conditions::merge(&[], &[ready], meta.generation, ctx.clock.now()),
        "observedGeneration": meta.generation,
    });
    apply_named(ctx, &Api::<K>::namespaced(ctx.client.clone(), ns), name, &status).await?;
    ctx.publish(guard, EventType::Warning, "InvalidObject", message).await;
    Ok(Action::await_change())
}
