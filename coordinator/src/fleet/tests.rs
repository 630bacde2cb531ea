//! The fleet view: sessions, inventories, stored records, Swarm services.

use super::*;
use crate::fleet::store::MemoryStore;
use ouroboros_shared::inventory::{ContainerState, EngineInfo, Health, HostMode};

const PEER: &str = "127.0.0.1:1000";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn hello(host: &str) -> Hello {
    Hello {
        host: host.into(),
        agent_version: "0.1.0".into(),
        engine: EngineInfo {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            ..Default::default()
        },
        mode: HostMode::Standalone,
        container_id: None,
        agent_image: None,
        handover_op_id: None,
    }
}

fn inventory(names: &[&str], mode: HostMode) -> Inventory {
    Inventory {
        containers: names
            .iter()
            .map(|n| ContainerInfo {
                id: format!("id-{n}"),
                name: (*n).into(),
                image: "img:1".into(),
                image_id: "sha256:1".into(),
                repo_digests: vec![],
                labels: Default::default(),
                state: ContainerState::Running,
                health: Health::None,
                restart_count: 0,
                created_unix: 1,
                network_mode: String::new(),
                links: Vec::new(),
                pid_mode: String::new(),
                ipc_mode: String::new(),
                set_aside: String::new(),
            })
            .collect(),
        mode,
        observed_at_unix_ms: 5,
        cluster_id: String::new(),
        services: Vec::new(),
    }
}

#[test]
fn hosts_survive_a_reopen_as_disconnected_with_last_seen() {
    let store = Arc::new(MemoryStore::default());
    let fleet = Arc::new(Fleet::open(store.clone()).unwrap());
    let h = HostName::parse("h1").unwrap();
    let (s, _) = fleet.connect(&h, &hello("h1"), peer(), 10);
    assert!(fleet.inventory(&h, s.id, inventory(&["a", "b"], HostMode::SwarmManager), 20));
    fleet.seen(&h, s.id, 30);
    assert!(fleet.hosts()[0].connected);
    assert_eq!(fleet.hosts()[0].record.mode, HostMode::SwarmManager);
    fleet.close();

    let reopened = Fleet::open(store).unwrap();
    let hosts = reopened.hosts();
    assert_eq!(hosts.len(), 1);
    assert!(!hosts[0].connected);
    assert_eq!(hosts[0].record.last_seen_unix_ms, 30);
    assert_eq!(hosts[0].record.engine.api_version, "1.41");
    assert_eq!(hosts[0].record.mode, HostMode::SwarmManager);
    assert_eq!(reopened.containers(Some(&h)).unwrap().len(), 2);
    drop(s);
}

#[test]
fn an_inventory_taken_before_the_recorded_one_is_ignored() {
    let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
    let h = HostName::parse("h1").unwrap();
    let (s, _) = fleet.connect(&h, &hello("h1"), peer(), 10);
    let taken_at = |names: &[&str], at: i64| Inventory {
        observed_at_unix_ms: at,
        ..inventory(names, HostMode::Standalone)
    };
    assert!(fleet.inventory(&h, s.id, taken_at(&["new"], 500), 20));
    assert!(!fleet.inventory(&h, s.id, taken_at(&["old", "old-aside"], 400), 21));
    let names: Vec<String> = fleet
        .containers(Some(&h))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.name)
        .collect();
    assert_eq!(names, ["new"]);
    assert!(fleet.inventory(&h, s.id, taken_at(&["newer"], 600), 22));
    drop(s);
    // A new session starts afresh (the agent's clock may have moved back).
    let (s2, _) = fleet.connect(&h, &hello("h1"), peer(), 30);
    assert!(fleet.inventory(&h, s2.id, taken_at(&["again"], 100), 31));
    drop(s2);
}

