//! A reflector store by namespace: what a watch has listed and seen since, as kube's
//! [`Store`](kube::runtime::reflector::Store) keeps it, but found a namespace at a time, and
//! within a namespace by name or by controlling owner. Every budget reads the pods and
//! workloads of its own namespace at every cycle; with a flat store each read would scan the
//! whole cluster's cache (10,000 pods, for each of 1,000 budgets), and with a namespace's list
//! it would scan the namespace's (10,000 pods again, when one namespace holds them all).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use kube::{Resource, runtime::watcher};

/// The objects of one namespace.
struct Namespace<K> {
    /// By name.
    objects: HashMap<String, Arc<K>>,
    /// By the uid of their controller (the ownerReference with `controller: true`), then name.
    owned: HashMap<String, BTreeMap<String, Arc<K>>>,
}

impl<K> Default for Namespace<K> {
    fn default() -> Self {
        Namespace {
            objects: HashMap::new(),
            owned: HashMap::new(),
        }
    }
}

type Namespaces<K> = HashMap<String, Namespace<K>>;

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

/// A cache holding `objects`, filled the way a watch's first listing fills it: for tests and
/// benchmarks, which have no watch.
pub fn filled<K: Resource + Clone>(objects: impl IntoIterator<Item = K>) -> Cache<K> {
    let (cache, mut writer) = cache();
    writer.apply(&watcher::Event::Init);
    for object in objects {
        writer.apply(&watcher::Event::InitApply(object));
    }
    writer.apply(&watcher::Event::InitDone);
    cache
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The uid of an object's controller, if it has one.
fn controller<K: Resource>(obj: &K) -> Option<&str> {
    let owners = obj.meta().owner_references.as_deref()?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

impl<K: Resource> Namespace<K> {
    /// Takes `obj` out of its controller's index, if that is where it is.
    fn disown(&mut self, name: &str, obj: &K) {
        if let Some(uid) = controller(obj)
            && let Some(owned) = self.owned.get_mut(uid)
        {
            owned.remove(name);
            if owned.is_empty() {
                self.owned.remove(uid);
            }
        }
    }

    fn insert(&mut self, name: String, obj: Arc<K>) {
        // A changed object may have another controller than before (adopted, orphaned).
        if let Some(old) = self.objects.insert(name.clone(), obj.clone()) {
            self.disown(&name, &old);
        }
        if let Some(uid) = controller(obj.as_ref()) {
            self.owned.entry(uid.to_string()).or_default().insert(name, obj);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.objects.remove(name) {
            self.disown(name, &old);
        }
    }
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
                    if objects.objects.is_empty() {
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
            .map(|ns| ns.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Calls `f` with each object of `namespace`, without copying the list: for the reads that
    /// keep a few objects of many. `f` runs under the cache's read lock, so it must be quick.
    pub fn each(&self, namespace: &str, mut f: impl FnMut(&K)) {
        let live = self.live.read().expect("cache lock");
        for obj in live.get(namespace).into_iter().flat_map(|ns| ns.objects.values()) {
            f(obj);
        }
    }

    /// The object `name` of `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let live = self.live.read().expect("cache lock");
        live.get(namespace)?.objects.get(name).cloned()
    }

    /// The objects of `namespace` whose controller has this uid, by name. The uid alone
    /// decides: whoever reads them checks the controller's kind and name where they matter.
    pub fn owned_by(&self, namespace: &str, uid: &str) -> Vec<Arc<K>> {
        let live = self.live.read().expect("cache lock");
        live.get(namespace)
            .and_then(|ns| ns.owned.get(uid))
            .map(|owned| owned.values().cloned().collect())
            .unwrap_or_default()
    }
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
        cache.live.read().unwrap().values().map(|ns| ns.objects.len()).sum()
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

    /// Pod `name` of namespace `a` controlled by the owner of uid `owner` (or by none).
    fn owned_pod(name: &str, owner: Option<&str>) -> Pod {
        let mut pod = pod("a", name, "10.0.0.1");
        pod.metadata.owner_references = owner.map(|uid| {
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]
        });
        pod
    }

    #[test]
    fn objects_are_found_by_their_controllers_uid_through_adoption_orphaning_and_deletion() {
        let (cache, mut writer) = cache::<Pod>();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(owned_pod("p1", Some("rs1"))));
        writer.apply(&watcher::Event::InitApply(owned_pod("p2", Some("rs1"))));
        writer.apply(&watcher::Event::InitApply(owned_pod("p3", None)));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(cache.owned_by("a", "rs1")), ["p1", "p2"]);
        assert!(cache.owned_by("b", "rs1").is_empty(), "another namespace");

        // Released by its controller, then adopted by another; a third one adopted.
        writer.apply(&watcher::Event::Apply(owned_pod("p2", None)));
        assert_eq!(names(cache.owned_by("a", "rs1")), ["p1"]);
        writer.apply(&watcher::Event::Apply(owned_pod("p2", Some("rs2"))));
        writer.apply(&watcher::Event::Apply(owned_pod("p3", Some("rs2"))));
        assert_eq!(names(cache.owned_by("a", "rs2")), ["p2", "p3"]);

        // A reference that is not the controller's does not count.
        let mut shared = owned_pod("p4", Some("rs1"));
        shared.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        writer.apply(&watcher::Event::Apply(shared));
        assert_eq!(names(cache.owned_by("a", "rs1")), ["p1"]);

        writer.apply(&watcher::Event::Delete(owned_pod("p1", Some("rs1"))));
        assert!(cache.owned_by("a", "rs1").is_empty());
        assert!(
            !cache.live.read().unwrap()["a"].owned.contains_key("rs1"),
            "no empty entry left"
        );
        let mut seen = Vec::new();
        cache.each("a", |p| seen.push(p.metadata.name.clone().unwrap()));
        seen.sort();
        assert_eq!(seen, ["p2", "p3", "p4"]);

        // A relisting rebuilds the index with the objects.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(owned_pod("p5", Some("rs2"))));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(cache.owned_by("a", "rs2")), ["p5"]);
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
