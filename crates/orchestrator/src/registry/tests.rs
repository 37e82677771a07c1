#[test]
fn bounded_histories_hold_no_more_room_than_they_keep() {
    for max in [1, 3, 50, 720] {
        let mut queue = std::collections::VecDeque::new();
        for i in 0..max * 3 {
            super::push_bounded(&mut queue, i, max);
        }
        assert_eq!(queue.len(), max);
        assert_eq!(queue.front(), Some(&(max * 2)), "the oldest go first");
        assert!(
            queue.capacity() <= max,
            "capacity {} for {max}",
            queue.capacity()
        );
    }
    let mut none = std::collections::VecDeque::new();
    super::push_bounded(&mut none, 1, 0);
    assert!(none.is_empty());
}

use super::*;

const LIMITS: Limits = Limits {
    failure_threshold: 2,
    health_history_max: 3,
    stats_history_max: 2,
    ended_streams_max: 2,
};

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn start(host: &str, port: u16, key: &str) -> StreamStart {
    StreamStart {
        container_id: None,
        host: host.into(),
        port,
        key_type: KeyType::Infohash,
        key: key.into(),
        playback_session_id: Some("sess".into()),
        stat_url: Some(format!("http://{host}:{port}/ace/stat/x/sess")),
        command_url: None,
        is_live: true,
        labels: BTreeMap::new(),
        reservation_id: None,
    }
}

fn check(ok: bool, ms: i64) -> HealthCheck {
    HealthCheck {
        ts: t(ms),
        ok,
        source: CheckSource::Probe,
        latency_ms: Some(1.0),
        error: (!ok).then(|| "timed out".to_owned()),
    }
}

#[test]
fn localhost_and_loopback_find_one_engine() {
    let mut reg = Registry::new(LIMITS);
    let (s1, _) = reg
        .stream_started(start("127.0.0.1", 19023, "a"), t(1))
        .unwrap();
    let (s2, _) = reg
        .stream_started(start("localhost", 19023, "b"), t(2))
        .unwrap();
    assert_eq!(s1.container_id, "127.0.0.1:19023");
    assert_eq!(s2.container_id, s1.container_id);
    assert_eq!(reg.engine_count(), 1);
    assert_eq!(
        reg.engine("127.0.0.1:19023").unwrap().usage.streams_total,
        2
    );
}

#[test]
fn docker_engines_answer_to_their_published_port() {
    let mut reg = Registry::new(LIMITS);
    let mut engine = Registry::new_external_engine(
        "engine-3",
        40001,
        Some("abc123".into()),
        Some("engine-3".into()),
        BTreeMap::from([(
            crate::domain::labels::HOST_HTTP_PORT_LABEL.into(),
            "19005".into(),
        )]),
        t(0),
    );
    engine.runtime = RuntimeKind::Docker;
    reg.register(engine);
    assert_eq!(reg.find_engine(None, "localhost", 19005), Some("abc123"));
    assert_eq!(reg.find_engine(None, "10.1.1.1", 19005), None);
}

#[test]
fn threshold_then_one_success_recovers() {
    let mut reg = Registry::new(LIMITS);
    reg.register(Registry::new_external_engine(
        "h",
        1,
        None,
        None,
        BTreeMap::new(),
        t(0),
    ));
    let (r, _) = reg.record_check("h:1", check(false, 1)).unwrap();
    assert_eq!(
        r.status,
        HealthStatus::Unknown,
        "one failure is under the threshold"
    );
    let (r, _) = reg.record_check("h:1", check(false, 2)).unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy);
    let tr = r.transition.unwrap();
    assert_eq!(
        (tr.from, tr.to),
        (HealthStatus::Unknown, HealthStatus::Unhealthy)
    );
    assert!(tr.reason.contains("timed out"), "{}", tr.reason);
    let (r, _) = reg.record_check("h:1", check(true, 3)).unwrap();
    assert_eq!(r.status, HealthStatus::Healthy);
    let history = reg.health_history("h:1").unwrap();
    assert_eq!(history.checks.len(), 3, "bounded to health_history_max");
    assert_eq!(history.transitions.len(), 2);
    assert!(reg.record_check("gone:1", check(true, 4)).is_none());
}

