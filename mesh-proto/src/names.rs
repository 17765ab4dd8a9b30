//! Validation of the names users choose: service names, node ids, instance ids.
//!
//! Service names become the first DNS label of `<service>.localhost`, so they
//! follow the DNS label rules; ids are a little looser but still printable and
//! short, because they appear in metrics labels and file names.

use thiserror::Error;

/// Longest service name: one DNS label.
pub const MAX_SERVICE_NAME: usize = 63;
/// Longest node id or instance id.
pub const MAX_ID: usize = 128;

/// A name a user supplied that Gossamer cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    /// What the name was for ("service name", "node id", ...).
    pub what: &'static str,
    /// The rejected value (truncated for display).
    pub value: String,
    /// Why it was rejected, phrased as what is allowed.
    pub reason: &'static str,
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidName {
    InvalidName {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// Checks a service name: a DNS label of lowercase letters, digits and `-`.
pub fn validate_service_name(name: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "service name";
    const RULE: &str = "use 1-63 lowercase letters, digits or '-', starting with a letter or digit";
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(invalid(WHAT, name, RULE));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(WHAT, name, RULE));
    }
    Ok(())
}

/// Checks a node id or instance id: 1-128 of `[A-Za-z0-9._:-]`.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), InvalidName> {
    const RULE: &str = "use 1-128 letters, digits, '.', '_', ':' or '-'";
    if id.is_empty() || id.len() > MAX_ID {
        return Err(invalid(what, id, RULE));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(invalid(what, id, RULE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_dns_label_rules() {
        assert!(validate_service_name("echo").is_ok());
        assert!(validate_service_name("billing-v2").is_ok());
        assert!(validate_service_name("").is_err());
        assert!(validate_service_name("Echo").is_err());
        assert!(validate_service_name("-echo").is_err());
        assert!(validate_service_name("echo.svc").is_err());
        assert!(validate_service_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn ids_reject_spaces_and_slashes() {
        assert!(validate_id("node id", "node-a.zone1").is_ok());
        assert!(validate_id("node id", "a b").is_err());
        assert!(validate_id("node id", "../etc").is_err());
    }

    #[test]
    fn the_longest_names_are_accepted() {
        assert!(validate_service_name(&"a".repeat(MAX_SERVICE_NAME)).is_ok());
        assert!(validate_id("node id", &"a".repeat(MAX_ID)).is_ok());
        assert!(validate_id("node id", &"a".repeat(MAX_ID + 1)).is_err());
    }
}
