//! The containers that refer to a container being recreated, read from `docker inspect` and
//! labels, and what each needs around the update (DESIGN.md section 11):
//!
//! | kind | how it refers | action |
//! |---|---|---|
//! | `network`, `pid`, `ipc` | `--network/--pid/--ipc container:PARENT` | recreated to join the new container |
//! | `link` | legacy `--link PARENT:alias` | recreated, linked to the new container under the same alias |
//! | `hard` | `com.ouroboros.hard_depends_on` | recreated after the parent (even on an unchanged image) |
//! | `soft` | `com.ouroboros.depends_on`, Watchtower's `depends-on`, the coordinator's list | stopped before, started after |
//! | `compose` | Compose's `com.docker.compose.depends_on` (same project) | stopped before, started after |
//! | `volumes-from` | `--volumes-from PARENT` | nothing: volumes outlive containers and are named |
//!
//! The relation is followed transitively: what refers to a recreated dependant is handled as
//! if it referred to the updated container; what refers to a restarted one is restarted too
//! (its id stays, but a namespace it shares goes down with it). Pure: tested here.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerInspectResponse, ContainerSummary};
use serde::{Deserialize, Serialize};

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

/// How a dependant refers to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Network,
    Pid,
    Ipc,
    Link,
    Hard,
    Soft,
    Compose,
    VolumesFrom,
}

impl Kind {
    /// The name reported to the coordinator and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Pid => "pid",
            Self::Ipc => "ipc",
            Self::Link => "link",
            Self::Hard => "hard",
            Self::Soft => "soft",
            Self::Compose => "compose",
            Self::VolumesFrom => "volumes-from",
        }
    }

    /// Whether the dependant names the parent's container itself (its id, or its name through
    /// a link): its old container cannot run once the parent's old container is gone, so it
    /// is stopped before the parent and only a whole rollback gives it back.
    pub fn refers_to_container(self) -> bool {
        matches!(self, Self::Network | Self::Pid | Self::Ipc | Self::Link)
    }
}

/// What a dependant needs around its parent's update. Ordered: a stronger need wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Nothing.
    Untouched,
    /// Stopped before the parent (if running), started again after it.
    Restart,
    /// Recreated after the parent, referring to its new container.
    Recreate,
}

/// What the model needs to know of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    /// Legacy links' targets, by their current names.
    pub links: Vec<String>,
    /// `--volumes-from` entries, without `:ro`/`:rw`.
    pub volumes_from: Vec<String>,
    pub running: bool,
}

/// What never changes about a container once it exists: its labels, namespace modes and
/// `--volumes-from` (none of them can be changed without recreating it). Kept by container id,
/// so finding dependants takes one list call and inspects only containers not seen before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fixed {
    pub labels: BTreeMap<String, String>,
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    pub volumes_from: Vec<String>,
}

impl Fixed {
    pub fn from_inspect(c: &ContainerInspectResponse) -> Self {
        let host = c.host_config.clone().unwrap_or_default();
        Self {
            labels: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            network_mode: host.network_mode.unwrap_or_default(),
            pid_mode: host.pid_mode.unwrap_or_default(),
            ipc_mode: host.ipc_mode.unwrap_or_default(),
            volumes_from: host
                .volumes_from
                .unwrap_or_default()
                .iter()
                .map(|v| v.split(':').next().unwrap_or(v).to_owned())
                .collect(),
        }
    }
}

/// The host's containers as nodes, from the list call (current names, state, and legacy
/// links: the engine lists a link target under `/LINKER/ALIAS` too) and each container's
/// [`Fixed`] parts (containers without them are left out).
pub fn nodes(summaries: &[ContainerSummary], fixed: &HashMap<String, Fixed>) -> Vec<Node> {
    let primary = |s: &ContainerSummary| {
        s.names
            .iter()
            .flatten()
            .map(|n| n.trim_start_matches('/'))
            .find(|n| !n.contains('/'))
            .map(str::to_owned)
    };
    // linker name -> the containers it links to.
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    for s in summaries {
        let Some(target) = primary(s) else { continue };
        for name in s.names.iter().flatten() {
            if let Some((linker, _alias)) = name.trim_start_matches('/').split_once('/') {
                links
                    .entry(linker.to_owned())
                    .or_default()
                    .push(target.clone());
            }
        }
    }
    summaries
        .iter()
        .filter_map(|s| {
            let id = s.id.clone()?;
            let name = primary(s)?;
            let f = fixed.get(&id)?;
            Some(Node {
                links: links.get(&name).cloned().unwrap_or_default(),
                running: s.state.as_ref().map(|st| st.to_string()).as_deref() == Some("running"),
                id,
                name,
                labels: f.labels.clone(),
                network_mode: f.network_mode.clone(),
                pid_mode: f.pid_mode.clone(),
                ipc_mode: f.ipc_mode.clone(),
                volumes_from: f.volumes_from.clone(),
            })
        })
        .collect()
}

