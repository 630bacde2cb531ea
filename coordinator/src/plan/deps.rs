//! Dependencies between the containers of one host, and the order updates follow.
//!
//! Edges come from `com.ouroboros.depends_on` and Watchtower's `depends-on` label (soft: the
//! dependant is stopped before its parent's update and started once the parent is healthy),
//! `com.ouroboros.hard_depends_on`, `container:` network, pid and ipc modes and legacy links
//! (hard: the dependant is recreated after its parent, by the parent's own operation on the
//! agent), and Compose's `com.docker.compose.depends_on` (soft; Compose names services,
//! resolved within the container's Compose project). Parents go
//! before their dependants. A dependency cycle, or a dependency on a container the host does
//! not have, is reported with the names involved; those containers (and what depends on them)
//! are left out, the rest proceed.

use std::collections::{BTreeMap, BTreeSet};

use ouroboros_shared::echo;

/// Ouroboros' soft dependency label: comma-separated container names.
pub const LABEL_DEPENDS_ON: &str = "com.ouroboros.depends_on";
/// Ouroboros' hard dependency label.
pub const LABEL_HARD_DEPENDS_ON: &str = "com.ouroboros.hard_depends_on";
/// Watchtower's dependency label (soft).
pub const LABEL_DEPENDS_ON_WATCHTOWER: &str = "com.centurylinklabs.watchtower.depends-on";
/// Compose's dependency label: `service:condition:restart,…`.
pub const LABEL_COMPOSE_DEPENDS_ON: &str = "com.docker.compose.depends_on";
const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// How a dependant follows its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Stopped before the parent's update, started after the parent is healthy.
    Soft,
    /// Recreated after the parent.
    Hard,
}

/// What the graph needs to know of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.NetworkMode`, `PidMode`, `IpcMode` (`container:<name or id>` matters here).
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    /// Legacy links' target container names.
    pub links: Vec<String>,
}

/// The dependencies of one host's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    /// parent name → (dependant name, kind).
    dependants: BTreeMap<String, BTreeSet<(String, Kind)>>,
    /// dependant name → parent names.
    parents: BTreeMap<String, BTreeSet<String>>,
    /// Containers left out, with why.
    broken: BTreeMap<String, String>,
}

fn names(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(|n| n.trim().trim_start_matches('/'))
        .filter(|n| !n.is_empty())
}

