//! Waiting for exactly the state a test asserts: through watches where one object is awaited,
//! bounded by [`TIMEOUT`] everywhere.

use super::*;

/// Awaits `future` for at most [`TIMEOUT`], failing the test with `what` otherwise.
pub async fn within<F: Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the wall clock is in a later second than `since`. The API server keeps
/// creation and start times in whole seconds, and accounting rule 3 counts a pod that started
/// in the second its binding was created: a test that needs "started before it was bound"
/// creates the binding only after this.
pub async fn next_second_after(since: jiff::Timestamp) {
    let boundary = jiff::Timestamp::from_second(since.as_second() + 1).expect("a time in range");
    let wait = boundary.duration_since(jiff::Timestamp::now());
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
}

/// Waits until the object satisfies `cond` (through a watch, not a sleep) and returns it. On
/// a timeout, the failure shows the object's last status.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug + Send + 'static,
{
    let waiting = await_condition(api.clone(), name, move |obj: Option<&K>| obj.is_some_and(&cond));
    let Ok(obj) = tokio::time::timeout(TIMEOUT, waiting).await else {
        let last = match api.get_opt(name).await {
            Ok(Some(obj)) => serde_json::to_value(&obj).map_or_else(|e| e.to_string(), |v| v["status"].to_string()),
            Ok(None) => "no such object".to_string(),
            Err(e) => e.to_string(),
        };
        panic!("timed out waiting for {what}; its status now: {last}");
    };
    obj.unwrap_or_else(|e| panic!("watching for {what}: {e}"))
        .expect("the condition only holds for an existing object")
}

/// Waits until all `pods` pods of the binding were scraped in its budget's last cycle. Pods
/// that ran before their binding count only what they spend after their first scrape (rule
/// 3): a test spends only after this.
pub async fn wait_scraped(bindings: &Api<tokenbudget::api::BudgetBinding>, name: &str, pods: i64) {
    wait_for(bindings, name, &format!("all {pods} pods of {name} scraped"), |bb| {
        bb.status
            .as_ref()
            .is_some_and(|s| s.pods == Some(pods) && s.scraped_pods == Some(pods))
    })
    .await;
}

/// Waits (through a watch) until the object is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    within(await_condition(api.clone(), name, |o: Option<&K>| o.is_none()), what)
        .await
        .unwrap_or_else(|e| panic!("watching for {what}: {e}"));
}

/// Waits until the Deployment's controller-manager has created `count` pods; returns their names.
pub async fn pods_of(pods: &Api<k8s_openapi::api::core::v1::Pod>, app: &str, count: usize) -> Vec<String> {
    within(
        async {
            loop {
                let list = pods
                    .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
                    .await
                    .unwrap();
                let mut names: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if names.len() == count {
                    names.sort();
                    return names;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        "the controller-manager to create the pods",
    )
    .await
}

/// Waits for an Event in the namespace that satisfies `pred` and returns it. Event names are
/// generated, so this lists (every 200 ms) rather than watching one object.
pub async fn wait_event(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    what: &str,
    pred: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) -> k8s_openapi::api::events::v1::Event {
    within(
        async {
            loop {
                let list = events.list(&Default::default()).await.expect("events list");
                if let Some(e) = list.items.into_iter().find(&pred) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
        what,
    )
    .await
}
