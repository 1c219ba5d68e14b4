//! Policy status, written in three places: the log (a line per policy whose status changed),
//! the state directory (`policies.json`, read by `inspect policies`), and, with the Kubernetes
//! source, the `status` subresource of each `EgressGatewayPolicy` (server-side apply, written
//! by one agent per policy).

use std::{collections::BTreeMap, path::Path};

use kube::{
    api::{Patch, PatchParams},
    Api, Client, Resource, ResourceExt,
};
use tracing::{info, warn};

use crate::{
    kube_source::{KubeSource, KubeSourceError},
    model::{self, ConditionType, EgressGatewayPolicy, PolicyStatus, Reason, Status},
};

/// The policy status file in the state directory.
pub const STATUS_FILE: &str = "policies.json";

/// The field manager of the agent's server-side applies.
pub const FIELD_MANAGER: &str = "egress-gateway-agent";

/// Logs the policies whose status changed and saves the new status in `state_dir` (a failure
/// to save is logged: the datapath matters more than the file).
pub fn record_local(
    state_dir: &Path,
    old: &BTreeMap<String, PolicyStatus>,
    new: &BTreeMap<String, PolicyStatus>,
) {
    log_status(old, new);
    if let Err(e) = save_status(state_dir, new) {
        warn!("writing {}: {e}", state_dir.join(STATUS_FILE).display());
    }
}

/// What a node's datapath is missing: says why no policy can be Ready here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathFault {
    /// The node whose datapath it is.
    pub node: String,
    /// What failed (loading, attaching, a map), with the kernel's answer.
    pub what: String,
    /// The running kernel's release.
    pub kernel: String,
}

impl DatapathFault {
    /// The fault behind `e`, when it is the datapath's (an attachment, a map write, a
    /// load): other errors (the node unknown to the source, no underlay) are not.
    pub fn of(e: &anyhow::Error, node: &str) -> Option<DatapathFault> {
        e.chain()
            .any(|c| c.is::<crate::datapath::DatapathError>())
            .then(|| DatapathFault {
                node: node.to_owned(),
                what: format!("{e:#}"),
                kernel: crate::datapath::kernel_release(),
            })
    }

    /// The condition message.
    pub fn message(&self) -> String {
        format!(
            "the datapath on node {} is not there (kernel {}): {}",
            self.node, self.kernel, self.what
        )
    }
}

/// Never Ready over a datapath that is not there: every policy the model calls Ready becomes
/// `Ready=False` with reason `DatapathUnavailable`. A policy that is not Ready for its own
/// reason (an invalid CIDR, no gateway) keeps that reason: a working datapath would not make
/// it Ready.
pub fn datapath_unavailable(status: &mut BTreeMap<String, PolicyStatus>, fault: &DatapathFault) {
    for s in status.values_mut() {
        for c in &mut s.conditions {
            if c.is(ConditionType::Ready) && c.status == Status::True.as_str() {
                *c = model::condition::cond(
                    ConditionType::Ready,
                    false,
                    Reason::DatapathUnavailable,
                    fault.message(),
                );
            }
        }
    }
}

/// Writes the policy status for `inspect policies` (write and rename: never half a file).
pub fn save_status(dir: &Path, status: &BTreeMap<String, PolicyStatus>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, dir.join(STATUS_FILE))?;
    Ok(())
}

/// Logs each policy whose status changed.
pub fn log_status(old: &BTreeMap<String, PolicyStatus>, new: &BTreeMap<String, PolicyStatus>) {
    for (name, s) in new {
        if old.get(name) == Some(s) {
            continue;
        }
        let ready = s.conditions.iter().find(|c| c.is(ConditionType::Ready));
        info!(
            policy = %name,
            id = s.datapath_id.unwrap_or(0),
            ready = ready.map_or(Status::Unknown.as_str(), |c| c.status.as_str()),
            reason = ready.map_or("", |c| c.reason.as_str()),
            gateway = s.gateway_node.as_deref().unwrap_or("-"),
            egress_ip = s.egress_ip.as_deref().unwrap_or("-"),
            pods = s.selected_pods,
            "policy status"
        );
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        info!(policy = %name, "policy removed");
    }
}

/// Writes the status of the policies this node is responsible for, where it changed.
pub async fn write_kube(
    client: &Client,
    source: &KubeSource,
    cluster: &model::Cluster,
    node: &str,
    status: &BTreeMap<String, PolicyStatus>,
) {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for obj in source.policy_objects() {
        let name = obj.name_any();
        let Some(new) = status.get(&name) else {
            continue;
        };
        if !writes_status(new, cluster, node) || !status_differs(new, obj.status.as_ref()) {
            continue;
        }
        let s = with_transition_times(new.clone(), obj.status.as_ref(), &now);
        match apply_status(client, &name, &s).await {
            Ok(()) => info!(policy = %name, "status written"),
            Err(e) => warn!(policy = %name, "writing status: {e}"),
        }
    }
}

/// Which agent writes a policy's status: the gateway node's; with no gateway, the first node
/// by name (so that a broken policy still reports why).
pub fn writes_status(status: &PolicyStatus, cluster: &model::Cluster, node: &str) -> bool {
    match &status.gateway_node {
        Some(gw) => gw == node,
        None => cluster.nodes.iter().map(|n| n.name.as_str()).min() == Some(node),
    }
}

