//! A typed client of the agent's API, for control: place, show, list, act on and delete
//! servers, read consoles and the node document. Over the agent's Unix socket or TCP.

use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Client, Endpoint, HttpError, NO_BODY};
use crate::model::Placement;

/// A server as the agent reports it (the fields control needs; the full document is in
/// `raw`).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerView {
    /// Id.
    pub id: String,
    /// BUILD, ACTIVE, SHUTOFF, PAUSED or ERROR.
    pub status: String,
    /// The operation in progress.
    pub task_state: Option<String>,
    /// Why it is in ERROR.
    pub fault: Option<FaultView>,
    /// The whole JSON document.
    #[serde(skip)]
    pub raw: Value,
}

/// A fault.
#[derive(Debug, Clone, Deserialize)]
pub struct FaultView {
    /// What happened.
    pub message: String,
    /// When (seconds since the epoch).
    pub created: u64,
}

/// An action on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    /// `os-stop`.
    Stop,
    /// `os-start`.
    Start,
    /// `reboot` SOFT.
    SoftReboot,
    /// `reboot` HARD.
    HardReboot,
    /// `pause`.
    Pause,
    /// `unpause`.
    Unpause,
}

impl ServerAction {
    fn body(self) -> Value {
        match self {
            ServerAction::Stop => json!({"os-stop": null}),
            ServerAction::Start => json!({"os-start": null}),
            ServerAction::SoftReboot => json!({"reboot": {"type": "SOFT"}}),
            ServerAction::HardReboot => json!({"reboot": {"type": "HARD"}}),
            ServerAction::Pause => json!({"pause": null}),
            ServerAction::Unpause => json!({"unpause": null}),
        }
    }
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct AgentClient(Client);

fn view(v: Value) -> Result<ServerView, HttpError> {
    let mut s: ServerView =
        serde_json::from_value(v["server"].clone()).map_err(|source| HttpError::Decode {
            method: Method::GET,
            path: "server".into(),
            source,
        })?;
    s.raw = v["server"].clone();
    Ok(s)
}

impl AgentClient {
    /// A client of the agent at `endpoint`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> AgentClient {
        AgentClient(Client::new(endpoint, timeout))
    }

    /// Places a server (202: it is built in the background).
    pub async fn create(&self, placement: &Placement) -> Result<ServerView, HttpError> {
        let body = json!({ "server": placement });
        view(
            self.0
                .json(Method::POST, "/v1/servers", Some(&body))
                .await?,
        )
    }

    /// One server.
    pub async fn get(&self, id: &str) -> Result<ServerView, HttpError> {
        view(
            self.0
                .json(Method::GET, &format!("/v1/servers/{id}"), NO_BODY)
                .await?,
        )
    }

    /// Every server.
    pub async fn list(&self) -> Result<Vec<ServerView>, HttpError> {
        let v: Value = self.0.json(Method::GET, "/v1/servers", NO_BODY).await?;
        v["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| view(json!({ "server": s })))
            .collect()
    }

    /// Starts an action (202).
    pub async fn action(&self, id: &str, action: ServerAction) -> Result<ServerView, HttpError> {
        let path = format!("/v1/servers/{id}/action");
        view(
            self.0
                .json(Method::POST, &path, Some(&action.body()))
                .await?,
        )
    }

    /// Deletes a server; returns once everything it held is released.
    pub async fn delete(&self, id: &str) -> Result<(), HttpError> {
        self.0
            .call(Method::DELETE, &format!("/v1/servers/{id}"), NO_BODY)
            .await
            .map(drop)
    }

    /// The last `length` lines of the console (all when `None`).
    pub async fn console(&self, id: &str, length: Option<usize>) -> Result<String, HttpError> {
        let path = match length {
            Some(n) => format!("/v1/servers/{id}/console?length={n}"),
            None => format!("/v1/servers/{id}/console"),
        };
        let v: Value = self.0.json(Method::GET, &path, NO_BODY).await?;
        Ok(v["output"].as_str().unwrap_or_default().to_string())
    }

    /// The node document (id, inventory, usage).
    pub async fn node(&self) -> Result<Value, HttpError> {
        let v: Value = self.0.json(Method::GET, "/v1/node", NO_BODY).await?;
        Ok(v["node"].clone())
    }
}
