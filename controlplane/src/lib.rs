//! TapPass control plane: the xDS server, admin API, state store, keys and
//! token minting will live here. The operator CLI `tappass` is the binary in
//! `src/bin/tappass/`.
