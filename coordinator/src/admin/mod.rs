//! The operator's side: [`api`] is the `Admin` gRPC service; [`client`] calls it for the
//! admin commands and renders answers ([`output`]: tables, times, colour); [`failure`]: how a
//! call that failed is told; [`tokens`]: the `token` commands (join tokens); [`forget`]:
//! `hosts forget`.

pub mod api;
pub mod args;
pub mod client;
mod convert;
pub mod failure;
pub mod forget;
pub mod output;
pub mod render;
pub mod tokens;