impl Node {
    /// Whether `reference` (a name, an id, or an id prefix of 12 or more) names this node.
    fn is(&self, reference: &str) -> bool {
        let reference = reference.trim().trim_start_matches('/');
        !reference.is_empty()
            && (reference == self.name
                || reference == self.id
                || (reference.len() >= 12 && self.id.starts_with(reference)))
    }
}

/// One dependant and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependant {
    pub id: String,
    pub name: String,
    /// How it refers to `parent` (the strongest way, when several).
    pub kind: Kind,
    pub action: Action,
    /// The container it follows: the one updated, or another dependant.
    pub parent: String,
    pub running: bool,
}

fn names(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(|n| n.trim().trim_start_matches('/'))
        .filter(|n| !n.is_empty())
}

/// Every way `child` refers to `parent`.
fn kinds(parent: &Node, child: &Node, extra_soft: bool) -> Vec<Kind> {
    let mut found = Vec::new();
    let shares = |mode: &str| {
        mode.strip_prefix("container:")
            .is_some_and(|r| parent.is(r))
    };
    if shares(&child.network_mode) {
        found.push(Kind::Network);
    }
    if shares(&child.pid_mode) {
        found.push(Kind::Pid);
    }
    if shares(&child.ipc_mode) {
        found.push(Kind::Ipc);
    }
    if child.links.iter().any(|l| parent.is(l)) {
        found.push(Kind::Link);
    }
    let labelled = |label: &str| {
        child
            .labels
            .get(label)
            .is_some_and(|v| names(v).any(|n| parent.is(n)))
    };
    if labelled(LABEL_HARD_DEPENDS_ON) {
        found.push(Kind::Hard);
    }
    if extra_soft || labelled(LABEL_DEPENDS_ON) || labelled(LABEL_DEPENDS_ON_WATCHTOWER) {
        found.push(Kind::Soft);
    }
    let project = |n: &Node| n.labels.get(LABEL_COMPOSE_PROJECT).cloned();
    if let (Some(deps), Some(service)) = (
        child.labels.get(LABEL_COMPOSE_DEPENDS_ON),
        parent.labels.get(LABEL_COMPOSE_SERVICE),
    ) && project(child).is_some()
        && project(child) == project(parent)
        && names(deps).any(|d| d.split(':').next() == Some(service.as_str()))
    {
        found.push(Kind::Compose);
    }
    if child.volumes_from.iter().any(|v| parent.is(v)) {
        found.push(Kind::VolumesFrom);
    }
    found
}

/// What `kind` asks of a dependant whose parent gets `parent`.
fn follow(parent: Action, kind: Kind) -> Action {
    match (parent, kind) {
        (Action::Untouched, _) | (_, Kind::VolumesFrom) => Action::Untouched,
        (Action::Recreate, Kind::Soft | Kind::Compose) => Action::Restart,
        (Action::Recreate, _) => Action::Recreate,
        (Action::Restart, _) => Action::Restart,
    }
}

