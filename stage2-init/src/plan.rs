//! The pod as pod-init sees it at startup: every unit read and checked, the
//! dependency graph validated, apps in a start order. Everything that can be
//! wrong with the configuration is found here, before any app starts.

use std::io::Read;
use std::path::{Path, PathBuf};

use spec::unit::{Unit, UnitError, MAX_UNIT_BYTES};
use spec::{AcName, NameError};

use crate::privs::SeccompProgram;

/// One app: its unit and its dependencies, as indices into [`Plan::apps`].
#[derive(Debug)]
pub struct AppPlan {
    pub name: AcName,
    pub unit: Unit,
    /// `After=` and `Requires=`: started once these are settled.
    pub deps: Vec<usize>,
    /// `Requires=`: not started if one of these failed before being ready.
    pub requires: Vec<usize>,
    /// The unit's `SeccompFilter=` programs, read at startup.
    pub seccomp: Vec<SeccompProgram>,
}

/// Apps in a start order: every app comes after its dependencies; ties are
/// broken by name, so the order is stable.
#[derive(Debug)]
pub struct Plan {
    pub apps: Vec<AppPlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Name {
        path: PathBuf,
        #[source]
        source: NameError,
    },
    #[error("{0}")]
    Unit(#[from] UnitError),
    #[error("no units in {0}")]
    NoUnits(PathBuf),
    #[error("app {app} is ordered after {dep}, which has no unit")]
    UnknownApp { app: String, dep: String },
    #[error("dependency cycle: {0}")]
    Cycle(String),
    #[error("app {app}: no rootfs directory at {path}")]
    NoRootfs { app: String, path: PathBuf },
    #[error("app {app}: seccomp filter {path}: {why}")]
    Seccomp { app: String, path: PathBuf, why: String },
}

/// Reads `root/units/*.unit` and checks each app has `root/apps/<app>/rootfs`.
/// No unit is an error, except in a sandbox.
pub fn load(root: &Path, sandbox: bool) -> Result<Plan, PlanError> {
    let dir = root.join("units");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PlanError::Io { path, source }
    };
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".unit")) else {
            continue; // not a unit: stage1's temp files, say
        };
        let name = AcName::new(stem).map_err(|source| PlanError::Name { path: path.clone(), source })?;
        let unit = read_unit(root, &name)?;
        units.push((name, unit));
    }
    if units.is_empty() && !sandbox {
        return Err(PlanError::NoUnits(dir));
    }
    let mut plan = order(units)?;
    for app in &mut plan.apps {
        app.seccomp = read_filters(root, app.name.as_str(), &app.unit.seccomp_filters)?;
    }
    Ok(plan)
}

/// One app's unit and seccomp programs, read from the pod root as [`load`]
/// reads them: for `pod enter`, which runs a command as the app runs.
pub fn load_app(root: &Path, app: &AcName) -> Result<(Unit, Vec<SeccompProgram>), PlanError> {
    let unit = read_unit(root, app)?;
    let seccomp = read_filters(root, app.as_str(), &unit.seccomp_filters)?;
    Ok((unit, seccomp))
}

