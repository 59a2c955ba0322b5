//! A reflector store by namespace: what a watch has listed and seen since, as kube's
//! [`Store`](kube::runtime::reflector::Store) keeps it, but found a namespace at a time. Every
//! budget reads the pods and workloads of its own namespace at every cycle; with a flat store
//! each read would scan the whole cluster's cache (10,000 pods, for each of 1,000 budgets).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use kube::{Resource, runtime::watcher};

type Namespaces<K> = HashMap<String, HashMap<String, Arc<K>>>;

/// The read side: cheap to clone, every clone sees the same objects.
pub struct Cache<K> {
    live: Arc<RwLock<Namespaces<K>>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            live: self.live.clone(),
        }
    }
}

/// The write side, fed a watch's events in order.
pub struct Writer<K> {
    live: Arc<RwLock<Namespaces<K>>>,
    /// A relisting in progress: it replaces the objects only once it is complete.
    buffer: Option<Namespaces<K>>,
}

/// An empty cache and its writer.
pub fn cache<K>() -> (Cache<K>, Writer<K>) {
    let live = Arc::new(RwLock::new(HashMap::new()));
    (Cache { live: live.clone() }, Writer { live, buffer: None })
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn insert<K: Resource + Clone>(namespaces: &mut Namespaces<K>, obj: &K) {
    let (namespace, name) = key(obj);
    namespaces
        .entry(namespace)
        .or_default()
        .insert(name, Arc::new(obj.clone()));
}

impl<K: Resource + Clone> Writer<K> {
    /// Applies one event of the watch, as kube's reflector does: objects listed after a
    /// restart replace the old ones all at once, when the listing is done.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(obj) => insert(&mut self.live.write().expect("cache lock"), obj),
            watcher::Event::Delete(obj) => {
                let (namespace, name) = key(obj);
                let mut live = self.live.write().expect("cache lock");
                if let Some(objects) = live.get_mut(&namespace) {
                    objects.remove(&name);
                    if objects.is_empty() {
                        live.remove(&namespace);
                    }
                }
            }
            watcher::Event::Init => self.buffer = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => insert(self.buffer.get_or_insert_default(), obj),
            watcher::Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                *self.live.write().expect("cache lock") = listed;
            }
        }
    }
}

impl<K> Cache<K> {
    /// The objects of `namespace`, in no particular order.
    pub fn namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let live = self.live.read().expect("cache lock");
        live.get(namespace)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The object `name` of `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let live = self.live.read().expect("cache lock");
        live.get(namespace)?.get(name).cloned()
    }
}

/// For tests: a cache holding `objects`, filled the way a watch's first listing fills it.
#[cfg(test)]
pub(crate) fn filled<K: Resource + Clone>(objects: impl IntoIterator<Item = K>) -> Cache<K> {
    let (cache, mut writer) = cache();
    writer.apply(&watcher::Event::Init);
    for object in objects {
        writer.apply(&watcher::Event::InitApply(object));
    }
    writer.apply(&watcher::Event::InitDone);
    cache
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;

    use super::*;

    fn pod(namespace: &str, name: &str, ip: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: {namespace}}}\nstatus: {{podIP: {ip}}}"
        ))
        .expect("fixture parses")
    }

    /// How many objects `cache` holds, over every namespace.
    fn count(cache: &Cache<Pod>) -> usize {
        cache.live.read().unwrap().values().map(HashMap::len).sum()
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_namespace_holds_its_own_objects_only_and_follows_applies_and_deletes() {
        let (cache, mut writer) = cache::<Pod>();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "p1", "10.0.0.1")));
        assert_eq!(count(&cache), 0, "a listing in progress is not seen");
        writer.apply(&watcher::Event::InitApply(pod("b", "p1", "10.0.0.2")));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(cache.namespace("a")), ["p1"]);
        assert_eq!(count(&cache), 2);

        writer.apply(&watcher::Event::Apply(pod("a", "p1", "10.0.0.9")));
        writer.apply(&watcher::Event::Apply(pod("a", "p2", "10.0.0.3")));
        assert_eq!(names(cache.namespace("a")), ["p1", "p2"]);
        let p1 = cache.get("a", "p1").unwrap();
        assert_eq!(p1.status.as_ref().unwrap().pod_ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(
            cache.get("b", "p1").unwrap().status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.0.0.2")
        );

        writer.apply(&watcher::Event::Delete(pod("b", "p1", "10.0.0.2")));
        assert!(cache.namespace("b").is_empty() && cache.get("b", "p1").is_none());
        assert!(cache.namespace("c").is_empty());
    }

    #[test]
    fn a_relisting_replaces_everything_at_once_when_it_is_done() {
        let (reader, mut writer) = cache::<Pod>();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "gone", "10.0.0.1")));
        writer.apply(&watcher::Event::InitApply(pod("a", "kept", "10.0.0.2")));
        writer.apply(&watcher::Event::InitDone);
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "kept", "10.0.0.2")));
        writer.apply(&watcher::Event::InitApply(pod("d", "new", "10.0.0.4")));
        assert_eq!(
            names(reader.namespace("a")),
            ["gone", "kept"],
            "the old objects until it is done"
        );
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(reader.namespace("a")), ["kept"]);
        assert_eq!(names(reader.namespace("d")), ["new"]);
    }
}
