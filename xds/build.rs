//! Generates the Rust code for the vendored Envoy discovery protos and the
//! TapPass resource protos. `protox` parses the `.proto` files in pure Rust,
//! so no `protoc` binary is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "tappass/v1/envelope.proto",
    "tappass/v1/resources.proto",
    "tappass/v1/reports.proto",
    "tappass/v1/budgets.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let fds = protox::compile(PROTOS, [&proto_dir])?;

    // Descriptor set of everything compiled (imports included), for
    // reflection and for clients in other languages.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tappass_xds_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .include_file("_includes.rs")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
