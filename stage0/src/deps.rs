//! Image dependency resolution: from a root image, fetch its dependencies
//! recursively, reject cycles, and flatten the graph into the bottom→top layer
//! order that `render` lays down (appc/rkt semantics).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use sha2::{Digest, Sha512};
use spec::{Dependency, ImageId, ImageManifest};

use crate::exit::{Exit, ExitCodeOf};

/// Most distinct dependencies (fetches) one resolution may make. Manifests
/// are untrusted: each may list thousands of dependencies, each of which may
/// list more. This cap also bounds the depth, since a DFS path holds distinct
/// images only (a repeat is a cycle).
pub const MAX_IMAGES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    /// The images in order along the cycle, the first repeated at the end.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("dependency {image} pins imageID {wanted} but the image obtained has ID {got}")]
    IdMismatch { image: String, wanted: ImageId, got: ImageId },
    #[error("dependency {image} resolved to image {id} named {got}")]
    NameMismatch { image: String, id: ImageId, got: String },
    #[error("dependency {image} not found")]
    NotFound { image: String },
    #[error("the dependency tree of {root} needs more than {limit} images")]
    TooMany { root: String, limit: usize },
    /// An `ImageSource` failed in its own way (store I/O, fetch, signature);
    /// `exit` is that failure's own code, passed through.
    #[error("dependency {image}: {source}")]
    Source {
        image: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        exit: Exit,
    },
}

impl ExitCodeOf for DepsError {
    fn exit(&self) -> Exit {
        match self {
            DepsError::Cycle(_)
            | DepsError::IdMismatch { .. }
            | DepsError::NameMismatch { .. }
            | DepsError::TooMany { .. } => Exit::InvalidInput,
            DepsError::NotFound { .. } => Exit::NotFound,
            DepsError::Source { exit, .. } => *exit,
        }
    }
}

impl DepsError {
    /// Wraps an `ImageSource`'s own failure for `image`, keeping its exit code.
    pub fn source(image: impl Into<String>, exit: Exit, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        DepsError::Source { image: image.into(), source: Box::new(err), exit }
    }
}

/// Where resolution gets images. The real one looks in the store and fetches
/// and verifies on a miss; tests use an in-memory fake.
pub trait ImageSource {
    /// The image satisfying `dep` and its manifest. `DepsError::NotFound` or
    /// `DepsError::Source` on failure, naming the dependency with [`describe`].
    fn get(&mut self, dep: &Dependency) -> Result<(ImageId, ImageManifest), DepsError>;
}

/// A dependency as users write it: `name,label=value,...`, plus the pinned
/// ID if any. Used in error messages.
pub fn describe(dep: &Dependency) -> String {
    let mut s = dep.image_name.to_string();
    for l in &dep.labels {
        s.push_str(&format!(",{}={}", l.name, l.value));
    }
    if let Some(id) = &dep.image_id {
        s.push_str(&format!(" (imageID {})", id.short()));
    }
    s
}

/// An appc pathWhitelist as a filter on relative paths inside a rootfs.
///
/// appc: the whitelist of an image is the complete list of paths that exist
/// after that image and its dependencies are laid down. Non-directories must
/// be listed; directories survive if listed or if they hold a listed path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Whitelist {
    /// Paths allowed as non-directories: the listed ones.
    files: BTreeSet<PathBuf>,
    /// Paths allowed as directories: the listed ones and their ancestors.
    dirs: BTreeSet<PathBuf>,
}

