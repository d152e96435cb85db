//! Names users give to networks, sandboxes and interfaces, checked before they reach netlink, nft or a path.

/// Longest network or sandbox name. Names become file names and nft comments, never interface names.
pub const MAX_NAME: usize = 64;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn check(kind: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "{kind} name is empty; give a name of 1 to {max} characters from [A-Za-z0-9_.-]"
        ));
    }
    if name.len() > max {
        return Err(format!(
            "{kind} name '{name}' is {} characters long; use at most {max}",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "{kind} name '{name}' contains {bad:?}; use only letters, digits and _ . -"
        ));
    }
    // A leading dot makes a hidden file (`/run/netns/.x`, `networks/.x.json`) and covers `.` and `..`; a
    // leading dash reads as an option to ip, nft and the rest.
    if let Some(first @ ('.' | '-')) = name.chars().next() {
        return Err(format!(
            "{kind} name '{name}' starts with {first:?}; start it with a letter, digit or _"
        ));
    }
    // A trailing dot is easy to lose (`x.` vs `x`) and the shell completes it away; never a name anyone meant.
    if name.ends_with('.') {
        return Err(format!(
            "{kind} name '{name}' ends with '.'; end it with a letter, digit, _ or -"
        ));
    }
    Ok(())
}

/// A short stable hash of some names, for the names and numbers nsnet derives from them (veth names, tc
/// blocks): FNV-1a over each part and a NUL after it.
pub fn short_hash(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A network or sandbox name: 1–64 characters from `[A-Za-z0-9_.-]`, not starting with `.` or `-`, not ending
/// with `.`.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    check(kind, name, MAX_NAME)
}

/// An interface name: 1–15 characters from `[A-Za-z0-9_.-]`, with the same rule for the first and last.
pub fn check_ifname(name: &str) -> Result<(), String> {
    check("interface", name, MAX_IFNAME)
}

/// A name other sandboxes look a sandbox up by (`--alias`): a DNS name of labels of 1-63 letters, digits,
/// `-` and `_` (no `-` first or last), separated by dots, 253 characters at most.
pub fn check_alias(alias: &str) -> Result<(), String> {
    let fix = "use letters, digits, '-' and '_', in dot-separated labels like db or db.internal";
    if alias.is_empty() || alias.len() > 253 {
        return Err(format!(
            "alias '{alias}' must be 1-253 characters long; {fix}"
        ));
    }
    for label in alias.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "alias '{alias}' has an empty label or one over 63 characters; {fix}"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("alias '{alias}' has {c:?}; {fix}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "alias '{alias}' has a label that starts or ends with '-'; {fix}"
            ));
        }
    }
    // An all-digit last label would read as an address (and `in-addr.arpa` names are the resolver's own).
    if alias
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
        || alias.to_ascii_lowercase().ends_with(".arpa")
    {
        return Err(format!(
            "alias '{alias}' looks like an address or a reverse name; {fix}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_dns_names() {
        for good in ["db", "db-1", "cache.internal", "_svc", "a1"] {
            assert!(check_alias(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-db",
            "db-",
            "a..b",
            "db/x",
            "db x",
            "10.0.0.1",
            "x.in-addr.arpa",
            "1",
        ] {
            let e = check_alias(bad).unwrap_err();
            assert!(
                e.contains("alias") && e.contains("labels like"),
                "{bad}: {e}"
            );
        }
        assert!(check_alias(&"a".repeat(64)).is_err());
        assert!(check_alias(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn accepts_plain_names() {
        assert!(check_name("sandbox", "web-1_a.b").is_ok());
        assert!(check_name("sandbox", "_x-").is_ok());
        assert!(check_name("sandbox", "a..b").is_ok());
        assert!(check_ifname("nsnet0").is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(check_name("sandbox", "").is_err());
        assert!(check_name("sandbox", "a/b").unwrap_err().contains("'/'"));
        assert!(check_name("sandbox", "..").is_err());
        assert!(check_name("sandbox", "-x").is_err());
        assert!(check_name("sandbox", ".")
            .unwrap_err()
            .contains("starts with"));
        assert!(check_name("sandbox", ".x")
            .unwrap_err()
            .contains("starts with '.'"));
        assert!(check_name("network", ".hidden.net").is_err());
        assert!(check_name("sandbox", "x.")
            .unwrap_err()
            .contains("ends with '.'"));
        assert!(check_name("sandbox", "x..").is_err());
        assert!(check_ifname(".br0").is_err());
        assert!(check_ifname("br0.").is_err());
        assert!(check_name("sandbox", &"a".repeat(65))
            .unwrap_err()
            .contains("at most 64"));
        assert!(check_ifname("a-very-long-ifname")
            .unwrap_err()
            .contains("at most 15"));
        assert!(check_ifname("br 0").is_err());
    }
}
