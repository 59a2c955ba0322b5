//! Acting on a decision: only the writes a [`Plan`](super::decide::Plan) lists, each
//! conditional on the version the decision was made on.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Pod, ResourceQuota, ResourceQuotaStatus},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::json;

use super::decide::{Step, WorkloadPlan};
use crate::api::{TokenBudget, WorkloadKind};

/// The field manager of every write.
const MANAGER: &str = "tokenbudget-operator";

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// Someone else changed the workload since the decision: decide again.
    #[error("{0} changed while it was being updated; retrying")]
    Conflict(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// A ResourceQuota of that name exists and is not the budget's.
    #[error("a ResourceQuota named {0} exists and does not belong to this budget: it is left alone")]
    ForeignQuota(String),
}

impl ActError {
    fn from_kube(what: String, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 409 => ActError::Conflict(what),
            source => ActError::Api { what, source },
        }
    }
}

/// Applies a workload plan's steps in order, each conditional on the version the previous one
/// left.
pub async fn apply_steps(client: &Client, namespace: &str, plan: &WorkloadPlan) -> Result<(), ActError> {
    let resource = match plan.kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::Job => ApiResource::erase::<Job>(&()),
        WorkloadKind::CronJob => ApiResource::erase::<CronJob>(&()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let what = format!("{}/{}", plan.kind.as_str(), plan.name);
    let params = PatchParams::default();
    let mut version = plan.resource_version.clone();
    for step in &plan.steps {
        let precondition = json!({"resourceVersion": version});
        version = match step {
            Step::Annotate(annotations) => {
                let mut meta = precondition;
                meta["annotations"] = json!(annotations);
                api.patch(&plan.name, &params, &Patch::Merge(&json!({"metadata": meta})))
                    .await
                    .map_err(|e| ActError::from_kube(what.clone(), e))?
                    .resource_version()
            }
            // Deployments and StatefulSets, through the scale subresource.
            Step::Scale(replicas) => {
                let body = json!({"metadata": precondition, "spec": {"replicas": replicas}});
                api.patch_scale(&plan.name, &params, &Patch::Merge(&body))
                    .await
                    .map_err(|e| ActError::from_kube(what.clone(), e))?
                    .metadata
                    .resource_version
            }
            // Jobs and CronJobs.
            Step::Suspend(suspend) => {
                let body = json!({"metadata": precondition, "spec": {"suspend": suspend}});
                api.patch(&plan.name, &params, &Patch::Merge(&body))
                    .await
                    .map_err(|e| ActError::from_kube(what.clone(), e))?
                    .resource_version()
            }
        };
    }
    Ok(())
}

/// Writes a workload plan's annotations on its pods (a pod gone meanwhile is skipped).
pub async fn annotate_pods(client: &Client, namespace: &str, plan: &WorkloadPlan) -> Result<(), ActError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for (pod, patch) in &plan.pods {
        let body = json!({"metadata": {"annotations": patch}});
        match pods.patch(pod, &PatchParams::default(), &Patch::Merge(&body)).await {
            // A pod that went away meanwhile needs no annotation.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            other => {
                other.map_err(|e| ActError::from_kube(format!("pod {pod}"), e))?;
            }
        }
    }
    Ok(())
}

/// Brings the budget's ResourceQuota to `hard` (or deletes it when `None`), and returns its
/// status for the budget's. A quota of that name that the budget does not own is never
/// touched: wanting one is an error (`ForeignQuota`); wanting none leaves it, and is done, so
/// that such a quota never keeps a deleted budget's finalizer.
pub async fn sync_quota(
    client: &Client,
    tb: &TokenBudget,
    hard: Option<&BTreeMap<String, Quantity>>,
) -> Result<Option<ResourceQuotaStatus>, ActError> {
    let namespace = tb.namespace().unwrap_or_default();
    let name = super::quota_name(&tb.name_any());
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    let what = format!("ResourceQuota/{name}");
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| ActError::from_kube(what.clone(), e))?;
    let owned = |q: &ResourceQuota| q.owner_references().iter().any(|o| Some(&o.uid) == tb.uid().as_ref());
    if let Some(q) = &existing
        && !owned(q)
    {
        return match hard {
            Some(_) => Err(ActError::ForeignQuota(name)),
            None => Ok(None),
        };
    }
    match (hard, existing) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            api.delete(&name, &Default::default())
                .await
                .map_err(|e| ActError::from_kube(what, e))?;
            Ok(None)
        }
        (Some(hard), Some(q)) if q.spec.as_ref().and_then(|s| s.hard.as_ref()) == Some(hard) => Ok(q.status),
        (Some(hard), _) => {
            let owner = OwnerReference {
                api_version: TokenBudget::api_version(&()).into(),
                kind: TokenBudget::kind(&()).into(),
                name: tb.name_any(),
                uid: tb.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            };
            let body = json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {
                    "name": name,
                    "labels": {"app.kubernetes.io/managed-by": MANAGER},
                    "ownerReferences": [owner],
                },
                "spec": {"hard": hard},
            });
            let q = api
                .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
                .await
                .map_err(|e| ActError::from_kube(what, e))?;
            Ok(q.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::enforce::decide::WorkloadPlan;

    fn status(code: u16, reason: &str) -> Response<Body> {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code});
        Response::builder()
            .status(code)
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    fn scale_down() -> WorkloadPlan {
        WorkloadPlan {
            kind: WorkloadKind::Deployment,
            name: "agent".into(),
            resource_version: Some("41".into()),
            steps: vec![
                Step::Annotate(BTreeMap::from([(
                    super::super::PAUSED_REPLICAS.to_string(),
                    Some("3".to_string()),
                )])),
                Step::Scale(0),
            ],
            pods: vec![],
            notice: None,
        }
    }

    /// Someone changed the Deployment since the decision: the annotation write carries the
    /// version the decision saw, the server answers 409, and nothing else is written.
    #[tokio::test]
    async fn a_conflict_stops_the_plan_before_it_scales() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("the annotation write");
            assert_eq!(request.method(), "PATCH");
            assert!(
                request.uri().path().ends_with("/namespaces/agents/deployments/agent"),
                "{}",
                request.uri()
            );
            let body = http_body_util::BodyExt::collect(request.into_body())
                .await
                .unwrap()
                .to_bytes();
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                patch["metadata"]["resourceVersion"], "41",
                "conditional on the version decided on"
            );
            assert_eq!(patch["metadata"]["annotations"]["tokenbudget.io/paused-replicas"], "3");
            send.send_response(status(409, "Conflict"));
            // No scale request may follow.
            assert!(
                handle.next_request().await.is_none(),
                "nothing is written after a conflict"
            );
        });
        let client = Client::new(service, "default");
        let err = apply_steps(&client, "agents", &scale_down()).await.unwrap_err();
        assert!(
            matches!(err, ActError::Conflict(ref what) if what == "Deployment/agent"),
            "{err}"
        );
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_write_names_the_workload() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("a request");
            send.send_response(status(403, "Forbidden"));
        });
        let err = apply_steps(&Client::new(service, "default"), "agents", &scale_down())
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("Deployment/agent: "), "{err}");
        server.await.unwrap();
    }
}
