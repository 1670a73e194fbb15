//! TapPass control plane. For now: the operator CLI's command
//! implementations (`tappass scan`).

pub mod cli;
