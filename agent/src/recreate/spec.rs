//! The replacement container's create request, derived from the old container and the old
//! image: pure, so every rule is tested here on recorded `docker inspect` output.
//!
//! The old `Config` minus what came from the old image (env entries, labels, cmd, entrypoint,
//! each healthcheck field, user, workdir, exposed ports, volumes, stop signal), so that the new
//! image's defaults apply and every setting the user made stays. `HostConfig` is carried over
//! as it is, with legacy links rewritten to `name:alias`. Networks: the primary one goes into
//! the create request, the others are connected afterwards; only user aliases (not the old
//! short id), IPAM configuration (static addresses) and user-set MAC addresses are kept.
//!
//! The one setting the typed API model cannot carry is `Config.MacAddress` on engines before
//! API 1.44 (where it is the only way to set a MAC): it is returned apart as
//! [`CreatePlan::legacy_mac`] for the caller to put into the request body.
//!
//! (Over 600 lines: every derivation rule with its test on recorded inspect output.)

use std::collections::{HashMap, HashSet};

use super::signal::StopSignal;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HealthConfig, ImageInspect, NetworkingConfig,
};

/// Label that names the signal to stop a container with (Ouroboros).
pub const LABEL_STOP_SIGNAL: &str = "com.ouroboros.stop_signal";
/// Watchtower's name for the same.
pub const LABEL_STOP_SIGNAL_WATCHTOWER: &str = "com.centurylinklabs.watchtower.stop-signal";

pub use crate::engine::ApiVersion;

/// From API 1.44 on, MAC addresses are per endpoint and `Config.MacAddress` is gone.
fn per_endpoint_mac(api: ApiVersion) -> bool {
    api >= ApiVersion::new(1, 44)
}

/// Why a container is not recreated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("its image is pinned to a digest ({0}); pinned containers are never updated")]
    DigestPinned(String),
    #[error("it is a Swarm task; its service is updated instead")]
    SwarmTask,
    #[error("it is the agent's own container; that is a self-update")]
    OwnContainer,
    #[error("docker inspect lacks {0}")]
    Incomplete(&'static str),
    #[error(
        "it runs with --rm (AutoRemove): stopping it would delete it; run it without --rm to let it be updated"
    )]
    AutoRemove,
    #[error("its label {label}: {reason}; nothing was changed")]
    InvalidStopSignal { label: &'static str, reason: String },
}

/// Everything needed to create the replacement.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatePlan {
    /// Name without the leading slash.
    pub name: String,
    pub body: ContainerCreateBody,
    /// `Config.MacAddress` for engines before API 1.44 (see the module docs).
    pub legacy_mac: Option<String>,
    /// Networks to connect after create, with their endpoint settings.
    pub extra_networks: Vec<(String, EndpointSettings)>,
    pub was_running: bool,
    /// Signal to stop the old container with, if not the engine's default.
    pub stop_signal: Option<String>,
    /// Seconds to wait for it to stop before the engine kills it.
    pub stop_timeout: Option<i64>,
}

/// The digest a container's configured reference is pinned to, if it is: such a container
/// is never updated (it may still be recreated to follow a container it depends on).
pub fn pinned(container: &ContainerInspectResponse) -> Option<String> {
    container
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .filter(|image| image.contains("@sha256:"))
}

/// Whether `container` can be recreated at all: not a Swarm task, not the agent's own
/// container (`own_id`), and a stop signal label that names a signal.
pub fn check(container: &ContainerInspectResponse, own_id: Option<&str>) -> Result<(), Refusal> {
    let id = container.id.as_deref().ok_or(Refusal::Incomplete("Id"))?;
    let config = container
        .config
        .as_ref()
        .ok_or(Refusal::Incomplete("Config"))?;
    let labels = config.labels.clone().unwrap_or_default();
    if labels.contains_key("com.docker.swarm.task.id")
        || labels.contains_key("com.docker.swarm.service.id")
    {
        return Err(Refusal::SwarmTask);
    }
    if own_id.is_some_and(|own| id.starts_with(own) || own.starts_with(id)) {
        return Err(Refusal::OwnContainer);
    }
    if container
        .host_config
        .as_ref()
        .and_then(|h| h.auto_remove)
        .unwrap_or(false)
    {
        return Err(Refusal::AutoRemove);
    }
    for label in [LABEL_STOP_SIGNAL, LABEL_STOP_SIGNAL_WATCHTOWER] {
        if let Some(value) = labels.get(label).filter(|v| !v.is_empty()) {
            StopSignal::parse(value)
                .map_err(|reason| Refusal::InvalidStopSignal { label, reason })?;
        }
    }
    Ok(())
}