#[test]
fn ending_twice_and_ending_the_unknown_change_nothing() {
    let mut reg = Registry::new(LIMITS);
    let (s, _) = reg
        .stream_started(start("127.0.0.1", 5, "k"), t(1_000))
        .unwrap();
    let (updated, stream, _) = reg.stream_ended(None, Some(&s.id), None, t(3_000));
    assert!(updated);
    assert_eq!(stream.unwrap().status, StreamStatus::Ended);
    let (updated, stream, ops) = reg.stream_ended(None, Some(&s.id), None, t(4_000));
    assert!(!updated && stream.is_some() && ops.is_empty());
    let (updated, stream, _) = reg.stream_ended(None, Some("nope"), None, t(4_000));
    assert!(!updated && stream.is_none());
    let usage = &reg.engine(&s.container_id).unwrap().usage;
    assert_eq!(usage.busy_seconds(t(10_000)), 2.0);
}

#[test]
fn foreign_stat_urls_are_refused() {
    let mut reg = Registry::new(LIMITS);
    let mut ev = start("127.0.0.1", 19023, "k");
    ev.stat_url = Some("http://169.254.169.254/latest/meta-data".into());
    assert!(matches!(
        reg.stream_started(ev, t(1)),
        Err(RegistryError::ForeignUrl {
            field: "stat_url",
            ..
        })
    ));
    let mut ev = start("127.0.0.1", 19023, "k");
    ev.command_url = Some("http://localhost:19023/ace/cmd/x/y".into());
    assert!(
        reg.stream_started(ev, t(1)).is_ok(),
        "loopback alias is the same engine"
    );
}

#[test]
fn selection_reserves_so_the_last_slot_goes_once() {
    let mut reg = Registry::new(LIMITS);
    reg.register(Registry::new_external_engine(
        "h",
        1,
        None,
        None,
        BTreeMap::new(),
        t(0),
    ));
    reg.record_check("h:1", check(true, 1));
    let first = reg.select_and_reserve(1, 30.0, t(2));
    assert_eq!(first.unwrap().engine_id, "h:1");
    assert!(
        reg.select_and_reserve(1, 30.0, t(3)).is_none(),
        "slot is reserved"
    );
    assert!(
        reg.select_and_reserve(1, 30.0, t(40_000)).is_some(),
        "reservation expired"
    );
}

#[test]
fn ended_streams_are_bounded_in_memory() {
    let mut reg = Registry::new(LIMITS);
    for i in 0..4 {
        let (s, _) = reg
            .stream_started(start("127.0.0.1", 5, &format!("k{i}")), t(i))
            .unwrap();
        reg.stream_ended(None, Some(&s.id), None, t(i + 10));
    }
    assert_eq!(reg.streams(Some(StreamStatus::Ended), None).len(), 2);
}

#[test]
fn a_stream_moved_to_another_engine_keeps_its_start_viewers_and_failovers() {
    let mut reg = Registry::new(LIMITS);
    let mut event = start("127.0.0.1", 5, "k");
    event.labels.insert("stream_id".into(), "proxy-1".into());
    reg.stream_started(event.clone(), t(1_000)).unwrap();
    assert!(reg.set_viewers("proxy-1", crate::domain::ViewersByKind { ts: 2, hls: 1 }));
    let failover = crate::domain::FailoverRecord {
        at: t(5_000),
        from: "127.0.0.1:5".into(),
        to: "127.0.0.1:6".into(),
        reason: "stalled".into(),
        gap_ms: 1200,
    };
    reg.push_failover("proxy-1", failover.clone(), 10);

    // Moved: the same event on another engine.
    let mut moved = event.clone();
    moved.port = 6;
    moved.stat_url = Some("http://127.0.0.1:6/ace/stat/x/sess".into());
    let (stream, _) = reg.stream_started(moved, t(5_000)).unwrap();
    assert_eq!(stream.container_id, "127.0.0.1:6");
    assert_eq!(
        stream.started_at,
        t(1_000),
        "the stream runs since its start"
    );
    assert_eq!(
        (stream.viewers, stream.failovers.clone()),
        (3, vec![failover])
    );
    assert!(reg.engine("127.0.0.1:5").unwrap().usage.streams_total == 1);

    // Repeated on the same engine: overwritten, as proxies expect.
    let mut again = event;
    again.port = 6;
    again.stat_url = Some("http://127.0.0.1:6/ace/stat/x/sess".into());
    let (stream, _) = reg.stream_started(again, t(9_000)).unwrap();
    assert_eq!(stream.started_at, t(9_000));
}