/// `/usr//bin/./x` → `usr/bin/x`. Manifest validation already rejects `..`
/// and relative paths, so only normal components remain.
fn relative(p: &str) -> PathBuf {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

impl Whitelist {
    /// Builds a filter from absolute manifest paths (`/usr/bin/x`).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(paths: I) -> Self {
        let mut w = Self::default();
        for p in paths {
            let rel = relative(p.as_ref());
            // Every ancestor (the rootfs itself excluded) must stay a
            // directory to hold the listed path.
            for a in rel.ancestors().skip(1) {
                if !a.as_os_str().is_empty() {
                    w.dirs.insert(a.to_path_buf());
                }
            }
            if !rel.as_os_str().is_empty() {
                w.dirs.insert(rel.clone());
                w.files.insert(rel);
            }
        }
        w
    }

    /// Whether `rel` (relative to the rootfs) may exist, as a directory if
    /// `is_dir`. The rootfs itself always may. A directory refused here
    /// holds nothing allowed, so callers may skip its whole subtree.
    pub fn allows(&self, rel: &Path, is_dir: bool) -> bool {
        if is_dir {
            rel.as_os_str().is_empty() || self.dirs.contains(rel)
        } else {
            self.files.contains(rel)
        }
    }

    fn intersect(&self, other: &Self) -> Self {
        Self {
            files: self.files.intersection(&other.files).cloned().collect(),
            dirs: self.dirs.intersection(&other.dirs).cloned().collect(),
        }
    }

    fn union(&self, other: &Self) -> Self {
        Self {
            files: self.files.union(&other.files).cloned().collect(),
            dirs: self.dirs.union(&other.dirs).cloned().collect(),
        }
    }
}

/// `None` means unrestricted.
fn intersect(a: Option<&Whitelist>, b: Option<&Whitelist>) -> Option<Whitelist> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersect(b)),
        (Some(w), None) | (None, Some(w)) => Some(w.clone()),
        (None, None) => None,
    }
}

/// The flattened dependency tree of a root image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Layers bottom→top, root last: order(X) = order(dep1) ++ … ++ [X],
    /// each image kept at its first occurrence. Later layers win.
    pub order: Vec<ImageId>,
    /// The filter to apply to each layer's own files, for the layers that
    /// have one (absent: unrestricted). It combines the whitelists on the
    /// way from the root down to the layer: a layer reached along several
    /// paths keeps what any of them allows (appc lays a shared dependency
    /// down once per path; the union is the same result, flattened).
    pub whitelists: BTreeMap<ImageId, Whitelist>,
}

impl Resolution {
    /// The tree store key: hex SHA-512 of the ordered IDs joined by `\n`.
    pub fn tree_key(&self) -> String {
        tree_key_of(&self.order)
    }

    /// The filter for layer `id`, if restricted.
    pub fn whitelist(&self, id: &ImageId) -> Option<&Whitelist> {
        self.whitelists.get(id)
    }
}

/// [`Resolution::tree_key`] for a bare layer list (gc re-checks stored lists).
pub fn tree_key_of(order: &[ImageId]) -> String {
    let mut h = Sha512::new();
    for (i, id) in order.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(id.as_str().as_bytes());
    }
    hex::encode(h.finalize())
}

/// What makes two dependencies the same fetch: name, labels (order does not
/// matter) and pinned ID. `size` is a hint only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DepKey {
    name: String,
    labels: BTreeMap<String, String>,
    id: Option<ImageId>,
}

impl DepKey {
    fn of(dep: &Dependency) -> Self {
        Self {
            name: dep.image_name.to_string(),
            labels: dep.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
            id: dep.image_id.clone(),
        }
    }
}

struct Walker<'a> {
    src: &'a mut dyn ImageSource,
    root_name: String,
    fetched: HashMap<DepKey, ImageId>,
    manifests: HashMap<ImageId, Rc<ImageManifest>>,
    graph: DiGraph<ImageId, ()>,
    nodes: HashMap<ImageId, NodeIndex>,
    /// The current DFS path, root first, with names for cycle messages.
    path: Vec<(ImageId, String)>,
    /// Images whose dependencies are all laid out in `order`.
    done: BTreeSet<ImageId>,
    order: Vec<ImageId>,
}

