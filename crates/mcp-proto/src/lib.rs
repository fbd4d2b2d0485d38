//! Rust types and tonic stubs generated from `proto/mcp.proto`.
//!
//! No logic lives here: conversions to domain types are in `mcp-gateway` and
//! `mcp-client`.

#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::all)]

/// The `mcp` protobuf package.
pub mod mcp {
    tonic::include_proto!("mcp");
}

/// The encoded `FileDescriptorSet` of `proto/mcp.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mcp_descriptor.bin"));

pub use mcp::*;