#[test]
fn engines_behind_a_down_vpn_node_are_not_selected_nor_replaced() {
    let mut reg = Registry::new(LIMITS);
    let behind = |port: u16, node: &str| {
        let mut engine = Registry::new_external_engine(
            "127.0.0.1",
            port,
            Some(format!("e{port}")),
            None,
            BTreeMap::from([(
                crate::domain::labels::VPN_NODE_LABEL.to_owned(),
                node.to_owned(),
            )]),
            t(0),
        );
        engine.runtime = RuntimeKind::Docker;
        engine
    };
    reg.register(behind(1, "vpn-a"));
    reg.register(behind(2, "vpn-b"));
    for id in ["e1", "e2"] {
        reg.record_check(id, check(true, 1)).unwrap();
    }
    assert!(reg.set_node_down("vpn-a", Some("tunnel is stopped".into())));
    assert!(
        !reg.set_node_down("vpn-a", Some("still".into())),
        "already down"
    );
    assert_eq!(reg.engine_blocked("e1"), Some("still"), "the newest reason");
    assert_eq!(reg.engine_blocked("e2"), None);
    for _ in 0..4 {
        let picked = reg.select_and_reserve(10, 30.0, t(10)).unwrap();
        assert_eq!(picked.engine_id, "e2", "nothing behind the down node");
    }
    // Its engines failing is the node's doing: not replaced one by one.
    for ms in [20, 30] {
        // Two in a row: the threshold of these tests.
        reg.record_check("e1", check(false, ms)).unwrap();
        reg.record_check("e2", check(false, ms)).unwrap();
    }
    let overdue: Vec<String> = reg
        .unhealthy_since(t(100))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(overdue, vec!["e2".to_owned()]);
    // The node back: everything as before.
    assert!(reg.set_node_down("vpn-a", None));
    assert_eq!(reg.engine_blocked("e1"), None);
    assert_eq!(reg.unhealthy_since(t(100)).len(), 2);
}

#[test]
fn streams_past_the_retention_are_forgotten_in_memory_and_started_ones_stay() {
    let mut reg = Registry::new(Limits {
        ended_streams_max: 10,
        ..LIMITS
    });
    let (old, _) = reg
        .stream_started(start("127.0.0.1", 19023, "old"), t(1))
        .unwrap();
    reg.stream_ended(None, Some(&old.id), None, t(100));
    let (recent, _) = reg
        .stream_started(start("127.0.0.1", 19023, "recent"), t(2))
        .unwrap();
    reg.stream_ended(None, Some(&recent.id), None, t(5_000));
    let (playing, _) = reg
        .stream_started(start("127.0.0.1", 19023, "playing"), t(3))
        .unwrap();

    assert_eq!(reg.forget_ended_before(t(1_000)), 1);
    assert!(reg.stream(&old.id).is_none());
    assert!(reg.stats(&old.id, None).is_none());
    assert!(reg.stream(&recent.id).is_some());
    assert!(reg.stream(&playing.id).is_some());
    assert_eq!(reg.forget_ended_before(t(1_000)), 0);
}

