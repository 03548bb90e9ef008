//! An app's `capabilities: { add: [...], drop: [...] }` against the default
//! set (see `crate::security`).

use crate::security::{parse_cap_or_all, CapSet, DEFAULT_CAPS};

/// A wrong entry: the list (`add` or `drop`), its index, and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CapError {
    pub list: &'static str,
    pub index: usize,
    pub message: String,
}

/// The app's set, as Docker computes it: `add: [ALL]` is every capability
/// but those dropped; `drop: [ALL]` is exactly those added; otherwise the
/// default set less `drop`, plus `add`. A name in both lists is an error.
pub(super) fn capabilities(add: &[String], drop: &[String]) -> Result<CapSet, CapError> {
    let parse = |list: &'static str, names: &[String]| -> Result<Vec<CapSet>, CapError> {
        names
            .iter()
            .enumerate()
            .map(|(index, n)| parse_cap_or_all(n).map_err(|message| CapError { list, index, message }))
            .collect()
    };
    let (added, dropped) = (parse("add", add)?, parse("drop", drop)?);
    let union = |sets: &[CapSet]| sets.iter().fold(CapSet::EMPTY, |a, s| a.with(*s));
    let (add_all, drop_all) = (added.contains(&CapSet::ALL), dropped.contains(&CapSet::ALL));
    if add_all && drop_all {
        let index = dropped.iter().position(|s| *s == CapSet::ALL).unwrap_or(0);
        return Err(CapError { list: "drop", index, message: "ALL is both added and dropped".to_owned() });
    }
    for (index, d) in dropped.iter().enumerate() {
        if *d != CapSet::ALL && added.contains(d) {
            let message = format!("{d} is both added and dropped");
            return Err(CapError { list: "drop", index, message });
        }
    }
    Ok(if add_all {
        CapSet::ALL.without(union(&dropped))
    } else if drop_all {
        union(&added)
    } else {
        DEFAULT_CAPS.without(union(&dropped)).with(union(&added))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> Result<CapSet, CapError> {
        let own = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        capabilities(&own(add), &own(drop))
    }

    #[test]
    fn add_and_drop() {
        assert_eq!(caps(&[], &[]), Ok(DEFAULT_CAPS));
        let set = caps(&["CAP_NET_ADMIN", "sys_time"], &["NET_RAW", "CAP_MKNOD"]).expect("caps");
        assert!(set.contains(12) && set.contains(25) && !set.contains(13) && !set.contains(27));
        assert!(set.contains(0), "the rest of the default stays");
        assert_eq!(caps(&["NET_BIND_SERVICE"], &["ALL"]).expect("caps").names(), ["CAP_NET_BIND_SERVICE"]);
        let all_but = caps(&["ALL"], &["SYS_ADMIN"]).expect("caps");
        assert_eq!(all_but, CapSet::ALL.without(CapSet::from_bits(1 << 21)));
        assert_eq!(caps(&[], &["ALL"]), Ok(CapSet::EMPTY));
    }

    #[test]
    fn errors_name_the_entry() {
        let e = caps(&["NET_ADMIN", "CAP_NOPE"], &[]).expect_err("unknown");
        assert_eq!((e.list, e.index), ("add", 1));
        assert!(e.message.contains("\"CAP_NOPE\" is not a capability name"), "{}", e.message);
        let e = caps(&["KILL"], &["CHOWN", "CAP_KILL"]).expect_err("both");
        assert_eq!((e.list, e.index, e.message.as_str()), ("drop", 1, "CAP_KILL is both added and dropped"));
        assert_eq!(caps(&["ALL"], &["all"]).expect_err("both").list, "drop");
    }
}