/// The signal a container is stopped with: its stop-signal label (Ouroboros', else
/// Watchtower's) when it names a signal, else its own `StopSignal`; `None`: the engine's
/// default. ([`check`] refuses an update whose label names no signal.)
pub fn stop_signal(labels: &HashMap<String, String>, own: Option<&str>) -> Option<String> {
    [LABEL_STOP_SIGNAL, LABEL_STOP_SIGNAL_WATCHTOWER]
        .iter()
        .filter_map(|k| labels.get(*k))
        .find(|v| StopSignal::parse(v).is_ok())
        .cloned()
        .or_else(|| own.filter(|s| !s.is_empty()).map(str::to_owned))
}

/// Derives the create request for replacing `container` (made from `old_image`) with
/// `new_image` (a reference the engine has, e.g. `repo:tag` or `repo@sha256:…`).
/// `own_id` is the agent's own container id, if it runs in one. Refuses what [`check`]
/// refuses; a digest-pinned container is the caller's to refuse ([`pinned`]).
pub fn derive(
    container: &ContainerInspectResponse,
    old_image: &ImageInspect,
    new_image: &str,
    api: ApiVersion,
    own_id: Option<&str>,
) -> Result<CreatePlan, Refusal> {
    check(container, own_id)?;
    let id = container.id.as_deref().ok_or(Refusal::Incomplete("Id"))?;
    let name = container
        .name
        .as_deref()
        .ok_or(Refusal::Incomplete("Name"))?
        .trim_start_matches('/')
        .to_owned();
    let config = container
        .config
        .clone()
        .ok_or(Refusal::Incomplete("Config"))?;
    let all_labels = config.labels.clone().unwrap_or_default();
    let image = old_image.config.clone().unwrap_or_default();
    let short_id: String = id.chars().take(12).collect();
    let mut host_config = container.host_config.clone().unwrap_or_default();
    let network_mode = host_config.network_mode.clone().unwrap_or_default();
    let shares_namespace = network_mode.starts_with("container:");

    let stop_signal = stop_signal(&all_labels, config.stop_signal.as_deref());

    // Config minus the old image's defaults.
    let env = minus(config.env, image.env.as_deref());
    let labels = minus_map(config.labels, image.labels.as_ref());
    let exposed_ports = minus(config.exposed_ports, image.exposed_ports.as_deref());
    let volumes = minus(config.volumes, image.volumes.as_deref());
    let hostname = config
        .hostname
        .filter(|h| !h.is_empty() && *h != short_id && !shares_namespace);

    host_config.links = host_config
        .links
        .map(|links| links.iter().map(|l| rewrite_link(l)).collect());
    // Anonymous volumes are mounted into the replacement by name, so their data stays:
    // `--mount type=volume,target=…` ones get the old volume as their source, the others
    // (image VOLUMEs, `-v /path`) become binds by name.
    fill_anonymous_mount_sources(container, &mut host_config);
    let anonymous = anonymous_volumes(container, &host_config);
    if !anonymous.is_empty() {
        host_config
            .binds
            .get_or_insert_with(Vec::new)
            .extend(anonymous);
    }

    // Networks: user-set parts of each endpoint; the primary one at create time.
    let endpoints = container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let primary = match network_mode.as_str() {
        "" | "default" => Some("bridge".to_owned()),
        "host" | "none" => None,
        m if m.starts_with("container:") => None,
        m => Some(m.to_owned()),
    };
    let mut legacy_mac = None;
    let mut primary_endpoint = None;
    let mut extra_networks = Vec::new();
    let mut names: Vec<&String> = endpoints.keys().collect();
    names.sort();
    for net in names {
        let old = &endpoints[net];
        let user_mac = user_set_mac(old);
        let mut endpoint = EndpointSettings {
            ipam_config: old.ipam_config.clone().filter(has_static_address),
            links: old.links.clone().filter(|l| !l.is_empty()),
            aliases: Some(user_aliases(old, &short_id, &name)).filter(|a| !a.is_empty()),
            driver_opts: old.driver_opts.clone().filter(|o| !o.is_empty()),
            ..Default::default()
        };
        if Some(net) == primary.as_ref() {
            if per_endpoint_mac(api) {
                endpoint.mac_address = user_mac;
            } else {
                legacy_mac = user_mac;
            }
            primary_endpoint = Some(endpoint);
        } else {
            if per_endpoint_mac(api) {
                endpoint.mac_address = user_mac;
            }
            extra_networks.push((net.clone(), endpoint));
        }
    }
    let networking_config = match (primary, primary_endpoint) {
        (Some(net), Some(endpoint)) => Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(net, endpoint)])),
        }),
        _ => None,
    };

    let body = ContainerCreateBody {
        hostname,
        domainname: config.domainname.filter(|d| !d.is_empty()),
        user: same_as_image(config.user, image.user.as_ref()),
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env,
        cmd: same_as_image(config.cmd, image.cmd.as_ref()),
        healthcheck: healthcheck(config.healthcheck, image.healthcheck.as_ref()),
        args_escaped: None,
        image: Some(new_image.to_owned()),
        volumes,
        working_dir: same_as_image(config.working_dir, image.working_dir.as_ref()),
        entrypoint: same_as_image(config.entrypoint, image.entrypoint.as_ref()),
        network_disabled: config.network_disabled,
        on_build: None,
        labels,
        stop_signal: same_as_image(config.stop_signal, image.stop_signal.as_ref()),
        stop_timeout: config.stop_timeout,
        shell: same_as_image(config.shell, image.shell.as_ref()),
        host_config: Some(host_config),
        networking_config,
    };
    let was_running = container
        .state
        .as_ref()
        .and_then(|s| s.running)
        .unwrap_or(false);
    Ok(CreatePlan {
        name,
        body,
        legacy_mac,
        extra_networks,
        was_running,
        stop_signal,
        stop_timeout: config.stop_timeout,
    })
}

