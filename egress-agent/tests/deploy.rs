//! The manifests in deploy/ parse as the Kubernetes types they claim to be and say what the
//! README says: least-privilege RBAC, an unprivileged DaemonSet with the capabilities it needs,
//! the Mailu example policy doing what it should.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use egress_agent::{
    config::AgentConfig,
    datapath::ip4,
    model::{self, EgressGatewayPolicy},
};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize;

fn deploy(file: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn docs(file: &str) -> Vec<serde_norway::Value> {
    let text = deploy(file);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_norway::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let doc = docs(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    serde_norway::from_value(doc).unwrap_or_else(|e| panic!("{kind} in {file}: {e}"))
}

#[test]
fn rbac_is_least_privilege() {
    let role: ClusterRole = of_kind("rbac.yaml", "ClusterRole");
    let mut grants = BTreeSet::new();
    for r in role.rules.unwrap_or_default() {
        for g in r.api_groups.unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    grants.insert(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    let want: BTreeSet<String> = [
        "/pods:get",
        "/pods:list",
        "/pods:watch",
        "/namespaces:get",
        "/namespaces:list",
        "/namespaces:watch",
        "/nodes:get",
        "/nodes:list",
        "/nodes:watch",
        "egress-gateway.io/egressgatewaypolicies:get",
        "egress-gateway.io/egressgatewaypolicies:list",
        "egress-gateway.io/egressgatewaypolicies:watch",
        "egress-gateway.io/egressgatewaypolicies/status:patch",
        "networking.k8s.io/servicecidrs:get",
        "networking.k8s.io/servicecidrs:list",
        "networking.k8s.io/servicecidrs:watch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(grants, want);
    let sa: ServiceAccount = of_kind("rbac.yaml", "ServiceAccount");
    let binding: ClusterRoleBinding = of_kind("rbac.yaml", "ClusterRoleBinding");
    let subject = &binding.subjects.expect("a subject")[0];
    assert_eq!(Some(subject.name.clone()), sa.metadata.name);
    assert_eq!(subject.namespace, sa.metadata.namespace);
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
}

#[test]
fn the_daemonset_is_unprivileged_with_the_capabilities_it_needs() {
    let ds: DaemonSet = of_kind("daemonset.yaml", "DaemonSet");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("egress-gateway-agent")
    );
    let c = &pod.containers[0];
    let sc = c.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let add: BTreeSet<_> = caps.add.unwrap_or_default().into_iter().collect();
    assert_eq!(
        add,
        ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into()
    );
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        node_name,
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .expect("the host's bpffs");
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == bpffs.name && m.mount_path == "/sys/fs/bpf"));
    // The root file system is read-only: the state directory must be a volume.
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == egress_agent::agent::DEFAULT_STATE_DIR));
    let args = c.args.clone().unwrap_or_default();
    assert!(args.contains(&"--kubernetes".to_owned()), "{args:?}");
    let probe =
        |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref()?.http_get.as_ref()?.path.clone();
    assert_eq!(probe(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe(&c.readiness_probe).as_deref(), Some("/readyz"));

    // The config file it is given is the ConfigMap's, and it parses.
    let cfg_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config PATH");
    let cm: ConfigMap = of_kind("config.yaml", "ConfigMap");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| cfg_path.starts_with(&m.mount_path))
        .expect("the config path is mounted");
    let key = cfg_path
        .trim_start_matches(&mount.mount_path)
        .trim_start_matches('/');
    let text = &cm.data.expect("data")[key];
    let cfg = AgentConfig::parse(text).expect("the ConfigMap's configuration parses");
    assert!(cfg.cluster.nodes.is_empty() && cfg.cluster.policies.is_empty());
}

#[test]
fn the_mailu_policy_sends_postfix_through_the_labelled_gateway_as_5_75_247_168() {
    let p: EgressGatewayPolicy = of_kind("example-policy-mailu.yaml", "EgressGatewayPolicy");
    let node = |name: &str, ip: [u8; 4], gw: bool| model::Node {
        name: name.into(),
        labels: if gw {
            [("egress-gateway".to_owned(), "true".to_owned())].into()
        } else {
            Default::default()
        },
        ip: Some(ip.into()),
        addresses: if gw {
            vec![Ipv4Addr::new(5, 75, 247, 168)]
        } else {
            vec![]
        },
        uplink: None,
        pod_cidrs: vec![],
        ..Default::default()
    };
    let pod = |ns: &str, name: &str, ip: [u8; 4], labels: &[(&str, &str)]| model::Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        node: Some("w1".into()),
        ip: Some(ip.into()),
        host_network: false,
        uid: None,
    };
    let cluster = model::Cluster {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        cluster_cidrs6: vec![],
        nodes: vec![
            node("gw", [10, 0, 0, 2], true),
            node("w1", [10, 0, 0, 3], false),
        ],
        namespaces: vec![],
        pods: vec![
            pod(
                "mailu",
                "postfix",
                [10, 244, 1, 2],
                &[("app.kubernetes.io/component", "postfix")],
            ),
            pod(
                "mailu",
                "postfix-old",
                [10, 244, 1, 3],
                &[("app", "mailu-postfix")],
            ),
            pod(
                "mailu",
                "imap",
                [10, 244, 1, 4],
                &[("app.kubernetes.io/component", "dovecot")],
            ),
            pod(
                "other",
                "postfix",
                [10, 244, 1, 5],
                &[("app.kubernetes.io/component", "postfix")],
            ),
        ],
        policies: vec![egress_agent::kube_source::policy(&p)],
    };
    let m = model::compute(&cluster, "w1", &model::LocalFacts::default());
    let st = &m.status["mailu-postfix"];
    assert_eq!(st.gateway_node.as_deref(), Some("gw"));
    assert_eq!(st.egress_ip.as_deref(), Some("5.75.247.168"));
    assert_eq!(st.selected_pods, 2);
    // Every condition holds, but one: the reference deployment sends as the gateway node's own
    // address, which its own traffic and unselected pods share (a warning, not an error).
    assert!(
        st.conditions
            .iter()
            .all(|c| c.status == "True"
                || (c.type_ == "EgressIPDedicated" && c.reason == "NodeAddress")),
        "{st:?}"
    );
    let selected: Vec<_> = m
        .desired
        .pods
        .iter()
        .filter(|p| p.policy_id.is_some())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(selected, ["mailu/postfix", "mailu/postfix-old"]);
    let via = m.desired.policies[&(st.datapath_id.unwrap(), "0.0.0.0/0".parse().unwrap())];
    assert_eq!(via.egress_ip4, ip4(Ipv4Addr::new(5, 75, 247, 168)));
}

#[test]
fn kustomization_lists_every_manifest_and_they_exist() {
    let k = &docs("kustomization.yaml")[0];
    let resources: Vec<&str> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for f in [
        "crd.yaml",
        "namespace.yaml",
        "rbac.yaml",
        "config.yaml",
        "daemonset.yaml",
        "example-policy-mailu.yaml",
    ] {
        assert!(
            resources.contains(&f),
            "{f} missing from kustomization.yaml"
        );
        assert!(!docs(f).is_empty(), "{f} is empty");
    }
}
