//! NATS (control plane) connection: retries in the background forever and logs each
//! change of connection state, so a service starts and keeps running while NATS is down.

use async_nats::{connection::State, Client, ConnectOptions, Event};

/// Connect without waiting: the client retries the first connect and every reconnect in
/// the background. Publishes made while disconnected are buffered by the client.
pub async fn connect(url: &str, service: &str) -> anyhow::Result<Client> {
    let url_for_log = url.to_string();
    let client = ConnectOptions::new()
        .name(format!("aifab-{service}"))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let url = url_for_log.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(%url, "nats connected"),
                    Event::Disconnected => tracing::warn!(%url, "nats disconnected; reconnecting"),
                    other => tracing::warn!(%url, event = %other, "nats event"),
                }
            }
        })
        .connect(url)
        .await?;
    Ok(client)
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}