impl Graph {
    /// Builds the graph of one host's containers.
    pub fn build(nodes: &[Node]) -> Self {
        let by_name: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let resolve = |reference: &str| -> Option<String> {
            if by_name.contains_key(reference) {
                return Some(reference.to_owned());
            }
            // An id or an unambiguous id prefix (12 characters at least), as Docker accepts.
            let matching: Vec<&Node> = nodes
                .iter()
                .filter(|n| reference.len() >= 12 && n.id.starts_with(reference))
                .collect();
            match matching.as_slice() {
                [one] => Some(one.name.clone()),
                _ => None,
            }
        };
        let mut graph = Graph::default();
        let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in nodes {
            let mut wanted: Vec<(String, Kind)> = Vec::new();
            for (label, kind) in [
                (LABEL_DEPENDS_ON, Kind::Soft),
                (LABEL_DEPENDS_ON_WATCHTOWER, Kind::Soft),
                (LABEL_HARD_DEPENDS_ON, Kind::Hard),
            ] {
                if let Some(value) = node.labels.get(label) {
                    wanted.extend(names(value).map(|n| (n.to_owned(), kind)));
                }
            }
            for mode in [&node.network_mode, &node.pid_mode, &node.ipc_mode] {
                if let Some(provider) = mode.strip_prefix("container:") {
                    wanted.push((provider.to_owned(), Kind::Hard));
                }
            }
            wanted.extend(node.links.iter().map(|l| (l.clone(), Kind::Hard)));
            if let (Some(value), Some(project)) = (
                node.labels.get(LABEL_COMPOSE_DEPENDS_ON),
                node.labels.get(LABEL_COMPOSE_PROJECT),
            ) {
                for service in names(value).map(|s| s.split(':').next().unwrap_or(s)) {
                    let containers: Vec<&Node> = nodes
                        .iter()
                        .filter(|n| {
                            n.labels.get(LABEL_COMPOSE_PROJECT) == Some(project)
                                && n.labels.get(LABEL_COMPOSE_SERVICE).map(String::as_str)
                                    == Some(service)
                        })
                        .collect();
                    if containers.is_empty() {
                        wanted.push((format!("{project}/{service}"), Kind::Soft));
                    }
                    wanted.extend(containers.iter().map(|c| (c.name.clone(), Kind::Soft)));
                }
            }
            for (reference, kind) in wanted {
                match resolve(&reference) {
                    Some(parent) if parent == node.name => {
                        missing
                            .entry(node.name.clone())
                            .or_default()
                            .insert(format!(
                                "{} (itself)",
                                echo::clip(&reference, echo::MAX_NAME_CHARS - 10)
                            ));
                    }
                    Some(parent) => {
                        // A hard edge wins over a soft one between the same two.
                        let set = graph.dependants.entry(parent.clone()).or_default();
                        if kind == Kind::Hard {
                            set.remove(&(node.name.clone(), Kind::Soft));
                            set.insert((node.name.clone(), Kind::Hard));
                        } else if !set.contains(&(node.name.clone(), Kind::Hard)) {
                            set.insert((node.name.clone(), Kind::Soft));
                        }
                        graph
                            .parents
                            .entry(node.name.clone())
                            .or_default()
                            .insert(parent);
                    }
                    None => {
                        missing
                            .entry(node.name.clone())
                            .or_default()
                            .insert(reference);
                    }
                }
            }
        }
        // Reasons echo labels: bounded, so a 10 KB label is not repeated whole.
        for (name, refs) in missing {
            graph.broken.insert(
                name,
                format!(
                    "depends on {}, which this host does not have",
                    echo::list(&refs)
                ),
            );
        }
        for cycle in graph.cycles() {
            let text = echo::join(&cycle, " -> ");
            for name in &cycle {
                graph
                    .broken
                    .entry(name.clone())
                    .or_insert_with(|| format!("dependency cycle: {text}"));
            }
        }
        graph.spread_broken();
        graph
    }