/// The dependants of the container `root` (id or name) among `nodes` (the host's
/// containers), parents before their dependants. `extra_soft` names more soft dependants of
/// `root` (the coordinator's view). A container reached several ways gets the strongest
/// action; `volumes-from` dependants are listed as untouched.
pub fn dependants(root: &str, nodes: &[Node], extra_soft: &[String]) -> Vec<Dependant> {
    let Some(root_at) = nodes.iter().position(|n| n.is(root)) else {
        return Vec::new();
    };
    let extra = |child: &Node| extra_soft.iter().any(|s| child.is(s));
    // index -> (action, kind, parent index); the root recreates.
    let mut found: HashMap<usize, (Action, Kind, usize)> = HashMap::new();
    let action_of = |found: &HashMap<usize, (Action, Kind, usize)>, i: usize| {
        if i == root_at {
            Some(Action::Recreate)
        } else {
            found.get(&i).map(|(a, _, _)| *a)
        }
    };
    // Actions only grow and there are three: this ends after a few rounds.
    for _ in 0..=nodes.len().saturating_mul(3) {
        let mut changed = false;
        for (p, parent) in nodes.iter().enumerate() {
            let Some(pa) = action_of(&found, p).filter(|a| *a != Action::Untouched) else {
                continue;
            };
            for (c, child) in nodes.iter().enumerate() {
                if c == root_at || c == p {
                    continue;
                }
                for kind in kinds(parent, child, p == root_at && extra(child)) {
                    let wanted = follow(pa, kind);
                    if found.get(&c).is_none_or(|(a, _, _)| wanted > *a) {
                        found.insert(c, (wanted, kind, p));
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Depth: the longest chain of affected parents above each, so that a container is handled
    // after everything it refers to (bounded: a cycle among dependants cannot loop).
    let mut edges = Vec::new();
    for &c in found.keys() {
        for p in found.keys().copied().chain([root_at]) {
            let active = action_of(&found, p).is_some_and(|a| a != Action::Untouched);
            if p != c && active && !kinds(&nodes[p], &nodes[c], false).is_empty() {
                edges.push((p, c));
            }
        }
    }
    let mut depth: HashMap<usize, usize> = found.keys().map(|i| (*i, 1)).collect();
    depth.insert(root_at, 0);
    for _ in 0..=nodes.len() {
        let mut changed = false;
        for &(p, c) in &edges {
            let via = depth[&p] + 1;
            if via > depth[&c] && via <= nodes.len() {
                depth.insert(c, via);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut list: Vec<Dependant> = found
        .iter()
        .map(|(&i, &(action, kind, p))| Dependant {
            id: nodes[i].id.clone(),
            name: nodes[i].name.clone(),
            kind,
            action,
            parent: nodes[p].name.clone(),
            running: nodes[i].running,
        })
        .collect();
    let position: HashMap<String, usize> = found
        .keys()
        .map(|i| (nodes[*i].name.clone(), depth[i]))
        .collect();
    list.sort_by(|a, b| (position[&a.name], &a.name).cmp(&(position[&b.name], &b.name)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            id: format!("{name:0<64}").replace(|c: char| !c.is_ascii_hexdigit(), "a"),
            name: name.into(),
            running: true,
            ..Node::default()
        }
    }

    fn labelled(name: &str, label: &str, value: &str) -> Node {
        let mut n = node(name);
        n.labels.insert(label.into(), value.into());
        n
    }

    fn summary(list: &[Dependant]) -> Vec<(String, &'static str, Action, String)> {
        list.iter()
            .map(|d| (d.name.clone(), d.kind.as_str(), d.action, d.parent.clone()))
            .collect()
    }

    #[test]
    fn every_kind_gets_its_action() {
        let web = node("web");
        let mut net = node("net");
        net.network_mode = format!("container:{}", web.id);
        let mut pid = node("pid");
        pid.pid_mode = format!("container:{}", web.id);
        let mut ipc = node("ipc");
        ipc.ipc_mode = format!("container:{}", &web.id[..12]);
        let mut link = node("link");
        link.links = vec!["web".into()];
        let hard = labelled("hard", LABEL_HARD_DEPENDS_ON, "db, web");
        let soft = labelled("soft", LABEL_DEPENDS_ON, "web");
        let wt = labelled("wt", LABEL_DEPENDS_ON_WATCHTOWER, "/web");
        let mut vf = node("vf");
        vf.volumes_from = vec!["web".into()];
        let other = labelled("other", LABEL_DEPENDS_ON, "db");
        let nodes = vec![web, net, pid, ipc, link, hard, soft, wt, vf, other];
        let got = summary(&dependants("web", &nodes, &[]));
        let want: Vec<(String, &str, Action, String)> = [
            ("hard", "hard", Action::Recreate),
            ("ipc", "ipc", Action::Recreate),
            ("link", "link", Action::Recreate),
            ("net", "network", Action::Recreate),
            ("pid", "pid", Action::Recreate),
            ("soft", "soft", Action::Restart),
            ("vf", "volumes-from", Action::Untouched),
            ("wt", "soft", Action::Restart),
        ]
        .iter()
        .map(|(n, k, a)| ((*n).to_owned(), *k, *a, "web".to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn nodes_come_from_summaries_and_fixed_parts_with_links_from_the_targets_names() {
        let summary = |id: &str, names: &[&str], state: &str| ContainerSummary {
            id: Some(id.into()),
            names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            state: serde_json::from_value(serde_json::Value::String(state.into())).ok(),
            ..ContainerSummary::default()
        };
        let summaries = vec![
            summary("w", &["/app/db", "/web", "/cron/database"], "running"),
            summary("a", &["/app"], "exited"),
            summary("c", &["/cron"], "running"),
            summary("new", &["/fresh"], "running"),
        ];
        let side = Fixed {
            network_mode: "container:w".into(),
            ..Fixed::default()
        };
        let fixed = HashMap::from([
            ("w".to_owned(), Fixed::default()),
            ("a".to_owned(), side),
            ("c".to_owned(), Fixed::default()),
        ]);
        let got = nodes(&summaries, &fixed);
        let by_name: HashMap<&str, &Node> = got.iter().map(|n| (n.name.as_str(), n)).collect();
        assert_eq!(
            got.len(),
            3,
            "a container without its fixed parts is left out"
        );
        assert_eq!(by_name["app"].links, vec!["web".to_owned()]);
        assert_eq!(by_name["cron"].links, vec!["web".to_owned()]);
        assert!(by_name["web"].links.is_empty() && by_name["web"].running);
        assert!(!by_name["app"].running);
        assert_eq!(by_name["app"].network_mode, "container:w");
        let found = dependants("web", &got, &[]);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn compose_names_services_of_the_same_project_only() {
        let compose = |name: &str, project: &str, service: &str, deps: Option<&str>| {
            let mut n = node(name);
            n.labels
                .insert(LABEL_COMPOSE_PROJECT.into(), project.into());
            n.labels
                .insert(LABEL_COMPOSE_SERVICE.into(), service.into());
            if let Some(d) = deps {
                n.labels.insert(LABEL_COMPOSE_DEPENDS_ON.into(), d.into());
            }
            n
        };
        let nodes = vec![
            compose("shop-db-1", "shop", "db", None),
            compose(
                "shop-web-1",
                "shop",
                "web",
                Some("db:service_healthy:false"),
            ),
            compose(
                "blog-web-1",
                "blog",
                "web",
                Some("db:service_started:false"),
            ),
        ];
        assert_eq!(
            summary(&dependants("shop-db-1", &nodes, &[])),
            vec![(
                "shop-web-1".into(),
                "compose",
                Action::Restart,
                "shop-db-1".into()
            )]
        );
    }

    #[test]
    fn followed_transitively_parents_first_and_strongest_wins() {
        let web = node("web");
        // side shares web's network; tail shares side's; proxy depends softly on side, and
        // its own sidecar goes down with it.
        let mut side = node("side");
        side.network_mode = format!("container:{}", web.id);
        let mut tail = node("tail");
        tail.pid_mode = format!("container:{}", side.id);
        let proxy = labelled("proxy", LABEL_DEPENDS_ON, "side");
        let mut proxy_side = node("proxy-side");
        proxy_side.network_mode = "container:proxy".into();
        // both soft (label) and linked: the link wins.
        let mut both = labelled("both", LABEL_DEPENDS_ON, "web");
        both.links = vec!["web".into()];
        let nodes = vec![
            proxy_side.clone(),
            tail.clone(),
            proxy.clone(),
            side.clone(),
            web,
            both,
        ];
        let got = summary(&dependants("web", &nodes, &[]));
        assert_eq!(
            got,
            vec![
                ("both".into(), "link", Action::Recreate, "web".into()),
                ("side".into(), "network", Action::Recreate, "web".into()),
                ("proxy".into(), "soft", Action::Restart, "side".into()),
                ("tail".into(), "pid", Action::Recreate, "side".into()),
                (
                    "proxy-side".into(),
                    "network",
                    Action::Restart,
                    "proxy".into()
                ),
            ]
        );
    }

    #[test]
    fn the_coordinators_soft_list_counts_and_cycles_end() {
        let a = labelled("a", LABEL_DEPENDS_ON, "b");
        let b = labelled("b", LABEL_DEPENDS_ON, "a");
        let c = node("c");
        let nodes = vec![a, b, c];
        let got = summary(&dependants("a", &nodes, &["c".into()]));
        assert_eq!(
            got,
            vec![
                ("b".into(), "soft", Action::Restart, "a".into()),
                ("c".into(), "soft", Action::Restart, "a".into()),
            ]
        );
        assert!(dependants("nope", &nodes, &[]).is_empty());
    }
}
