//! Generated code for the `ouroboros.v1` protocol. Nothing but the generated modules lives here;
//! conversions to domain types are in `ouroboros-shared`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("ouroboros.v1");
}