#[test]
fn a_replaced_session_is_told_to_end_and_cannot_change_the_view() {
    let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
    let h = HostName::parse("h1").unwrap();
    let (old, none) = fleet.connect(&h, &hello("h1"), peer(), 10);
    assert_eq!(none, None);
    let other: SocketAddr = "127.0.0.2:2000".parse().unwrap();
    let (new, replaced_peer) = fleet.connect(&h, &hello("h1"), other, 11);
    assert_eq!(replaced_peer, Some(peer()));
    assert!(*old.replaced.borrow());
    assert!(!*new.replaced.borrow());
    assert!(!fleet.inventory(&h, old.id, inventory(&["x"], HostMode::Standalone), 12));
    drop(old);
    assert!(
        fleet.hosts()[0].connected,
        "old session disconnected the new one"
    );
    drop(new);
    let view = &fleet.hosts()[0];
    assert!(!view.connected);
    assert!(view.record.last_seen_unix_ms >= 11);
}

#[test]
fn unknown_host_has_no_containers_and_all_hosts_are_listed() {
    let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
    let mut sessions = Vec::new();
    for name in ["b", "a"] {
        let h = HostName::parse(name).unwrap();
        let (s, _) = fleet.connect(&h, &hello(name), peer(), 1);
        fleet.inventory(&h, s.id, inventory(&["c1"], HostMode::Standalone), 2);
        sessions.push(s);
    }
    assert!(
        fleet
            .containers(Some(&HostName::parse("zz").unwrap()))
            .is_none()
    );
    let all = fleet.containers(None).unwrap();
    assert_eq!(
        all.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn a_store_failure_does_not_lose_the_view_and_is_written_later() {
    let store = Arc::new(MemoryStore::default());
    let fleet = Arc::new(Fleet::open(store.clone()).unwrap());
    let h = HostName::parse("h1").unwrap();
    store.fail_writes(true);
    let (s, _) = fleet.connect(&h, &hello("h1"), peer(), 1);
    assert!(!fleet.sync());
    assert!(fleet.hosts()[0].connected);
    store.fail_writes(false);
    assert!(fleet.sync());
    assert_eq!(store.load_hosts().unwrap().len(), 1);
    drop(s);
}

#[test]
fn each_swarm_s_services_come_once_through_a_live_manager() {
    let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
    let service = |name: &str| ServiceInfo {
        id: format!("id-{name}"),
        name: name.into(),
        image: "reg/app:1".into(),
        ..ServiceInfo::default()
    };
    let manager = |cluster: &str, services: &[&str]| Inventory {
        cluster_id: cluster.into(),
        services: services.iter().map(|n| service(n)).collect(),
        ..inventory(&[], HostMode::SwarmManager)
    };
    let mut guards = Vec::new();
    for (host, inv) in [
        ("m1", manager("swarm-a", &["web", "db"])),
        ("m2", manager("swarm-a", &["web", "db"])),
        ("m3", manager("swarm-b", &["cache"])),
        ("w1", inventory(&[], HostMode::SwarmWorker)),
    ] {
        let h = HostName::parse(host).unwrap();
        let (s, _) = fleet.connect(&h, &hello(host), peer(), 10);
        assert!(fleet.inventory(&h, s.id, inv, 20));
        guards.push(s);
    }
    let by = |fleet: &Fleet| -> Vec<(String, String)> {
        fleet
            .services()
            .into_iter()
            .map(|(h, s)| (h, s.name))
            .collect()
    };
    // Two managers of swarm-a: its services once, through the first by name.
    assert_eq!(
        by(&fleet),
        [
            ("m1".to_owned(), "web".to_owned()),
            ("m1".to_owned(), "db".to_owned()),
            ("m3".to_owned(), "cache".to_owned()),
        ]
    );
    // m1 goes away: swarm-a's services go through m2, which is connected.
    guards.remove(0);
    assert_eq!(
        by(&fleet),
        [
            ("m2".to_owned(), "web".to_owned()),
            ("m2".to_owned(), "db".to_owned()),
            ("m3".to_owned(), "cache".to_owned()),
        ]
    );
}