/// Carries `lastTransitionTime` over from `old` for conditions whose status did not change,
/// and sets `now` for the others; likewise the active gateway's `lastTransition`, new (at
/// `now`) when the active gateway changed.
pub fn with_transition_times(
    mut new: PolicyStatus,
    old: Option<&PolicyStatus>,
    now: &str,
) -> PolicyStatus {
    new.last_transition = model::group::transition(old, &new).map(|mut t| {
        if t.time.is_none() {
            t.time = Some(now.to_owned());
        }
        t
    });
    for c in &mut new.conditions {
        let prev = old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match prev {
            Some(p) if p.status == c.status && p.last_transition_time.is_some() => {
                p.last_transition_time.clone()
            }
            _ => Some(now.to_owned()),
        };
    }
    new
}

/// True when `a` and `b` differ in more than transition times.
pub fn status_differs(a: &PolicyStatus, b: Option<&PolicyStatus>) -> bool {
    let strip = |s: &PolicyStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s.last_transition = None;
        s
    };
    b.is_none_or(|b| strip(a) != strip(b))
}

/// Writes `status` with server-side apply (field manager `egress-gateway-agent`, forced: the
/// agent owns the status).
pub async fn apply_status(
    client: &Client,
    name: &str,
    status: &PolicyStatus,
) -> Result<(), KubeSourceError> {
    let api: Api<EgressGatewayPolicy> = Api::all(client.clone());
    let patch = serde_json::json!({
        "apiVersion": EgressGatewayPolicy::api_version(&()),
        "kind": EgressGatewayPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_change_only_with_the_status() {
        let c = |s: &str| model::PolicyCondition {
            type_: "Ready".into(),
            status: s.into(),
            reason: "X".into(),
            ..Default::default()
        };
        let old = with_transition_times(
            PolicyStatus {
                conditions: vec![c("True")],
                ..Default::default()
            },
            None,
            "t1",
        );
        let same = with_transition_times(
            PolicyStatus {
                conditions: vec![c("True")],
                selected_pods: 3,
                ..Default::default()
            },
            Some(&old),
            "t2",
        );
        assert_eq!(
            same.conditions[0].last_transition_time.as_deref(),
            Some("t1")
        );
        assert!(status_differs(&same, Some(&old)));
        let flipped = with_transition_times(
            PolicyStatus {
                conditions: vec![c("False")],
                ..Default::default()
            },
            Some(&old),
            "t3",
        );
        assert_eq!(
            flipped.conditions[0].last_transition_time.as_deref(),
            Some("t3")
        );
        let mut again = old.clone();
        again.conditions[0].last_transition_time = Some("t9".into());
        assert!(!status_differs(&again, Some(&old)));
    }

    #[test]
    fn the_gateway_transition_is_stamped_when_the_active_gateway_changes_and_kept_after() {
        let st = |gw: &str, healthy: &[&str]| PolicyStatus {
            gateway_node: Some(gw.into()),
            gateway_group: vec!["a".into(), "b".into()],
            healthy_gateways: healthy.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let first = with_transition_times(st("a", &["a", "b"]), None, "t1");
        assert_eq!(first.last_transition, None);
        let failed = with_transition_times(st("b", &["b"]), Some(&first), "t2");
        let t = failed.last_transition.clone().expect("a transition");
        assert_eq!(
            (
                t.from.as_deref(),
                t.to.as_deref(),
                t.reason.as_str(),
                t.time.as_deref()
            ),
            (Some("a"), Some("b"), "GatewayUnhealthy", Some("t2"))
        );
        let later = with_transition_times(st("b", &["a", "b"]), Some(&failed), "t3");
        assert_eq!(later.last_transition, failed.last_transition);
        // The transition alone is no reason to write.
        let mut bare = later.clone();
        bare.last_transition = None;
        assert!(!status_differs(&bare, Some(&later)));
    }

    #[test]
    fn the_gateway_writes_status_or_else_the_first_node() {
        let c = model::Cluster {
            nodes: vec![
                model::Node {
                    name: "b".into(),
                    ..Default::default()
                },
                model::Node {
                    name: "a".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut s = PolicyStatus::default();
        assert!(writes_status(&s, &c, "a"));
        assert!(!writes_status(&s, &c, "b"));
        s.gateway_node = Some("b".into());
        assert!(writes_status(&s, &c, "b"));
        assert!(!writes_status(&s, &c, "a"));
    }

    #[test]
    fn a_missing_datapath_makes_ready_policies_not_ready_and_keeps_other_reasons() {
        let ready = |ok: bool, reason: Reason| PolicyStatus {
            conditions: vec![model::condition::cond(ConditionType::Ready, ok, reason, "")],
            ..Default::default()
        };
        let mut st = BTreeMap::from([
            ("mail".to_owned(), ready(true, Reason::Active)),
            ("broken".to_owned(), ready(false, Reason::InvalidCIDR)),
        ]);
        let fault = DatapathFault {
            node: "worker1".into(),
            what: "loading the eBPF object: no BTF".into(),
            kernel: "5.4.0".into(),
        };
        datapath_unavailable(&mut st, &fault);
        let c = &st["mail"].conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DatapathUnavailable")
        );
        assert!(c.message.contains("worker1") && c.message.contains("5.4.0"));
        assert!(c.message.contains("no BTF"), "{}", c.message);
        assert_eq!(st["broken"].conditions[0].reason, "InvalidCIDR");
    }

    #[test]
    fn the_status_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("egw-status-{}", std::process::id()));
        let mut st = BTreeMap::new();
        st.insert("mail".to_owned(), PolicyStatus::default());
        save_status(&dir, &st).expect("save");
        let back: BTreeMap<String, PolicyStatus> =
            serde_json::from_slice(&std::fs::read(dir.join(STATUS_FILE)).expect("read"))
                .expect("json");
        assert_eq!(back, st);
        assert!(!dir.join(format!(".{STATUS_FILE}.tmp")).exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
