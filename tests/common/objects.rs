//! Builders of the workload objects the tests create.

/// A Deployment whose pods expose a `metrics` port 9464.
pub fn deployment(name: &str, replicas: i32) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name, "team": "research"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "agent", "image": "agent:latest",
                    "ports": [{"name": "metrics", "containerPort": 9464}]
                }]}
            }
        }
    }))
    .unwrap()
}
