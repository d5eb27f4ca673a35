//! The code generated from server/proto (see build.rs): messages, servers and clients of
//! terad's services, and the encoded descriptor set of every file, for reflection.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// `tera.meta.v1`: the metadata service.
pub mod meta {
    tonic::include_proto!("tera.meta.v1");
    /// Hand-written (build.rs maps it there), wire-compatible.
    pub use crate::wire::ListResponse;
}

/// `tera.auth.v1`: tokens.
pub mod auth {
    tonic::include_proto!("tera.auth.v1");
}

/// `grpc.health.v1`: the standard health service.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// `grpc.reflection.v1` and `grpc.reflection.v1alpha`: server reflection.
pub mod reflection {
    /// The current version.
    pub mod v1 {
        tonic::include_proto!("grpc.reflection.v1");
    }
    /// The version many clients (grpcurl's older releases, Python's grpcio-reflection) still
    /// speak.
    pub mod v1alpha {
        tonic::include_proto!("grpc.reflection.v1alpha");
    }
}

/// The `FileDescriptorSet` of every proto file above and its imports, encoded.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/terad_descriptor.bin"));
