//! More names for one stored image. An OCI image is stored once per
//! manifest digest, under the name it was first pulled by; a pull of the
//! same manifest by another tag (`app:1`, then `app:2`) or from another
//! repository (`registry.k8s.io/pause:3.9` and `k8s.gcr.io/pause:3.9`)
//! records that name beside it in meta.json, as containerd and CRI-O keep
//! several references to one image. Removing the image removes every name.

use std::fs::{self, File};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use spec::{ImageId, ImageName};

use super::{fsync_dir, io_err, ImageMeta, Store, StoreError};

/// Another name of a stored image, with the tag it was pulled by (none for
/// a pull by digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherName {
    pub name: ImageName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ImageMeta {
    /// Every (name, tag) the image is known by: its own first.
    pub fn names(&self) -> Vec<(&ImageName, Option<&str>)> {
        let own = (&self.name, self.labels.get("version").map(String::as_str));
        std::iter::once(own).chain(self.other_names.iter().map(|o| (&o.name, o.tag.as_deref()))).collect()
    }

    /// True if the image is known as `name` with `tag` (any tag when
    /// `tag` is `None`).
    pub fn known_as(&self, name: &ImageName, tag: Option<&str>) -> bool {
        self.names().iter().any(|(n, t)| *n == name && (tag.is_none() || *t == tag))
    }
}

impl Store {
    /// Records that image `id` is also `name` (with `tag`), unless it is
    /// known by that already; returns its metadata as it now stands. The
    /// image directory is flocked while meta.json is rewritten (aside, then
    /// renamed over), so concurrent pulls of one image by several names
    /// each add theirs.
    pub fn add_name(&self, id: &ImageId, name: &ImageName, tag: Option<&str>) -> Result<ImageMeta, StoreError> {
        let dir = self.image_dir(id);
        let handle = File::open(&dir).map_err(io_err("open", &dir))?;
        let _lock = Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            op: "lock",
            path: dir.clone(),
            source: e.into(),
        })?;
        let mut meta = self.meta(id)?;
        let exact = meta.names().iter().any(|(n, t)| *n == name && *t == tag);
        // A pull by digest adds a name, not a tagless twin of a tagged one.
        if exact || (tag.is_none() && meta.known_as(name, None)) {
            return Ok(meta);
        }
        meta.other_names.push(OtherName { name: name.clone(), tag: tag.map(str::to_owned) });
        let path = dir.join("meta.json");
        let tmp = dir.join(format!(".meta.json.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io_err("serialize", &path)(e.into()))?;
        fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        fsync_dir(&dir);
        tracing::info!(image = %id, %name, ?tag, "another name recorded");
        Ok(meta)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::paths::Dirs;

    fn name(s: &str) -> ImageName {
        ImageName::new(s).unwrap()
    }

    #[test]
    fn names_are_added_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path().join("data"), tmp.path().join("config"));
        let store = Store::open(&dirs).unwrap();
        let id: ImageId = format!("sha256-{}", "ab".repeat(32)).parse().unwrap();
        let dir = store.image_dir(&id);
        fs::create_dir_all(&dir).unwrap();
        let meta = ImageMeta {
            id: id.clone(),
            name: name("registry.k8s.io/pause"),
            labels: BTreeMap::from([("version".to_owned(), "3.9".to_owned())]),
            size: 1,
            uncompressed_size: 1,
            signer: None,
            imported_at: String::new(),
            source: String::new(),
            oci: None,
            other_names: Vec::new(),
        };
        fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();

        // Its own name and tag, or its name by digest: nothing to add.
        assert!(store.add_name(&id, &name("registry.k8s.io/pause"), Some("3.9")).unwrap().other_names.is_empty());
        assert!(store.add_name(&id, &name("registry.k8s.io/pause"), None).unwrap().other_names.is_empty());
        store.add_name(&id, &name("registry.k8s.io/pause"), Some("latest")).unwrap();
        store.add_name(&id, &name("k8s.gcr.io/pause"), Some("3.9")).unwrap();
        let m = store.add_name(&id, &name("k8s.gcr.io/pause"), Some("3.9")).unwrap();
        assert_eq!(m.other_names.len(), 2, "{m:?}");
        let m = store.meta(&id).unwrap();
        let names: Vec<String> = m.names().iter().map(|(n, t)| format!("{n}:{}", t.unwrap_or("-"))).collect();
        assert_eq!(names, ["registry.k8s.io/pause:3.9", "registry.k8s.io/pause:latest", "k8s.gcr.io/pause:3.9"]);
        assert!(m.known_as(&name("k8s.gcr.io/pause"), Some("3.9")));
        assert!(m.known_as(&name("k8s.gcr.io/pause"), None));
        assert!(!m.known_as(&name("k8s.gcr.io/pause"), Some("3.8")));
        assert!(!dir.join(format!(".meta.json.{}", std::process::id())).exists());
    }
}