impl Walker<'_> {
    fn node(&mut self, id: &ImageId) -> NodeIndex {
        if let Some(n) = self.nodes.get(id) {
            return *n;
        }
        let n = self.graph.add_node(id.clone());
        self.nodes.insert(id.clone(), n);
        n
    }

    /// Fetches `dep` once per distinct `DepKey`, checking what came back.
    fn fetch(&mut self, dep: &Dependency) -> Result<(ImageId, Rc<ImageManifest>), DepsError> {
        let key = DepKey::of(dep);
        if let Some(id) = self.fetched.get(&key) {
            if let Some(m) = self.manifests.get(id) {
                return Ok((id.clone(), Rc::clone(m)));
            }
        }
        if self.fetched.len() >= MAX_IMAGES {
            return Err(DepsError::TooMany { root: self.root_name.clone(), limit: MAX_IMAGES });
        }
        let (id, manifest) = self.src.get(dep)?;
        if let Some(wanted) = &dep.image_id {
            if *wanted != id {
                return Err(DepsError::IdMismatch { image: describe(dep), wanted: wanted.clone(), got: id });
            }
        }
        // A source answering a name with another image is a bug or an attack;
        // either way the layer list would not be what the manifest asked for.
        if manifest.name != dep.image_name {
            return Err(DepsError::NameMismatch { image: describe(dep), id, got: manifest.name.to_string() });
        }
        self.fetched.insert(key, id.clone());
        let m = Rc::clone(self.manifests.entry(id.clone()).or_insert_with(|| Rc::new(manifest)));
        Ok((id, m))
    }

    /// Post-order DFS: lays out `id`'s dependencies in manifest order, then
    /// `id`. Cycles are caught against the current path, so it terminates.
    fn visit(&mut self, id: &ImageId, manifest: &ImageManifest) -> Result<(), DepsError> {
        self.path.push((id.clone(), manifest.name.to_string()));
        let node = self.node(id);
        for dep in &manifest.dependencies {
            let (dep_id, dep_manifest) = self.fetch(dep)?;
            if let Some(pos) = self.path.iter().position(|(p, _)| *p == dep_id) {
                let mut cycle: Vec<String> = self.path[pos..].iter().map(|(_, n)| n.clone()).collect();
                cycle.push(dep_manifest.name.to_string());
                return Err(DepsError::Cycle(cycle));
            }
            let dep_node = self.node(&dep_id);
            self.graph.update_edge(node, dep_node, ());
            if !self.done.contains(&dep_id) {
                self.visit(&dep_id, &dep_manifest)?;
            }
        }
        self.path.pop();
        self.done.insert(id.clone());
        self.order.push(id.clone());
        Ok(())
    }

    /// Pushes whitelists down the graph from the root: a layer's filter is
    /// its own whitelist intersected with the union of its parents' filters.
    fn whitelists(&self) -> Result<BTreeMap<ImageId, Whitelist>, DepsError> {
        let topo = petgraph::algo::toposort(&self.graph, None).map_err(|c| {
            // `visit` rejects cycles before they enter the graph; kept as an
            // error rather than a panic all the same.
            let name = self.manifests.get(&self.graph[c.node_id()]).map(|m| m.name.to_string());
            DepsError::Cycle(vec![name.unwrap_or_else(|| self.root_name.clone())])
        })?;
        // `None` = unrestricted. Filled parents-first thanks to `topo`.
        let mut eff: HashMap<NodeIndex, Option<Whitelist>> = HashMap::new();
        for n in topo {
            let id = &self.graph[n];
            let own = self
                .manifests
                .get(id)
                .filter(|m| !m.path_whitelist.is_empty())
                .map(|m| Whitelist::new(&m.path_whitelist));
            let mut inherited: Option<Option<Whitelist>> = None;
            for p in self.graph.neighbors_directed(n, Direction::Incoming) {
                let parent = eff.get(&p).cloned().flatten();
                inherited = Some(match (inherited, parent) {
                    (None, p) => p,
                    (Some(Some(a)), Some(b)) => Some(a.union(&b)),
                    // Any unrestricted path leaves the layer unrestricted.
                    (Some(_), _) => None,
                });
            }
            let filter = intersect(own.as_ref(), inherited.flatten().as_ref());
            eff.insert(n, filter);
        }
        Ok(eff.into_iter().filter_map(|(n, w)| w.map(|w| (self.graph[n].clone(), w))).collect())
    }
}