/// `value` unless it equals the image's (then the new image's default applies). Empty
/// strings and lists count as unset.
fn same_as_image<T: PartialEq + IsEmpty>(value: Option<T>, image: Option<&T>) -> Option<T> {
    match value {
        Some(v) if v.is_empty() => None,
        Some(v) if image == Some(&v) => None,
        other => other,
    }
}

trait IsEmpty {
    fn is_empty(&self) -> bool;
}

impl IsEmpty for String {
    fn is_empty(&self) -> bool {
        str::is_empty(self)
    }
}

impl IsEmpty for Vec<String> {
    fn is_empty(&self) -> bool {
        <[String]>::is_empty(self)
    }
}

/// The container's entries that the image does not have.
fn minus(values: Option<Vec<String>>, image: Option<&[String]>) -> Option<Vec<String>> {
    let image: HashSet<&String> = image.unwrap_or_default().iter().collect();
    let kept: Vec<String> = values
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !image.contains(v))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// The container's labels that the image does not have with the same value.
fn minus_map(
    values: Option<HashMap<String, String>>,
    image: Option<&HashMap<String, String>>,
) -> Option<HashMap<String, String>> {
    let kept: HashMap<String, String> = values
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| image.and_then(|i| i.get(k)) != Some(v))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Each healthcheck field the user set; fields equal to the old image's are left to the
/// new image.
fn healthcheck(value: Option<HealthConfig>, image: Option<&HealthConfig>) -> Option<HealthConfig> {
    let value = value?;
    let image = image.cloned().unwrap_or_default();
    fn keep<T: PartialEq>(v: Option<T>, i: Option<T>) -> Option<T> {
        if v == i { None } else { v }
    }
    let kept = HealthConfig {
        test: keep(value.test, image.test),
        interval: keep(value.interval, image.interval),
        timeout: keep(value.timeout, image.timeout),
        retries: keep(value.retries, image.retries),
        start_period: keep(value.start_period, image.start_period),
        start_interval: keep(value.start_interval, image.start_interval),
    };
    (kept != HealthConfig::default()).then_some(kept)
}

