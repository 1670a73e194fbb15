//! `tappass-mock-llm`: a deterministic mock LLM provider for tests and
//! benchmarks. It speaks OpenAI chat completions, Anthropic messages,
//! OpenAI Responses, embeddings and models, streaming and not, and echoes
//! the last user message unless scripted (see `tappass_dataplane::mock`).

use clap::Parser;
use tappass_dataplane::config::TlsConfig;
use tappass_dataplane::mock::{MockOptions, Script, ToolCallScript};

#[derive(Parser, Debug)]
#[command(name = "tappass-mock-llm", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9999.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Answer every call with this HTTP error status.
    #[arg(long)]
    status: Option<u16>,
    /// Reply with this text instead of echoing.
    #[arg(long)]
    reply: Option<String>,
    /// Answer with a tool call: NAME=JSON-ARGUMENTS.
    #[arg(long, value_name = "NAME=JSON")]
    tool_call: Option<String>,
    /// Characters per streamed fragment.
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Delay between streamed events, in milliseconds.
    #[arg(long)]
    chunk_delay_ms: Option<u64>,
    /// Delay before the response headers, in milliseconds.
    #[arg(long)]
    first_byte_delay_ms: Option<u64>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() {
    let args = Args::parse();
    let tool_call = match args.tool_call.as_deref().map(|s| s.split_once('=')) {
        None => None,
        Some(Some((name, arguments))) => Some(ToolCallScript {
            name: name.into(),
            arguments: arguments.into(),
        }),
        Some(None) => {
            eprintln!("error: --tool-call takes NAME=JSON");
            std::process::exit(2);
        }
    };
    if let Some(t) = &tool_call {
        if serde_json::from_str::<serde_json::Value>(&t.arguments).is_err() {
            eprintln!("error: --tool-call arguments must be JSON");
            std::process::exit(2);
        }
    }
    if args.listen.parse::<std::net::SocketAddr>().is_err() {
        eprintln!("error: --listen `{}` is not an address:port", args.listen);
        std::process::exit(2);
    }
    let options = MockOptions {
        default_script: Script {
            reply: args.reply,
            tool_call,
            status: args.status,
            chunk_size: args.chunk_size,
            chunk_delay_ms: args.chunk_delay_ms,
            first_byte_delay_ms: args.first_byte_delay_ms,
            ..Script::default()
        },
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig {
            cert_file,
            key_file,
        }),
        _ => None,
    };
    println!("tappass-mock-llm listening on {}", args.listen);
    if let Err(e) = tappass_dataplane::server::run_mock_server(
        &args.listen,
        tls.as_ref(),
        options,
        args.threads,
    ) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
