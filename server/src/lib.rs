//! `tera-server` will hold terad (the gRPC metadata server) and teractl. Nothing is built here
//! yet: the server is its own issue, and this crate exists so that the workspace has the layout
//! of DESIGN.md §2 and the dependency direction `engine <- server` is fixed from the start.
