//! An app's `devices`: host device nodes bound into the app.

use std::collections::BTreeSet;

use super::{raw, Cx, FieldPath, Result, MAX_ENTRIES};

impl Cx<'_> {
    /// `devices`: absolute host and app paths (no `..`, not `/` in the
    /// app), each app path once, permissions a non-empty subset of `rwm`.
    pub(super) fn devices(&self, field: &FieldPath, list: &[raw::Device]) -> Result<Vec<crate::pod::Device>> {
        self.count(field, list.len(), MAX_ENTRIES)?;
        let mut out: Vec<crate::pod::Device> = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let at = field.index(i);
            self.abs_path(&at.key("host"), &d.host)?;
            self.abs_path(&at.key("path"), &d.path)?;
            if d.path.trim_end_matches('/').is_empty() {
                return Err(self.invalid(&at.key("path"), "a device cannot be the app's root"));
            }
            if out.iter().any(|o| o.path == d.path) {
                return Err(self.invalid(&at.key("path"), format!("{} is given twice", d.path)));
            }
            let permissions = d.permissions.clone().unwrap_or_else(|| "rwm".into());
            let ok = !permissions.is_empty()
                && permissions.len() <= 3
                && permissions.chars().all(|c| "rwm".contains(c))
                && permissions.chars().collect::<BTreeSet<_>>().len() == permissions.len();
            if !ok {
                let m = format!("{permissions:?} is not a combination of r, w and m");
                return Err(self.invalid(&at.key("permissions"), m));
            }
            out.push(crate::pod::Device { host: d.host.clone(), path: d.path.clone(), permissions });
        }
        Ok(out)
    }
}
