//! Writing status: one server-side apply of the whole status, by the operator's field
//! manager, on the status subresource.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{controller::Action, events::EventType},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Context, Error, FIELD_MANAGER};
use crate::conditions::{self, Status};

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
    let mut patch = status_patch::<K>(status);
    patch["metadata"] = serde_json::json!({"resourceVersion": obj.resource_version()});
    write(ctx, api, &obj.name_any(), &patch).await
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
    ctx.metrics.status_writes.with_label_values(&[&K::kind(&())]).inc();
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
        .await?;
    Ok(())
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
