//! The SDK's one error type: what failed, the value that made it fail, and
//! what to do about it.

use std::time::Duration;

use crate::select::SelectError;

/// What can go wrong talking to an agent or picking an instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The agent URL is not an `http://host:port` URL.
    #[error("invalid agent URL {url:?}: {reason}; pass for example http://127.0.0.1:4200")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A service name or instance id the agent would reject; nothing was sent.
    #[error(transparent)]
    InvalidName(#[from] mesh_proto::names::InvalidName),
    /// The agent could not be reached.
    #[error("cannot reach the agent at {url}: {reason}; is `gossamer agent` running there?")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The agent did not answer in time.
    #[error(
        "the agent at {url} did not answer within {} ms; is it overloaded or stopped?",
        after.as_millis()
    )]
    Timeout {
        /// The URL tried.
        url: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The agent answered with an error.
    #[error("{error} (HTTP {status}); {hint}")]
    Api {
        /// HTTP status.
        status: u16,
        /// What the agent says went wrong.
        error: String,
        /// What the agent suggests.
        hint: String,
    },
    /// The agent's answer could not be decoded.
    #[error("unexpected answer from the agent: {0}; are the SDK and the agent the same version?")]
    Decode(String),
    /// No instance of the service may be called (none registered, none
    /// within the hard RTT requirement, all ejected…).
    #[error("cannot pick an instance of {service:?}: {source}")]
    NoInstance {
        /// The service asked for.
        service: String,
        /// Why the selection found nothing; its `Display` ends with a hint.
        #[source]
        source: SelectError,
    },
}

// === impl Error ===

impl Error {
    /// True for a 404 from the agent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }

    /// True when trying again later may succeed: the agent was unreachable,
    /// slow, answered 5xx, or sent something this SDK could not read (an
    /// agent being upgraded). A 4xx or a bad URL will fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::Decode(_) => true,
            Error::Api { status, .. } => *status >= 500,
            Error::InvalidUrl { .. } | Error::InvalidName(_) | Error::NoInstance { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_value_and_a_hint() {
        let e = Error::Timeout {
            url: "http://127.0.0.1:4200/v1/health".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "the agent at http://127.0.0.1:4200/v1/health did not answer within 1500 ms; \
             is it overloaded or stopped?"
        );
        let e = Error::NoInstance {
            service: "db".into(),
            source: SelectError::NoInstances {},
        };
        assert!(e
            .to_string()
            .starts_with("cannot pick an instance of \"db\": "));
    }

    #[test]
    fn only_transport_trouble_and_5xx_are_transient() {
        let api = |status| Error::Api {
            status,
            error: String::new(),
            hint: String::new(),
        };
        assert!(api(503).is_transient());
        assert!(!api(400).is_transient());
        assert!(api(404).is_not_found());
        assert!(Error::Decode("x".into()).is_transient());
        assert!(!Error::InvalidUrl {
            url: String::new(),
            reason: String::new()
        }
        .is_transient());
    }
}
