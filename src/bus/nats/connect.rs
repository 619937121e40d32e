//! Reaching the servers (a version new enough, credentials) and declaring
//! the stream, the dead-letter stream and each consumer's durable pull
//! consumers, at start and on a resubscribe.

use super::*;

/// Several filter subjects on one consumer arrived in nats-server 2.10.
pub(super) fn supports_filter_subjects(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (2, 10)
}

/// Connects to a server new enough for this engine.
pub(super) async fn connect_client(
    settings: &NatsSettings,
) -> Result<async_nats::Client, BusError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("switchyard")
        .connection_timeout(settings.ack_timeout)
        .request_timeout(Some(settings.ack_timeout))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                other => tracing::warn!(event = %other, "nats connection event"),
            }
        });
    if let Some(credentials) = &settings.credentials {
        options = options
            .credentials(credentials.expose())
            .map_err(|err| unavailable(format!("bad credentials: {err}")))?;
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose().to_owned());
    }
    let client = options
        .connect(settings.urls.as_slice())
        .await
        .map_err(unavailable)?;
    let version = client.server_info().version;
    if !supports_filter_subjects(&version) {
        return Err(unavailable(format!(
            "nats-server {version} is too old: switchyard needs 2.10 or newer (consumers with several subject filters)"
        )));
    }
    Ok(client)
}

/// What `switchyard check` asks of NATS: reachable, new enough, JetStream
/// enabled for the account. Creates nothing.
pub async fn probe(settings: &NatsSettings) -> Result<(), BusError> {
    let client = connect_client(settings).await?;
    jetstream::new(client)
        .query_account()
        .await
        .map(drop)
        .map_err(|err| unavailable(format!("jetstream: {err}")))
}

impl NatsBus {
    /// Connects, creates or updates both streams and one durable consumer
    /// per subscriber. Fails (rather than waiting) if NATS is unreachable.
    pub async fn connect(
        settings: NatsSettings,
        subscribers: &[Subscriber],
    ) -> Result<NatsBus, BusError> {
        let client = connect_client(&settings).await?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .build(client.clone());
        let prefix = settings.subject_prefix.clone();
        let events = jetstream
            .create_or_update_stream(stream::Config {
                name: settings.stream.clone(),
                description: Some("switchyard: verified webhook events".into()),
                subjects: vec![format!("{prefix}.events.>"), format!("{prefix}.replay.>")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                max_age: settings.retention,
                duplicate_window: settings.dedup_window,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable(format!("stream `{}`: {err}", settings.stream)))?;
        let dead_name = format!("{}_DEAD", settings.stream);
        jetstream
            .create_or_update_stream(stream::Config {
                name: dead_name.clone(),
                description: Some("switchyard: dead-letter and review queues".into()),
                subjects: vec![format!("{prefix}.dead.>")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable(format!("stream `{dead_name}`: {err}")))?;
        let events = jetstream
            .get_stream(&events.config.name)
            .await
            .map_err(unavailable)?;
        let dead = jetstream
            .get_stream(&dead_name)
            .await
            .map_err(unavailable)?;
        let bus = NatsBus {
            client,
            jetstream,
            events,
            dead,
            prefix,
            consumers: RwLock::default(),
            ack_wait: settings.visibility_timeout,
            replicas: settings.replicas,
            released: Mutex::new(HashMap::new()),
        };
        bus.resubscribe(subscribers).await?;
        Ok(bus)
    }

    /// Creates or updates one lane's durable: a changed route changes the
    /// filters in place.
    pub(super) async fn durable(
        &self,
        consumer: &str,
        lane: Lane,
        filter_subjects: Vec<String>,
        concurrency: usize,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let name = durable_name(consumer, lane);
        self.events
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("switchyard consumer `{consumer}`, {lane:?} lane")),
                // A consumer added later starts with new events; older ones
                // reach it only by an explicit history replay.
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                // Dispatch decides when to give up, not the server.
                max_deliver: -1,
                filter_subjects,
                max_ack_pending: concurrency as i64 * ACK_PENDING_PER_WORKER,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable(format!("consumer `{name}`: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_before_2_10_are_refused() {
        assert!(!supports_filter_subjects("2.9.10"));
        assert!(supports_filter_subjects("2.10.0"));
        assert!(supports_filter_subjects("2.15.1"));
        assert!(supports_filter_subjects("3.0.0-beta.1"));
        assert!(!supports_filter_subjects("garbage"));
    }
}
