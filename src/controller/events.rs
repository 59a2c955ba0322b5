//! Events: published once per transition, never once per reconcile; a failure to publish is
//! logged, never fatal.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Resource,
    runtime::events::{Event, EventType, Recorder},
};

use super::Context;
use crate::conditions;

impl Context {
    /// Publishes an Event about `obj`.
    pub async fn publish<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Publishes a Warning Event when the Ready condition has just become False, or False for a
/// new reason.
pub async fn announce_not_ready<K>(ctx: &Context, obj: &K, old: &[Condition], new: &[Condition])
where
    K: Resource<DynamicType = ()>,
{
    if let Some(ready) = conditions::find(new, "Ready")
        && ready.status == "False"
        && conditions::find(old, "Ready").is_none_or(|c| c.status != "False" || c.reason != ready.reason)
    {
        ctx.publish(obj, EventType::Warning, &ready.reason, ready.message.clone())
            .await;
    }
}
