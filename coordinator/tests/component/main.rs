//! Component tests: the real coordinator server (tonic, mutual TLS, redb) on port 0, with
//! certificates made in the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod enrol;
mod forget;
mod layout;
mod mtls;
mod notify;
mod registry;
mod renew;