/// `cgroup.procs` of each cgroup app `app`'s processes join: the unit's
/// `Cgroup=` directories (paths inside the pod root `root`), or, for a
/// unit with limits and no `Cgroup=` (a VM pod's), the guest cgroup
/// pod-init makes for the app with them (made or updated here: see
/// [`crate::cgroupfs::guest_app`]). `Err`: why the limits cannot be.
pub fn cgroup_procs(root: &Path, app: &str, unit: &Unit) -> Result<Vec<PathBuf>, String> {
    if unit.cgroups.is_empty() && !unit.limits.is_empty() {
        let dir = crate::cgroupfs::guest_app(Path::new(crate::cgroupfs::GUEST_ROOT), app, &unit.limits)?;
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    Ok(unit.cgroups.iter().map(|c| root.join(c.trim_start_matches('/')).join("cgroup.procs")).collect())
}

/// `root/units/<app>.unit`, parsed; the app must have its rootfs.
fn read_unit(root: &Path, name: &AcName) -> Result<Unit, PlanError> {
    let path = root.join("units").join(format!("{name}.unit"));
    let io = |source| PlanError::Io { path: path.clone(), source };
    let mut text = String::new();
    let file = std::fs::File::open(&path).map_err(io)?;
    // One byte over the limit is enough for `Unit::parse` to reject it.
    file.take(MAX_UNIT_BYTES as u64 + 1).read_to_string(&mut text).map_err(io)?;
    let unit = Unit::parse(&text, &path.display().to_string())?;
    let rootfs = root.join("apps").join(name.as_str()).join("rootfs");
    if !rootfs.is_dir() {
        return Err(PlanError::NoRootfs { app: name.to_string(), path: rootfs });
    }
    Ok(unit)
}

/// Reads `SeccompFilter=` files (paths inside the pod root).
fn read_filters(root: &Path, app: &str, paths: &[String]) -> Result<Vec<SeccompProgram>, PlanError> {
    let mut programs = Vec::with_capacity(paths.len());
    for p in paths {
        let path = root.join(p.trim_start_matches('/'));
        let fail = |why: String| PlanError::Seccomp { app: app.to_owned(), path: path.clone(), why };
        // One instruction over the limit is enough for `from_bytes` to refuse it.
        let mut bytes = Vec::new();
        let file = std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?;
        file.take(8 * 4097).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
        programs.push(SeccompProgram::from_bytes(&bytes).map_err(fail)?);
    }
    Ok(programs)
}

/// Orders apps so that each comes after its dependencies (Kahn's algorithm,
/// smallest name first); names unknown apps and cycles.
pub fn order(mut units: Vec<(AcName, Unit)>) -> Result<Plan, PlanError> {
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let index = |name: &AcName| units.iter().position(|(n, _)| n == name);
    let (mut deps, mut requires) = (Vec::with_capacity(units.len()), Vec::with_capacity(units.len()));
    for (name, unit) in &units {
        let unknown = |dep: &AcName| PlanError::UnknownApp { app: name.to_string(), dep: dep.to_string() };
        let find = |dep: &AcName| index(dep).ok_or_else(|| unknown(dep));
        deps.push(unit.dependencies().into_iter().map(find).collect::<Result<Vec<_>, _>>()?);
        requires.push(unit.requires.iter().map(find).collect::<Result<Vec<_>, _>>()?);
    }
    let mut placed = vec![false; units.len()];
    let mut sequence = Vec::with_capacity(units.len());
    while sequence.len() < units.len() {
        let next = (0..units.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        let Some(i) = next else { return Err(PlanError::Cycle(describe_cycle(&units, &deps, &placed))) };
        placed[i] = true;
        sequence.push(i);
    }
    // Re-index dependencies by start position.
    let mut position = vec![0; units.len()];
    for (pos, &old) in sequence.iter().enumerate() {
        position[old] = pos;
    }
    let mut slots: Vec<Option<(AcName, Unit)>> = units.into_iter().map(Some).collect();
    let mut apps = Vec::with_capacity(slots.len());
    for &old in &sequence {
        if let Some((name, unit)) = slots[old].take() {
            let renumber = |list: &[usize]| list.iter().map(|&d| position[d]).collect();
            let (deps, requires) = (renumber(&deps[old]), renumber(&requires[old]));
            apps.push(AppPlan { name, unit, deps, requires, seccomp: Vec::new() });
        }
    }
    Ok(Plan { apps })
}

/// Follows unplaced dependencies from an unplaced app until a name repeats.
fn describe_cycle(units: &[(AcName, Unit)], deps: &[Vec<usize>], placed: &[bool]) -> String {
    let mut path: Vec<usize> = Vec::new();
    let mut at = (0..units.len()).find(|&i| !placed[i]).unwrap_or(0);
    loop {
        if let Some(start) = path.iter().position(|&p| p == at) {
            let names: Vec<&str> = path[start..].iter().chain([&at]).map(|&i| units[i].0.as_str()).collect();
            return names.join(" -> ");
        }
        path.push(at);
        match deps[at].iter().find(|&&d| !placed[d]) {
            Some(&d) => at = d,
            None => return "unresolvable order".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(after: &str, requires: &str) -> Unit {
        let text = format!("[Unit]\nAfter={after}\nRequires={requires}\n[Service]\nExecStart=/bin/true\n");
        Unit::parse(&text, "t").expect("unit")
    }

    fn plan(apps: &[(&str, &str, &str)]) -> Result<Plan, PlanError> {
        order(apps.iter().map(|(n, a, r)| (AcName::new(*n).expect("name"), unit(a, r))).collect())
    }

    #[test]
    fn orders_dependencies_first() {
        let p = plan(&[("web", "cache", "db"), ("db", "", ""), ("cache", "db", ""), ("aaa", "", "")]).expect("plan");
        let names: Vec<&str> = p.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["aaa", "db", "cache", "web"]);
        assert_eq!(p.apps[3].deps, [2, 1]);
        assert_eq!(p.apps[3].requires, [1]);
        assert_eq!(p.apps[2].deps, [1]);
    }

    #[test]
    fn cycles_and_unknown_apps() {
        let err = plan(&[("a", "b", ""), ("b", "", "c"), ("c", "a", ""), ("d", "", "")]).expect_err("cycle");
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
        let err = plan(&[("a", "a", "")]).expect_err("self");
        assert_eq!(err.to_string(), "dependency cycle: a -> a");
        let err = plan(&[("web", "db", "")]).expect_err("unknown");
        assert_eq!(err.to_string(), "app web is ordered after db, which has no unit");
    }
}
