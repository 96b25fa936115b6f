//! The CLI's side of the agent's debug API: HTTP/1.1 over the agent's Unix socket.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;

/// How long the CLI waits for the agent.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the agent is not running (no socket at {0})")]
    NoSocket(String),
    #[error("the agent does not answer on {socket}: {reason}")]
    NoAnswer { socket: String, reason: String },
}

/// `GET path` on the agent's socket, the JSON body decoded. An agent that is down is an
/// [`Unreachable`] error (callers fall back to the pins); one that answers with an error
/// status is another error, with its message.
pub async fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T> {
    let body = tokio::time::timeout(TIMEOUT, request(socket, path))
        .await
        .map_err(|_| Unreachable::NoAnswer {
            socket: socket.display().to_string(),
            reason: format!("no answer within {} s", TIMEOUT.as_secs()),
        })??;
    serde_json::from_slice(&body).with_context(|| format!("decoding the agent's answer to {path}"))
}

/// `GET path` on the agent's socket, its body handed over line by line as it arrives until
/// `on_line` returns false or the agent ends it.
pub async fn stream_lines(
    socket: &Path,
    path: &str,
    mut on_line: impl FnMut(&str) -> Result<bool>,
) -> Result<()> {
    let response = tokio::time::timeout(TIMEOUT, send(socket, path))
        .await
        .map_err(|_| Unreachable::NoAnswer {
            socket: socket.display().to_string(),
            reason: format!("no answer within {} s", TIMEOUT.as_secs()),
        })??;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        bail!(
            "the agent answered {path} with {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading the agent's stream {path}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !on_line(String::from_utf8_lossy(&line).trim_end())? {
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn request(socket: &Path, path: &str) -> Result<Bytes> {
    let response = send(socket, path).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the agent's answer to {path}"))?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "the agent answered {path} with {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}

/// Sends `GET path`; the connection is driven in the background for as long as the body is
/// read.
async fn send(socket: &Path, path: &str) -> Result<hyper::Response<hyper::body::Incoming>> {
    let shown = socket.display().to_string();
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Unreachable::NoSocket(shown).into());
        }
        Err(error) => {
            return Err(Unreachable::NoAnswer {
                socket: shown,
                reason: error.to_string(),
            }
            .into());
        }
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| Unreachable::NoAnswer {
                socket: shown.clone(),
                reason: error.to_string(),
            })?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "netpol-agent")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    sender.send_request(request).await.map_err(|error| {
        Unreachable::NoAnswer {
            socket: shown,
            reason: error.to_string(),
        }
        .into()
    })
}