    /// Cycles, each as the names around it (first name repeated at the end).
    fn cycles(&self) -> Vec<Vec<String>> {
        // Tarjan-free: small graphs; a DFS per node that finds a path back to itself.
        let mut found: Vec<Vec<String>> = Vec::new();
        let mut seen_in_cycle: BTreeSet<String> = BTreeSet::new();
        for start in self.parents.keys() {
            if seen_in_cycle.contains(start) {
                continue;
            }
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut visited = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for parent in self.parents.get(&at).into_iter().flatten() {
                    if parent == start {
                        // Read parent first (a -> b: b depends on a), back to where it began.
                        let mut cycle: Vec<String> = path.iter().rev().cloned().collect();
                        cycle.push(cycle[0].clone());
                        seen_in_cycle.extend(cycle.iter().cloned());
                        found.push(cycle);
                        stack.clear();
                        break;
                    }
                    if visited.insert(parent.clone()) {
                        let mut next = path.clone();
                        next.push(parent.clone());
                        stack.push((parent.clone(), next));
                    }
                }
            }
        }
        found
    }

    /// What depends on a left-out container is left out too.
    fn spread_broken(&mut self) {
        let mut queue: Vec<String> = self.broken.keys().cloned().collect();
        while let Some(name) = queue.pop() {
            for (dependant, _) in self.dependants.get(&name).into_iter().flatten() {
                if !self.broken.contains_key(dependant) {
                    self.broken.insert(
                        dependant.clone(),
                        format!("depends on {}, which is left out", echo::name(&name)),
                    );
                    queue.push(dependant.clone());
                }
            }
        }
    }

    /// Why `name` is left out, if it is.
    pub fn broken(&self, name: &str) -> Option<&str> {
        self.broken.get(name).map(String::as_str)
    }

    /// Every container recreated with `name` by its operation on the agent: its hard
    /// dependants, theirs, and so on.
    pub fn recreated_with(&self, name: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut queue = vec![name.to_owned()];
        while let Some(at) = queue.pop() {
            for (dependant, kind) in self.dependants.get(&at).into_iter().flatten() {
                if *kind == Kind::Hard && dependant != name && found.insert(dependant.clone()) {
                    queue.push(dependant.clone());
                }
            }
        }
        found
    }

    /// What an update of `name` may touch on its host: itself and every container that
    /// depends on it, directly or through others, of any kind (the agent stops the soft
    /// dependants, recreates the hard ones and restarts what shares a restarted container's
    /// namespace). Two updates whose reaches meet must not run at the same time; two whose
    /// reaches do not meet have no dependency between them either way.
    pub fn reach(&self, name: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::from([name.to_owned()]);
        let mut queue = vec![name.to_owned()];
        while let Some(at) = queue.pop() {
            for (dependant, _) in self.dependants.get(&at).into_iter().flatten() {
                if found.insert(dependant.clone()) {
                    queue.push(dependant.clone());
                }
            }
        }
        found
    }

    /// The direct dependants of `name`, with how they depend on it.
    pub fn dependants(&self, name: &str) -> Vec<(String, Kind)> {
        self.dependants
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `names` in update order: parents before dependants (through containers not in `names`
    /// too), ties by name. Left-out containers are not in it.
    pub fn order(&self, names: &[String]) -> Vec<String> {
        let wanted: BTreeSet<&String> = names
            .iter()
            .filter(|n| !self.broken.contains_key(*n))
            .collect();
        // Depth of each container: the longest chain of parents above it.
        let mut depth: BTreeMap<String, usize> = BTreeMap::new();
        fn depth_of(
            graph: &Graph,
            name: &str,
            memo: &mut BTreeMap<String, usize>,
            guard: usize,
        ) -> usize {
            if let Some(d) = memo.get(name) {
                return *d;
            }
            // The graph has no cycle among kept containers; the guard only bounds the walk.
            let d = if guard > 1024 {
                0
            } else {
                graph
                    .parents
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(|p| depth_of(graph, p, memo, guard + 1) + 1)
                    .max()
                    .unwrap_or(0)
            };
            memo.insert(name.to_owned(), d);
            d
        }
        let mut ordered: Vec<(usize, String)> = wanted
            .into_iter()
            .map(|n| (depth_of(self, n, &mut depth, 0), n.clone()))
            .collect();
        ordered.sort();
        ordered.into_iter().map(|(_, n)| n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: format!("{name:0<64}"),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Node::default()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parents_come_first_whatever_declared_it() {
        let mut sidecar = node("sidecar", &[]);
        sidecar.network_mode = "container:app".into();
        let mut linked = node("linked", &[]);
        linked.links = vec!["db".into()];
        let nodes = vec![
            node("proxy", &[(LABEL_DEPENDS_ON, "app")]),
            node("app", &[(LABEL_HARD_DEPENDS_ON, "db")]),
            node("db", &[]),
            sidecar,
            linked,
            node("wt", &[(LABEL_DEPENDS_ON_WATCHTOWER, "proxy")]),
        ];
        let graph = Graph::build(&nodes);
        let order = graph.order(&strings(&["wt", "proxy", "sidecar", "app", "db", "linked"]));
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(pos("db") < pos("app"), "{order:?}");
        assert!(
            pos("app") < pos("proxy") && pos("app") < pos("sidecar"),
            "{order:?}"
        );
        assert!(
            pos("proxy") < pos("wt") && pos("db") < pos("linked"),
            "{order:?}"
        );
        assert_eq!(
            graph.dependants("app"),
            vec![("proxy".into(), Kind::Soft), ("sidecar".into(), Kind::Hard)]
        );
        assert_eq!(
            graph.dependants("db"),
            vec![("app".into(), Kind::Hard), ("linked".into(), Kind::Hard)]
        );
        // db's operation recreates app (hard), and with it app's network sidecar.
        assert_eq!(
            graph.recreated_with("db"),
            ["app", "linked", "sidecar"].map(String::from).into()
        );
        assert!(graph.recreated_with("proxy").is_empty());
        // Order holds through a container that is not updated: db before proxy.
        let order = graph.order(&strings(&["proxy", "db"]));
        assert_eq!(order, strings(&["db", "proxy"]));
    }

    #[test]
    fn reaches_meet_exactly_when_two_updates_share_a_container() {
        let mut sidecar = node("sidecar", &[]);
        sidecar.network_mode = "container:app".into();
        let nodes = vec![
            node("db", &[]),
            node("app", &[(LABEL_HARD_DEPENDS_ON, "db")]),
            node("worker", &[(LABEL_DEPENDS_ON, "db")]),
            sidecar,
            node("proxy", &[(LABEL_DEPENDS_ON, "app,api")]),
            node("api", &[]),
            node("cache", &[]),
        ];
        let graph = Graph::build(&nodes);
        let reach = |n: &str| graph.reach(n).into_iter().collect::<Vec<_>>();
        assert_eq!(
            reach("db"),
            strings(&["app", "db", "proxy", "sidecar", "worker"]),
            "everything below it, of every kind"
        );
        assert_eq!(reach("app"), strings(&["app", "proxy", "sidecar"]));
        assert_eq!(reach("worker"), strings(&["worker"]));
        assert_eq!(reach("cache"), strings(&["cache"]));
        let meet = |a: &str, b: &str| !graph.reach(a).is_disjoint(&graph.reach(b));
        // Two children of one parent do not touch each other.
        assert!(!meet("app", "worker"));
        // Both restart the proxy around their update.
        assert!(meet("app", "api"));
        // A parent and its dependants.
        assert!(meet("db", "worker") && meet("db", "sidecar"));
        assert!(!meet("cache", "db"));
    }

    #[test]
    fn compose_depends_on_names_services_of_the_same_project() {
        let compose = |name: &str, project: &str, service: &str, deps: Option<&str>| {
            let mut labels = vec![
                (LABEL_COMPOSE_PROJECT, project),
                (LABEL_COMPOSE_SERVICE, service),
            ];
            if let Some(d) = deps {
                labels.push((LABEL_COMPOSE_DEPENDS_ON, d));
            }
            node(name, &labels)
        };
        let nodes = vec![
            compose(
                "shop-web-1",
                "shop",
                "web",
                Some("db:service_healthy:false,cache:service_started:true"),
            ),
            compose("shop-db-1", "shop", "db", None),
            compose("shop-cache-1", "shop", "cache", None),
            compose("blog-db-1", "blog", "db", None),
        ];
        let graph = Graph::build(&nodes);
        assert_eq!(
            graph.dependants("shop-db-1"),
            vec![("shop-web-1".into(), Kind::Soft)]
        );
        assert!(
            graph.dependants("blog-db-1").is_empty(),
            "another project's db"
        );
        let order = graph.order(&strings(&["shop-web-1", "shop-db-1", "shop-cache-1"]));
        assert_eq!(order.last().map(String::as_str), Some("shop-web-1"));
    }

    #[test]
    fn cycles_and_missing_parents_are_named_and_left_out_with_their_dependants() {
        let nodes = vec![
            node("a", &[(LABEL_DEPENDS_ON, "c")]),
            node("b", &[(LABEL_DEPENDS_ON, "a")]),
            node("c", &[(LABEL_HARD_DEPENDS_ON, "b")]),
            node("d", &[(LABEL_DEPENDS_ON, "a")]),
            node("e", &[(LABEL_DEPENDS_ON, "ghost, /phantom")]),
            node("f", &[]),
            node("g", &[(LABEL_DEPENDS_ON, "g")]),
        ];
        let graph = Graph::build(&nodes);
        assert_eq!(
            graph.broken("a"),
            Some("dependency cycle: b -> c -> a -> b"),
            "parent first: c depends on b, a on c, b on a"
        );
        for name in ["a", "b", "c"] {
            let why = graph.broken(name).unwrap();
            assert!(why.starts_with("dependency cycle: "), "{name}: {why}");
            for member in ["a", "b", "c"] {
                assert!(why.contains(member), "{why}");
            }
        }
        assert_eq!(graph.broken("d"), Some("depends on a, which is left out"));
        assert_eq!(
            graph.broken("e"),
            Some("depends on ghost, phantom, which this host does not have")
        );
        assert!(graph.broken("g").unwrap().contains("itself"));
        assert_eq!(graph.broken("f"), None);
        assert_eq!(
            graph.order(&strings(&["a", "b", "c", "d", "e", "f", "g"])),
            strings(&["f"])
        );
    }

    #[test]
    fn reasons_echo_a_huge_label_bounded() {
        // 10 KB of names the host does not have: a few of them, and how many more.
        let label = (0..1000)
            .map(|i| format!("missing-{i:03}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(label.len() > 10_000);
        let web = node("web", &[(LABEL_DEPENDS_ON, &label)]);
        let graph = Graph::build(&[web, node("app", &[(LABEL_DEPENDS_ON, "web")])]);
        let reason = graph.broken("web").unwrap();
        assert!(reason.len() < 300, "{reason}");
        assert!(
            reason.starts_with("depends on missing-000, missing-001, "),
            "{reason}"
        );
        assert!(
            reason.ends_with("… and 995 more, which this host does not have"),
            "{reason}"
        );
        // One name of 10 KB, and itself under a 10 KB name.
        let huge = "h".repeat(10_000);
        let graph = Graph::build(&[
            node("one", &[(LABEL_DEPENDS_ON, &huge)]),
            node(&huge, &[(LABEL_DEPENDS_ON, &huge)]),
            node("below", &[(LABEL_DEPENDS_ON, &huge)]),
        ]);
        for name in ["one", huge.as_str()] {
            let reason = graph.broken(name).unwrap();
            assert!(reason.len() < 300, "{reason}");
        }
        assert!(graph.broken(&huge).unwrap().contains("(itself)"));
        // What depends on it names it, bounded too.
        let below = graph.broken("below").unwrap();
        assert!(below.len() < 300 && below.contains("left out"), "{below}");
    }

    #[test]
    fn a_long_cycle_is_named_bounded() {
        let names: Vec<String> = (0..200).map(|i| format!("c{i:03}")).collect();
        let nodes: Vec<Node> = names
            .iter()
            .enumerate()
            .map(|(i, n)| node(n, &[(LABEL_DEPENDS_ON, &names[(i + 1) % names.len()])]))
            .collect();
        let graph = Graph::build(&nodes);
        let reason = graph.broken("c000").unwrap();
        assert!(reason.starts_with("dependency cycle: c"), "{reason}");
        assert!(reason.contains(" -> … and "), "{reason}");
        assert!(reason.len() < 300, "{reason}");
    }

    #[test]
    fn namespace_modes_by_id_and_hard_over_soft() {
        let app = node("app", &[]);
        let mut sidecar = node("sidecar", &[(LABEL_DEPENDS_ON, "app")]);
        sidecar.network_mode = format!("container:{}", &app.id[..12]);
        let mut pid = node("pid", &[]);
        pid.pid_mode = format!("container:{}", app.id);
        let mut ipc = node("ipc", &[]);
        ipc.ipc_mode = "container:app".into();
        let graph = Graph::build(&[app, sidecar, pid, ipc]);
        assert_eq!(
            graph.dependants("app"),
            vec![
                ("ipc".into(), Kind::Hard),
                ("pid".into(), Kind::Hard),
                ("sidecar".into(), Kind::Hard)
            ]
        );
    }
}
