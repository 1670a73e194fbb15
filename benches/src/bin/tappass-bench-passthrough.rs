//! `tappass-bench-passthrough`: the smallest Pingora reverse proxy, forwarding
//! every request unchanged to one upstream. It is the ceiling a Pingora-based
//! gateway can reach, measured beside TapPass in the load harness.

use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[derive(Parser, Debug)]
#[command(name = "tappass-bench-passthrough")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Upstream `host:port` (plain HTTP).
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct PassThrough {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = || ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf());
    let conf = Arc::new(conf());
    let mut service = pingora_proxy::http_proxy_service(
        &conf,
        PassThrough {
            upstream: args.upstream,
        },
    );
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.bootstrap();
    println!("tappass-bench-passthrough listening on {}", args.listen);
    server.run_forever();
}
