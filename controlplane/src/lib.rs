//! TapPass control plane. For now: the operator CLI's command
//! implementations (`scan`, `policy`, `provider`, `packs`, `keys`, `audit`).

pub mod cli;
