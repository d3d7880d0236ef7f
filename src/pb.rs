//! The wire types of `proto/courier.proto`, generated at build time by prost (structs, protobuf
//! encoding) and pbjson (proto3-JSON serde impls with the proto field names). Nothing here is
//! written by hand.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/courier.rs"));
include!(concat!(env!("OUT_DIR"), "/courier.serde.rs"));
