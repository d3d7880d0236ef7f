//! The wire types of `proto/courier.proto`, generated at build time by prost (structs, protobuf
//! encoding) and pbjson (proto3-JSON serde impls with the proto field names), and in [`node`]
//! the node-to-node envelope of `proto/node.proto` (protobuf only), and in [`signal`] the
//! `/signal/websocket` envelope of `proto/signal.proto` (protobuf only). Nothing here is written by
//! hand.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/courier.rs"));
include!(concat!(env!("OUT_DIR"), "/courier.serde.rs"));

/// The envelope one node sends another (`proto/node.proto`): protobuf only.
pub mod node {
    include!(concat!(env!("OUT_DIR"), "/courier.node.rs"));
}

/// The envelope of the `/signal/websocket` endpoint (`proto/signal.proto`): protobuf only.
pub mod signal {
    include!(concat!(env!("OUT_DIR"), "/signal.rs"));
}
