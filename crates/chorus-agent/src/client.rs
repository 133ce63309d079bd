//! The client side of the socket, used by the `chorus` command and by tests.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

use crate::api::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {} (is `chorus agent` running?)", .0.display())]
    NoAgent(PathBuf),
    #[error("lost the agent at {path}: {reason}", path = .0.display(), reason = .1)]
    Io(PathBuf, String),
    #[error("the agent sent an answer this chorus does not understand: {0}")]
    BadResponse(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|_| ClientError::NoAgent(path.to_path_buf()))?;
        let (read, writer) = stream.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Sends one request and reads one response.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        self.send_raw(&line).await?;
        self.next_response().await
    }

    /// Writes bytes as they are (tests send junk this way).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Io(self.path.clone(), e.to_string()))
    }

    /// Reads the next response line (`watch` sends many).
    pub async fn next_response(&mut self) -> Result<Response, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| ClientError::Io(self.path.clone(), e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Io(
                self.path.clone(),
                "connection closed".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", line.trim())))
    }
}

/// One request on a fresh connection.
pub async fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    Client::connect(path).await?.call(request).await
}