/// Gives `HostConfig.Mounts` volume entries without a source (anonymous) the name of the
/// volume the old container had there.
fn fill_anonymous_mount_sources(
    container: &ContainerInspectResponse,
    host_config: &mut bollard::models::HostConfig,
) {
    let volumes: HashMap<&str, &str> = container
        .mounts
        .iter()
        .flatten()
        .filter(|m| m.typ.as_deref() == Some("volume"))
        .filter_map(|m| Some((m.destination.as_deref()?, m.name.as_deref()?)))
        .collect();
    for mount in host_config.mounts.iter_mut().flatten() {
        let is_volume = mount.typ == Some(bollard::models::MountType::VOLUME);
        let anonymous = mount.source.as_deref().is_none_or(str::is_empty);
        if is_volume
            && anonymous
            && let Some(name) = mount.target.as_deref().and_then(|t| volumes.get(t))
        {
            mount.source = Some((*name).to_owned());
        }
    }
}

/// `NAME:/dest[:ro]` binds for the container's anonymous volumes: volume mounts whose
/// destination no bind or mount of the user's declares.
fn anonymous_volumes(
    container: &ContainerInspectResponse,
    host_config: &bollard::models::HostConfig,
) -> Vec<String> {
    let mut declared: HashSet<String> = HashSet::new();
    for bind in host_config.binds.iter().flatten() {
        if let Some(dest) = bind.split(':').nth(1) {
            declared.insert(dest.to_owned());
        }
    }
    for mount in host_config.mounts.iter().flatten() {
        if let Some(target) = &mount.target {
            declared.insert(target.clone());
        }
    }
    container
        .mounts
        .iter()
        .flatten()
        .filter(|m| m.typ.as_deref() == Some("volume"))
        .filter_map(|m| {
            let name = m.name.as_deref()?;
            let dest = m.destination.as_deref()?;
            if declared.contains(dest) {
                return None;
            }
            let read_only = if m.rw == Some(false) { ":ro" } else { "" };
            Some(format!("{name}:{dest}{read_only}"))
        })
        .collect()
}

/// `/db:/web/alias` (as inspect shows a legacy link) to `db:alias` (as create takes it).
fn rewrite_link(link: &str) -> String {
    match link.split_once(':') {
        Some((target, alias)) => {
            let target = target.trim_start_matches('/');
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            format!("{target}:{alias}")
        }
        None => link.trim_start_matches('/').to_owned(),
    }
}

/// Aliases the user gave, without the engine's own (the short id on API < 1.45; the
/// container's name).
fn user_aliases(endpoint: &EndpointSettings, short_id: &str, name: &str) -> Vec<String> {
    endpoint
        .aliases
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a != short_id && a != name)
        .collect()
}

fn has_static_address(ipam: &EndpointIpamConfig) -> bool {
    ipam.ipv4_address.as_ref().is_some_and(|a| !a.is_empty())
        || ipam.ipv6_address.as_ref().is_some_and(|a| !a.is_empty())
        || ipam.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
}

