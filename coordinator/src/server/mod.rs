//! The agents' side of the coordinator: [`tls`] terminates mutual TLS and tells identities
//! and roles apart; [`gateway`] serves `AgentGateway.Connect`, one stream per agent;
//! [`dispatch`] sends commands down those streams and waits for their answers; [`convert`]
//! turns those answers into the coordinator's own types; [`enrol`] signs a new agent's
//! certificate for a join token.

pub mod convert;
pub mod dispatch;
pub mod enrol;
pub mod gateway;
pub mod tls;
