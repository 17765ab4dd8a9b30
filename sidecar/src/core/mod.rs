//! Layer 1, the cores: the agent's decisions as plain data structures, with
//! no sockets, no tasks and no clock reads (every call that needs the time
//! takes it). The services layer owns one of each and feeds it; the unit
//! tests beside each drive them with simulated time.

pub mod anti_entropy;
pub mod candidates;
pub mod catalog;
pub mod health;
pub mod membership;
pub mod reaper;
pub mod rtt;
