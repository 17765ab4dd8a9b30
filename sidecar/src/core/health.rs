//! Passive health: one rule for an instance's health from the two things
//! that speak about it. The registration (the API caller or the
//! supervisor's health check) *declares* a health; traffic reports whether
//! connections to the instance *fail*. The catalog shows the worse of the
//! two, so a recovered port cannot mark passing an instance whose declared
//! check still fails, and a passing check cannot hide a refused port.

use std::collections::HashMap;

use mesh_proto::catalog::Health;

/// What each of this node's instances declared, and whether traffic finds
/// it refusing connections.
#[derive(Debug, Default)]
pub struct HealthBook {
    declared: HashMap<String, Health>,
    refusing: HashMap<String, bool>,
}

impl HealthBook {
    /// Records what the registration of `id` declares; returns the health
    /// to publish.
    pub fn declare(&mut self, id: &str, health: Health) -> Health {
        self.declared.insert(id.to_owned(), health);
        self.effective(id)
    }

    /// Records whether connections to `id` fail; returns the health to
    /// publish.
    pub fn observe_refusing(&mut self, id: &str, refusing: bool) -> Health {
        self.refusing.insert(id.to_owned(), refusing);
        self.effective(id)
    }

    /// Forgets a deregistered instance.
    pub fn forget(&mut self, id: &str) {
        self.declared.remove(id);
        self.refusing.remove(id);
    }

    /// The worse of what was declared (passing when nothing was) and what
    /// traffic saw.
    pub fn effective(&self, id: &str) -> Health {
        let declared = self.declared.get(id).copied().unwrap_or(Health::Passing);
        if self.refusing.get(id).copied().unwrap_or(false) {
            Health::Critical
        } else {
            declared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_port_does_not_hide_a_failing_check() {
        let mut book = HealthBook::default();
        assert_eq!(book.declare("web-1", Health::Critical), Health::Critical);
        assert_eq!(book.observe_refusing("web-1", true), Health::Critical);
        // The port accepts again, but the declared check still fails.
        assert_eq!(book.observe_refusing("web-1", false), Health::Critical);
        assert_eq!(book.declare("web-1", Health::Passing), Health::Passing);
    }

    #[test]
    fn a_passing_check_does_not_hide_a_refused_port() {
        let mut book = HealthBook::default();
        book.declare("web-1", Health::Passing);
        assert_eq!(book.observe_refusing("web-1", true), Health::Critical);
        assert_eq!(book.declare("web-1", Health::Passing), Health::Critical);
        assert_eq!(book.observe_refusing("web-1", false), Health::Passing);
    }

    #[test]
    fn a_warning_stays_a_warning_while_the_port_accepts() {
        let mut book = HealthBook::default();
        assert_eq!(book.declare("web-1", Health::Warning), Health::Warning);
        assert_eq!(book.observe_refusing("web-1", false), Health::Warning);
        book.forget("web-1");
        assert_eq!(book.effective("web-1"), Health::Passing);
    }
}