#[test]
fn a_listing_written_in_pieces_is_the_whole_listing() {
    let mut reg = Registry::new(LIMITS);
    for port in 1..=10u16 {
        let mut labels = BTreeMap::new();
        if port % 3 == 0 {
            labels.insert("pool".to_owned(), "eu".to_owned());
        }
        reg.register(Registry::new_external_engine(
            "127.0.0.1",
            port,
            None,
            None,
            labels,
            t(0),
        ));
    }
    let pieces = |filter: &EngineFilter, max: usize| {
        let mut out = vec![b'['];
        let (mut first, mut after, mut holds) = (true, None::<String>, 0);
        loop {
            holds += 1;
            let next = reg
                .append_engines_json(t(1), filter, after.as_deref(), max, &mut out, &mut first)
                .unwrap();
            match next {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        out.push(b']');
        (
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            holds,
        )
    };
    let whole: serde_json::Value =
        serde_json::from_slice(&reg.engines_json(t(1)).unwrap()).unwrap();
    for max in [1, 3, 10, 11, 256] {
        let (list, holds) = pieces(&EngineFilter::default(), max);
        assert_eq!(list, whole, "pieces of {max}");
        assert_eq!(holds, 10 / max + 1, "pieces of {max}");
    }
    let eu = EngineFilter {
        label: Some(("pool".into(), Some("eu".into()))),
        ..EngineFilter::default()
    };
    let (list, _) = pieces(&eu, 2);
    let ports: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [3, 6, 9]);
}

/// The listing as `GET /engines` writes it (cached pieces).
fn listing(reg: &Registry, now: Timestamp) -> serde_json::Value {
    let (mut out, mut first) = (vec![b'['], true);
    let next = reg
        .append_engines_json(
            now,
            &EngineFilter::default(),
            None,
            1000,
            &mut out,
            &mut first,
        )
        .unwrap();
    assert_eq!(next, None);
    out.push(b']');
    serde_json::from_slice(&out).unwrap()
}

/// The listing serialized from scratch, engine by engine.
fn fresh_listing(reg: &Registry, now: Timestamp) -> serde_json::Value {
    let reserved = reg.reservation_counts(now);
    serde_json::to_value(
        reg.engines
            .values()
            .map(|e| reg.view(e, now, &reserved))
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

#[test]
fn a_cached_listing_follows_every_change_to_an_engine() {
    let mut reg = Registry::new(LIMITS);
    for port in [1, 2] {
        reg.register(Registry::new_external_engine(
            "h",
            port,
            None,
            None,
            BTreeMap::new(),
            t(0),
        ));
    }
    let mut now = 10;
    let mut same = |reg: &Registry, what: &str| {
        now += 1000;
        // Twice: the first fills the cache, the second copies it.
        for _ in 0..2 {
            assert_eq!(
                listing(reg, t(now)),
                fresh_listing(reg, t(now)),
                "after {what}"
            );
        }
    };
    same(&reg, "registration");
    reg.record_check("h:1", check(false, 20)).unwrap();
    same(&reg, "a failed check");
    reg.record_check("h:1", check(false, 30)).unwrap();
    same(&reg, "a second failed check (unhealthy)");
    let (stream, _) = reg.stream_started(start("h", 2, "k"), t(40)).unwrap();
    same(&reg, "a stream started (busy time grows with the clock)");
    reg.stream_ended(None, Some(&stream.id), Some("done"), t(50));
    same(&reg, "the stream ended");
    let mut relabelled = Registry::new_external_engine(
        "h",
        2,
        None,
        None,
        BTreeMap::from([("k".into(), "v".into())]),
        t(0),
    );
    relabelled.container_id = "h:2".into();
    reg.upsert(relabelled);
    same(&reg, "new labels");
    reg.note("h:2", "replaced".into(), t(60));
    same(&reg, "a note");
    reg.replacement_suspended = true;
    same(&reg, "replacements suspended");
    let value = listing(&reg, t(now));
    assert_eq!(value[1]["labels"]["k"], "v");
    assert_eq!(value[0]["health_status"], "unhealthy");
    assert_eq!(value[0]["replacement_suspended"], true);
}

#[test]
fn an_engine_found_by_address_follows_address_changes() {
    let mut reg = Registry::new(LIMITS);
    reg.register(Registry::new_external_engine(
        "h",
        1,
        Some("e1".into()),
        None,
        BTreeMap::new(),
        t(0),
    ));
    assert_eq!(reg.find_engine(None, "h", 1), Some("e1"));
    let mut moved =
        Registry::new_external_engine("h", 2, Some("e1".into()), None, BTreeMap::new(), t(0));
    moved.container_id = "e1".into();
    reg.upsert(moved);
    assert_eq!(reg.find_engine(None, "h", 1), None, "the old address");
    assert_eq!(reg.find_engine(None, "h", 2), Some("e1"));
    reg.remove_engine("e1", "gone", t(1)).unwrap();
    assert_eq!(reg.find_engine(None, "h", 2), None, "a removed engine");
}