/// The endpoint's MAC if the user chose it. The engine derives its own from the IPv4 address
/// (`02:42:` and the four octets); copying one of those would collide once addresses move.
fn user_set_mac(endpoint: &EndpointSettings) -> Option<String> {
    let mac = endpoint.mac_address.clone().filter(|m| !m.is_empty())?;
    let generated = endpoint
        .ip_address
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| {
            let [a, b, c, d] = ip.octets();
            format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
        });
    if generated.as_deref() == Some(mac.to_ascii_lowercase().as_str()) {
        None
    } else {
        Some(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: &str) -> ContainerInspectResponse {
        serde_json::from_str(json).expect("fixture parses")
    }

    fn image() -> ImageInspect {
        serde_json::from_str(include_str!("fixtures/image-api1.41.json")).expect("fixture parses")
    }

    const API_41: ApiVersion = ApiVersion::new(1, 41);
    const API_44: ApiVersion = ApiVersion::new(1, 44);

    fn web() -> ContainerInspectResponse {
        container(include_str!("fixtures/web-api1.41.json"))
    }

    #[test]
    fn image_defaults_are_dropped_and_user_settings_kept() {
        let plan = derive(&web(), &image(), "new:2", API_41, None).unwrap();
        let b = &plan.body;
        assert_eq!(plan.name, "ouroboros-fx-web");
        assert_eq!(b.image.as_deref(), Some("new:2"));
        // ENV: the image's IMG_ONLY goes, the user's override and own variable stay.
        assert_eq!(b.env, Some(vec!["SHARED=user".into(), "USERVAR=1".into()]));
        // Labels likewise.
        let labels = b.labels.clone().unwrap();
        assert_eq!(labels.get("mine").map(String::as_str), Some("yes"));
        assert_eq!(labels.get("shared").map(String::as_str), Some("user"));
        assert!(!labels.contains_key("org.img"));
        // Only the port the user published stays; the image's EXPOSE and VOLUME go.
        assert_eq!(b.exposed_ports, Some(vec!["8080/udp".into()]));
        assert_eq!(b.volumes, None);
        // Cmd, workdir and healthcheck came from the image.
        assert_eq!(b.cmd, None);
        assert_eq!(b.working_dir, None);
        assert_eq!(b.healthcheck, None);
        assert_eq!(b.user, None);
        // The hostname was the old short id: the new container gets its own.
        assert_eq!(b.hostname, None);
        assert!(plan.was_running);
    }

    #[test]
    fn host_config_is_carried_over() {
        let old = web();
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        let hc = plan.body.host_config.unwrap();
        let old_hc = old.host_config.unwrap();
        assert_eq!(hc.memory, Some(64 * 1024 * 1024));
        assert_eq!(hc.cap_add, Some(vec!["CAP_NET_ADMIN".into()]));
        assert_eq!(hc.restart_policy, old_hc.restart_policy);
        assert_eq!(hc.port_bindings, old_hc.port_bindings);
        let udp = hc.port_bindings.unwrap()["8080/udp"].clone().unwrap();
        assert_eq!(udp[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(hc.network_mode.as_deref(), Some("ouroboros-fx-net"));
    }

    #[test]
    fn networks_keep_user_aliases_static_addresses_and_no_generated_mac() {
        let plan = derive(&web(), &image(), "new:2", API_41, None).unwrap();
        let endpoints = plan
            .body
            .networking_config
            .unwrap()
            .endpoints_config
            .unwrap();
        let primary = &endpoints["ouroboros-fx-net"];
        assert_eq!(primary.aliases, Some(vec!["web-alias".into()]));
        assert_eq!(
            primary
                .ipam_config
                .as_ref()
                .and_then(|i| i.ipv4_address.as_deref()),
            Some("172.31.250.10")
        );
        assert_eq!(primary.mac_address, None);
        assert_eq!(primary.network_id, None);
        assert_eq!(plan.legacy_mac, None, "engine-generated MAC copied");
        assert_eq!(plan.extra_networks.len(), 1);
        let (net, second) = &plan.extra_networks[0];
        assert_eq!(net, "ouroboros-fx-net2");
        assert_eq!(second.aliases, Some(vec!["second".into()]));
        assert_eq!(second.ipam_config, None);
    }

    #[test]
    fn a_user_set_mac_is_kept_in_config_before_api_1_44() {
        let old = container(include_str!("fixtures/mac-api1.41.json"));
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(plan.legacy_mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        // A hostname the user chose stays.
        assert_eq!(plan.body.hostname.as_deref(), Some("custom-host"));
    }

    #[test]
    fn api_1_44_sets_user_macs_per_endpoint_and_needs_no_alias_filtering() {
        let old = container(include_str!("fixtures/web-api1.44.json"));
        let plan = derive(&old, &image(), "new:2", API_44, None).unwrap();
        assert_eq!(plan.legacy_mac, None);
        let endpoints = plan
            .body
            .networking_config
            .unwrap()
            .endpoints_config
            .unwrap();
        let primary = &endpoints["ouroboros-fx-net"];
        assert_eq!(primary.aliases, Some(vec!["web-alias".into()]));
        assert_eq!(primary.mac_address, None);
        assert_eq!(
            primary.dns_names, None,
            "DNSNames are the engine's, not settings"
        );
        let (_, second) = &plan.extra_networks[0];
        assert_eq!(second.mac_address.as_deref(), Some("02:aa:00:00:00:02"));
        assert_eq!(second.aliases, Some(vec!["second".into()]));
    }

    #[test]
    fn a_namespace_sharing_dependant_drops_the_providers_hostname() {
        let old = container(include_str!("fixtures/side-api1.41.json"));
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(plan.body.hostname, None);
        assert_eq!(plan.body.networking_config, None);
        assert!(plan.extra_networks.is_empty());
        let mode = plan.body.host_config.unwrap().network_mode.unwrap();
        assert!(mode.starts_with("container:"), "{mode}");
    }

    #[test]
    fn anonymous_volumes_are_mounted_by_name_and_declared_ones_left_alone() {
        let old = web();
        let anon = old.mounts.clone().unwrap_or_default();
        assert_eq!(anon.len(), 1, "fixture has the image's /data volume");
        let name = anon[0].name.clone().unwrap();
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        let binds = plan.body.host_config.unwrap().binds.unwrap();
        assert_eq!(binds, vec![format!("{name}:/data")]);

        let mut declared = web();
        if let Some(hc) = declared.host_config.as_mut() {
            hc.binds = Some(vec!["mydata:/data".into()]);
        }
        let plan = derive(&declared, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(
            plan.body.host_config.unwrap().binds,
            Some(vec!["mydata:/data".into()])
        );
    }

    #[test]
    fn anonymous_mount_entries_get_the_old_volume_as_source() {
        let mut old = web();
        let name = old.mounts.clone().unwrap()[0].name.clone().unwrap();
        if let Some(hc) = old.host_config.as_mut() {
            hc.mounts = Some(vec![bollard::models::Mount {
                target: Some("/data".into()),
                typ: Some(bollard::models::MountType::VOLUME),
                ..Default::default()
            }]);
        }
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        let hc = plan.body.host_config.unwrap();
        assert_eq!(hc.mounts.unwrap()[0].source.as_deref(), Some(name.as_str()));
        assert_eq!(hc.binds, None, "the volume would be mounted twice");
    }

    #[test]
    fn legacy_links_are_rewritten_for_create() {
        assert_eq!(rewrite_link("/ouroboros-db:/web/db"), "ouroboros-db:db");
        assert_eq!(rewrite_link("/db:/web/db"), "db:db");
        assert_eq!(rewrite_link("db:alias"), "db:alias");
        let mut old = web();
        if let Some(hc) = old.host_config.as_mut() {
            hc.links = Some(vec!["/db:/ouroboros-fx-web/database".into()]);
        }
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(
            plan.body.host_config.unwrap().links,
            Some(vec!["db:database".into()])
        );
    }

    #[test]
    fn user_healthcheck_fields_stay_and_image_ones_go() {
        let mut old = web();
        if let Some(c) = old.config.as_mut() {
            let mut hc = c.healthcheck.clone().unwrap();
            hc.retries = Some(7);
            c.healthcheck = Some(hc);
        }
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(
            plan.body.healthcheck,
            Some(HealthConfig {
                retries: Some(7),
                ..Default::default()
            })
        );
    }

    #[test]
    fn stop_signal_comes_from_labels_first() {
        let mut old = web();
        if let Some(c) = old.config.as_mut() {
            c.stop_signal = Some("SIGQUIT".into());
            c.labels
                .get_or_insert_with(HashMap::new)
                .insert(LABEL_STOP_SIGNAL_WATCHTOWER.into(), "SIGINT".into());
        }
        let plan = derive(&old, &image(), "new:2", API_41, None).unwrap();
        assert_eq!(plan.stop_signal.as_deref(), Some("SIGINT"));
        // The container's own StopSignal, set by the user, is kept in the new config too.
        assert_eq!(plan.body.stop_signal.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn swarm_and_own_containers_are_refused_and_pinned_ones_told() {
        let mut pinned_one = web();
        if let Some(c) = pinned_one.config.as_mut() {
            c.image = Some("app@sha256:abc".into());
        }
        assert_eq!(pinned(&pinned_one), Some("app@sha256:abc".into()));
        assert_eq!(super::pinned(&web()), None);
        // A pinned container can still be recreated (as a dependant) on its own reference.
        assert!(derive(&pinned_one, &image(), "app@sha256:abc", API_41, None).is_ok());
        let mut task = web();
        if let Some(c) = task.config.as_mut() {
            c.labels
                .get_or_insert_with(HashMap::new)
                .insert("com.docker.swarm.task.id".into(), "t".into());
        }
        assert_eq!(
            derive(&task, &image(), "x", API_41, None),
            Err(Refusal::SwarmTask)
        );
        let own = web().id.unwrap();
        assert_eq!(
            derive(&web(), &image(), "x", API_41, Some(&own[..12])),
            Err(Refusal::OwnContainer)
        );
    }

    #[test]
    fn the_stop_signal_is_the_first_valid_label_else_the_containers_own() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            stop_signal(&labels(&[(LABEL_STOP_SIGNAL, "SIGUSR1")]), Some("SIGQUIT")),
            Some("SIGUSR1".into())
        );
        assert_eq!(
            stop_signal(
                &labels(&[
                    (LABEL_STOP_SIGNAL, ""),
                    (LABEL_STOP_SIGNAL_WATCHTOWER, "SIGINT")
                ]),
                None
            ),
            Some("SIGINT".into())
        );
        assert_eq!(
            stop_signal(&labels(&[(LABEL_STOP_SIGNAL, "SIGFOO")]), Some("SIGQUIT")),
            Some("SIGQUIT".into())
        );
        assert_eq!(stop_signal(&labels(&[]), Some("")), None);
    }

    #[test]
    fn a_stop_signal_label_must_name_a_signal() {
        for (label, value, ok) in [
            (LABEL_STOP_SIGNAL, "SIGUSR1", true),
            (LABEL_STOP_SIGNAL_WATCHTOWER, "10", true),
            (LABEL_STOP_SIGNAL, "SIGFOO", false),
            (LABEL_STOP_SIGNAL_WATCHTOWER, "SIGTERMINATE", false),
        ] {
            let mut old = web();
            if let Some(c) = old.config.as_mut() {
                c.labels
                    .get_or_insert_with(HashMap::new)
                    .insert(label.into(), value.into());
            }
            match derive(&old, &image(), "new:2", API_41, None) {
                Ok(plan) => {
                    assert!(ok, "{value} accepted");
                    assert_eq!(plan.stop_signal.as_deref(), Some(value));
                }
                Err(e) => {
                    assert!(!ok, "{value} refused: {e}");
                    let text = e.to_string();
                    assert!(text.contains(label) && text.contains(value), "{text}");
                    assert_eq!(check(&old, None), Err(e));
                }
            }
        }
    }
}