/// Resolves `root`'s dependencies through `src` into the layer order and
/// filters that `render` needs. Each distinct dependency is fetched once.
pub fn resolve(root_id: ImageId, root: &ImageManifest, src: &mut dyn ImageSource) -> Result<Resolution, DepsError> {
    let mut w = Walker {
        src,
        root_name: root.name.to_string(),
        fetched: HashMap::new(),
        manifests: HashMap::new(),
        graph: DiGraph::new(),
        nodes: HashMap::new(),
        path: Vec::new(),
        done: BTreeSet::new(),
        order: Vec::new(),
    };
    w.manifests.insert(root_id.clone(), Rc::new(root.clone()));
    w.visit(&root_id, root)?;
    let whitelists = w.whitelists()?;
    tracing::debug!(root = %root.name, layers = w.order.len(), fetches = w.fetched.len(), "resolved dependencies");
    Ok(Resolution { order: w.order, whitelists })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::{AcIdentifier, Label};

    fn name(n: &str) -> AcIdentifier {
        AcIdentifier::new(format!("example.com/{n}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn id(n: u8) -> ImageId {
        ImageId::from_digest(&[n; 64])
    }

    fn dep(n: &str) -> Dependency {
        Dependency { image_name: name(n), image_id: None, labels: vec![], size: None }
    }

    fn manifest(n: &str, deps: Vec<Dependency>, whitelist: &[&str]) -> ImageManifest {
        ImageManifest {
            ac_kind: "ImageManifest".into(),
            ac_version: "0.8.11".into(),
            name: name(n),
            labels: vec![],
            app: None,
            dependencies: deps,
            path_whitelist: whitelist.iter().map(|s| s.to_string()).collect(),
            annotations: vec![],
        }
    }

    /// In-memory images looked up by name only (pinned IDs are deliberately
    /// ignored so the resolver's own ID check is what gets tested).
    #[derive(Default)]
    struct Fake {
        images: Vec<(ImageId, ImageManifest)>,
        calls: HashMap<String, usize>,
    }

    impl Fake {
        fn with(mut self, n: u8, m: ImageManifest) -> Self {
            self.images.push((id(n), m));
            self
        }
    }

    impl ImageSource for Fake {
        fn get(&mut self, dep: &Dependency) -> Result<(ImageId, ImageManifest), DepsError> {
            *self.calls.entry(dep.image_name.to_string()).or_default() += 1;
            self.images
                .iter()
                .find(|(_, m)| m.name == dep.image_name)
                .cloned()
                .ok_or_else(|| DepsError::NotFound { image: describe(dep) })
        }
    }

    fn err(r: Result<Resolution, DepsError>) -> DepsError {
        match r {
            Ok(r) => panic!("resolved unexpectedly: {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn diamond_orders_depth_first_and_fetches_once() {
        // a → b, c; b → d; c → d, with the same labels in another order.
        let d_labeled = |ls: &[(&str, &str)]| Dependency {
            labels: ls.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
            ..dep("d")
        };
        let mut src = Fake::default()
            .with(2, manifest("b", vec![d_labeled(&[("version", "1"), ("os", "linux")])], &[]))
            .with(3, manifest("c", vec![d_labeled(&[("os", "linux"), ("version", "1")])], &[]))
            .with(4, manifest("d", vec![], &[]));
        let root = manifest("a", vec![dep("b"), dep("c")], &[]);
        let res = resolve(id(1), &root, &mut src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.order, vec![id(4), id(2), id(3), id(1)]);
        assert_eq!(src.calls.get("example.com/d"), Some(&1), "d fetched once: {:?}", src.calls);
        assert_eq!(src.calls.values().sum::<usize>(), 3);
        assert!(res.whitelists.is_empty());
    }

    #[test]
    fn tree_key_hashes_the_ordered_list() {
        let res = Resolution { order: vec![id(4), id(1)], whitelists: BTreeMap::new() };
        let text = format!("{}\n{}", id(4), id(1));
        assert_eq!(res.tree_key(), hex::encode(Sha512::digest(text.as_bytes())));
        let swapped = Resolution { order: vec![id(1), id(4)], whitelists: BTreeMap::new() };
        assert_ne!(res.tree_key(), swapped.tree_key());
    }

    #[test]
    fn cycle_is_named_in_order() {
        let mut src = Fake::default()
            .with(1, manifest("a", vec![dep("b")], &[]))
            .with(2, manifest("b", vec![dep("c")], &[]))
            .with(3, manifest("c", vec![dep("a")], &[]));
        let root = manifest("a", vec![dep("b")], &[]);
        let e = err(resolve(id(1), &root, &mut src));
        assert_eq!(e.to_string(), "dependency cycle: example.com/a -> example.com/b -> example.com/c -> example.com/a");
        assert_eq!(e.exit(), Exit::InvalidInput);
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let root = manifest("a", vec![dep("a")], &[]);
        let mut src = Fake::default().with(1, root.clone());
        let e = err(resolve(id(1), &root, &mut src));
        assert_eq!(e.to_string(), "dependency cycle: example.com/a -> example.com/a");
    }

    #[test]
    fn pinned_id_must_match() {
        let pinned = Dependency { image_id: Some(id(9)), ..dep("b") };
        let mut src = Fake::default().with(2, manifest("b", vec![], &[]));
        let e = err(resolve(id(1), &manifest("a", vec![pinned], &[]), &mut src));
        let msg = e.to_string();
        assert!(matches!(e, DepsError::IdMismatch { .. }), "{msg}");
        assert!(msg.contains(id(9).as_str()) && msg.contains(id(2).as_str()), "{msg}");
        assert!(msg.contains("example.com/b"), "{msg}");
        assert_eq!(e.exit(), Exit::InvalidInput);
    }

    #[test]
    fn missing_dependency_passes_through() {
        let mut src = Fake::default().with(2, manifest("b", vec![dep("gone")], &[]));
        let e = err(resolve(id(1), &manifest("a", vec![dep("b")], &[]), &mut src));
        assert_eq!(e.to_string(), "dependency example.com/gone not found");
        assert_eq!(e.exit(), Exit::NotFound);
    }

    #[test]
    fn source_errors_keep_their_exit_code() {
        struct Offline;
        impl ImageSource for Offline {
            fn get(&mut self, dep: &Dependency) -> Result<(ImageId, ImageManifest), DepsError> {
                Err(DepsError::Source {
                    image: describe(dep),
                    source: "connection refused".into(),
                    exit: Exit::Network,
                })
            }
        }
        let e = err(resolve(id(1), &manifest("a", vec![dep("b")], &[]), &mut Offline));
        assert_eq!(e.exit(), Exit::Network);
        assert_eq!(e.to_string(), "dependency example.com/b: connection refused");
    }

    #[test]
    fn hostile_fan_out_is_capped() {
        // 300 distinct dependencies (distinct labels) of one image.
        let deps = (0..300)
            .map(|i| Dependency { labels: vec![Label { name: "n".into(), value: i.to_string() }], ..dep("b") })
            .collect();
        let mut src = Fake::default().with(2, manifest("b", vec![], &[]));
        let e = err(resolve(id(1), &manifest("a", deps, &[]), &mut src));
        assert!(matches!(e, DepsError::TooMany { limit: MAX_IMAGES, .. }), "{e}");
        assert_eq!(src.calls.values().sum::<usize>(), MAX_IMAGES);
    }

    #[test]
    fn whitelists_flow_down_the_graph() {
        // a(wl: /x, /y, /z/1) → b(wl: /x, /z/1), c; b → d; c → d; b → e.
        // d is reachable through c without b's list, so only a's applies;
        // e is reachable through b only, so both apply.
        let mut src = Fake::default()
            .with(2, manifest("b", vec![dep("d"), dep("e")], &["/x", "/z/1"]))
            .with(3, manifest("c", vec![dep("d")], &[]))
            .with(4, manifest("d", vec![], &[]))
            .with(5, manifest("e", vec![], &[]));
        let root = manifest("a", vec![dep("b"), dep("c")], &["/x", "/y", "/z/1"]);
        let res = resolve(id(1), &root, &mut src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.order, vec![id(4), id(5), id(2), id(3), id(1)]);
        let allows =
            |n: u8, p: &str, dir: bool| res.whitelist(&id(n)).map(|w| w.allows(Path::new(p), dir)).unwrap_or(true);
        assert!(allows(4, "y", false) && allows(3, "y", false));
        assert!(!allows(5, "y", false) && allows(5, "x", false));
        assert!(allows(5, "z", true) && !allows(5, "z", false) && !allows(5, "z/2", false));
        assert!(!allows(1, "w", false) && !allows(4, "w", true) && allows(1, "", true));
        assert_eq!(res.whitelists.len(), 5, "every layer is under a's list");
    }
}
