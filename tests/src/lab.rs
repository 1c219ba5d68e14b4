//! The lab: a cluster made of network namespaces.
//!
//! ```text
//!  pods --veth--> node (gateway | worker1 | worker2 ...) --eth0--+
//!                                                                 br0 (isp) --inet0-- inet host
//!  192.0.2.0/24 node underlay                                     198.51.100.0/24 "internet"
//! ```
//! - isp: 192.0.2.1 on br0 (one veth per node), 198.51.100.1 towards the internet host; routes,
//!   no NAT.
//! - internet host: 198.51.100.10.
//! - gateway node 192.0.2.10, workers 192.0.2.11, .12, ... Node i has pod CIDR 10.244.i.0/24
//!   (gateway: 10.244.0.0/24), routes to the other nodes' pod CIDRs (host-gw), and masquerades
//!   pod traffic leaving the cluster, as a CNI does.
//! - pods are wired Calico-style: pod `eth0` 10.244.i.x/32, default via 169.254.1.1; the node
//!   side veth `lxcN` answers ARP by proxy and has a /32 route to the pod.
//!
//! Every name is unique per lab (`egwlab-<id>-<role>`) and every address lives inside the
//! lab's own namespaces, so two labs run side by side. Dropping the `Lab` removes it; after a
//! crash `down` finds leftovers by prefix.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Prefix of every lab namespace.
pub const PREFIX: &str = "egwlab-";
/// Lab metadata and bpffs pin directories.
pub const RUN_DIR: &str = "/run/egress-lab";

pub const ISP_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ISP_INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Secondary address on the gateway's uplink, usable as a dedicated egress IP.
pub const EXTRA_EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub workers: usize,
    pub pods_per_node: usize,
    pub pod_mtu: u32,
    pub underlay_mtu: u32,
    /// MTU of the isp's internet-side link (lower it to make the isp send frag-needed).
    pub internet_mtu: u32,
    /// Add `EXTRA_EGRESS_IP` to the gateway's uplink.
    pub extra_egress_ip: bool,
    /// Turn checksum offloads off on every veth, so nothing hides a wrong checksum.
    pub offloads_off: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            workers: 2,
            pods_per_node: 1,
            pod_mtu: 1500,
            underlay_mtu: 1500,
            internet_mtu: 1500,
            extra_egress_ip: true,
            offloads_off: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
    /// Pod CIDR 10.244.<index>.0/24.
    pub index: u8,
}

impl Node {
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub node: String,
    /// Node-side veth.
    pub host_veth: String,
}

#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub struct Lab {
    id: String,
    spec: LabSpec,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    isp: Host,
    internet: Host,
    keep: bool,
    next_veth: u32,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with a clear message unless running as root (for tests).
pub fn require_root() {
    if !is_root() {
        panic!("lab tests need root (CAP_NET_ADMIN, CAP_BPF): run them as root");
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the root namespace.
fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// `ip -n NS <args>`.
fn ipn(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// Runs a command inside a namespace; the error carries its stderr.
pub fn exec(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// A `Command` that will run inside namespace `ns` (network namespace only; the mount
/// namespace is kept, so /sys/fs/bpf and the file system stay as they are).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let f =
        fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    let mut c = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open until exec (owned by the closure).
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// Starts a process inside a namespace.
pub fn spawn(ns: &str, args: &[&str]) -> Result<Child> {
    Ok(command_in(ns, args[0])?.args(&args[1..]).spawn()?)
}

/// Runs `f` on a new thread inside namespace `ns`: sockets it creates live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only (CLONE_NEWNET affects the calling thread).
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn sysctl(ns: &str, kv: &[&str]) -> Result<()> {
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend_from_slice(kv);
    exec(ns, &args).map(|_| ())
}

fn new_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut r = [0u8; 2];
    // Random bits so that labs of separate processes never collide.
    let _ =
        fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r));
    format!(
        "{:x}{:x}{:02x}{:02x}",
        std::process::id() & 0xfff,
        n,
        r[0],
        r[1]
    )
}

impl Lab {
    /// Builds a lab. Fails with a clear message when not root.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        if !is_root() {
            bail!("the lab needs root (CAP_NET_ADMIN): run as root");
        }
        let id = new_id();
        let ns = |role: &str| format!("{PREFIX}{id}-{role}");
        let mut lab = Lab {
            id: id.clone(),
            spec: spec.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
            isp: Host {
                ns: ns("isp"),
                ip: ISP_UNDERLAY,
            },
            internet: Host {
                ns: ns("inet"),
                ip: INTERNET_HOST,
            },
            keep: false,
            next_veth: 0,
        };
        // From here on, Drop cleans up whatever was created.
        lab.build().with_context(|| format!("building lab {id}"))?;
        Ok(lab)
    }

    fn add_ns(&self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        ipn(name, &["link", "set", "lo", "up"])?;
        sysctl(
            name,
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )
    }

    fn offload_off(&self, ns: &str, dev: &str) -> Result<()> {
        if self.spec.offloads_off {
            exec(ns, &["ethtool", "-K", dev, "tx", "off", "rx", "off"])?;
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        fs::create_dir_all(self.dir())?;
        let isp = self.isp.ns.clone();
        let inet = self.internet.ns.clone();
        let mtu = self.spec.underlay_mtu.to_string();
        // isp router
        self.add_ns(&isp)?;
        sysctl(&isp, &["net.ipv4.ip_forward=1"])?;
        ipn(&isp, &["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
        ipn(&isp, &["addr", "add", "192.0.2.1/24", "dev", "br0"])?;
        ipn(&isp, &["link", "set", "br0", "up"])?;
        // internet host
        self.add_ns(&inet)?;
        let imtu = self.spec.internet_mtu.to_string();
        ipn(
            &isp,
            &[
                "link", "add", "inet0", "mtu", &imtu, "type", "veth", "peer", "name", "eth0",
                "mtu", &imtu, "netns", &inet,
            ],
        )?;
        ipn(&isp, &["addr", "add", "198.51.100.1/24", "dev", "inet0"])?;
        ipn(&isp, &["link", "set", "inet0", "up"])?;
        ipn(&inet, &["addr", "add", "198.51.100.10/24", "dev", "eth0"])?;
        ipn(&inet, &["link", "set", "eth0", "up"])?;
        ipn(&inet, &["route", "add", "default", "via", "198.51.100.1"])?;
        self.offload_off(&isp, "inet0")?;
        self.offload_off(&inet, "eth0")?;

        // nodes
        let mut names = vec!["gateway".to_owned()];
        names.extend((1..=self.spec.workers).map(|i| format!("worker{i}")));
        for (i, name) in names.iter().enumerate() {
            let node = Node {
                name: name.clone(),
                ns: format!("{PREFIX}{}-{name}", self.id),
                underlay_ip: Ipv4Addr::new(192, 0, 2, 10 + i as u8),
                uplink: "eth0".into(),
                index: i as u8,
            };
            self.add_node(&node)?;
            self.nodes.push(node);
        }
        for n in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.name != n.name) {
                ipn(
                    &n.ns,
                    &[
                        "route",
                        "add",
                        &other.pod_cidr(),
                        "via",
                        &other.underlay_ip.to_string(),
                    ],
                )?;
            }
        }
        if self.spec.extra_egress_ip {
            let gw = self.nodes[0].ns.clone();
            ipn(&gw, &["addr", "add", "192.0.2.100/24", "dev", "eth0"])?;
        }
        for n in self.nodes.clone() {
            for k in 0..self.spec.pods_per_node {
                self.add_pod(&n.name, &format!("pod-{}-{k}", n.name))?;
            }
        }
        self.write_meta()
    }

    fn add_node(&self, n: &Node) -> Result<()> {
        let isp = &self.isp.ns;
        let mtu = self.spec.underlay_mtu.to_string();
        self.add_ns(&n.ns)?;
        sysctl(&n.ns, &["net.ipv4.ip_forward=1"])?;
        let port = format!("n{}", n.index);
        ipn(
            isp,
            &[
                "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &n.ns,
            ],
        )?;
        ipn(isp, &["link", "set", &port, "master", "br0", "up"])?;
        ipn(
            &n.ns,
            &[
                "addr",
                "add",
                &format!("{}/24", n.underlay_ip),
                "dev",
                "eth0",
            ],
        )?;
        ipn(&n.ns, &["link", "set", "eth0", "up"])?;
        ipn(&n.ns, &["route", "add", "default", "via", "192.0.2.1"])?;
        self.offload_off(isp, &port)?;
        self.offload_off(&n.ns, "eth0")?;
        // The CNI's masquerade of pod traffic leaving the cluster.
        let rules = "table ip lab_cni {\n\
             chain postrouting {\n\
               type nat hook postrouting priority srcnat; policy accept;\n\
               ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 oifname \"eth0\" masquerade\n\
             }\n\
           }\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", &n.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {}: {}",
                n.ns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Adds a pod to a node; returns it.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        let n = self.node(node).clone();
        let count = self.pods.iter().filter(|p| p.node == node).count();
        let ip = Ipv4Addr::new(10, 244, n.index, 2 + count as u8);
        self.next_veth += 1;
        let veth = format!("lxc{}", self.next_veth);
        let pod = Pod {
            name: name.to_owned(),
            ns: format!("{PREFIX}{}-{name}", self.id),
            ip,
            node: node.to_owned(),
            host_veth: veth.clone(),
        };
        let mtu = self.spec.pod_mtu.to_string();
        self.add_ns(&pod.ns)?;
        ipn(
            &n.ns,
            &[
                "link", "add", &veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &pod.ns,
            ],
        )?;
        ipn(&n.ns, &["link", "set", &veth, "up"])?;
        sysctl(
            &n.ns,
            &[
                &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
                &format!("net.ipv4.neigh.{veth}.proxy_delay=0"),
            ],
        )?;
        ipn(&n.ns, &["route", "add", &format!("{ip}/32"), "dev", &veth])?;
        ipn(
            &pod.ns,
            &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        )?;
        ipn(&pod.ns, &["link", "set", "eth0", "up"])?;
        ipn(
            &pod.ns,
            &[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        )?;
        ipn(&pod.ns, &["route", "add", "default", "via", "169.254.1.1"])?;
        self.offload_off(&n.ns, &veth)?;
        self.offload_off(&pod.ns, "eth0")?;
        self.pods.push(pod.clone());
        self.write_meta()?;
        Ok(pod)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in lab {}", self.id))
    }
    pub fn gateway(&self) -> &Node {
        &self.nodes[0]
    }
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in lab {}", self.id))
    }
    pub fn internet(&self) -> &Host {
        &self.internet
    }
    pub fn isp(&self) -> &Host {
        &self.isp
    }

    /// This lab's directory: metadata, and where agents pin (`bpf/<node>`).
    pub fn dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.id)
    }

    /// Pin root for an agent on `node`.
    pub fn pin_root(&self, node: &str) -> PathBuf {
        self.dir().join("bpf").join(node)
    }

    fn write_meta(&self) -> Result<()> {
        fs::write(self.dir().join("describe.txt"), self.describe())?;
        Ok(())
    }

    /// Namespaces, addresses, and how to look around.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "lab {}", self.id);
        let _ = writeln!(
            s,
            "  {:<10} {:<30} 192.0.2.1 (nodes), 198.51.100.1 (internet)",
            "isp", self.isp.ns
        );
        let _ = writeln!(
            s,
            "  {:<10} {:<30} {}",
            "internet", self.internet.ns, INTERNET_HOST
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "  {:<10} {:<30} {} uplink {}, pods {}",
                n.name,
                n.ns,
                n.underlay_ip,
                n.uplink,
                n.pod_cidr()
            );
        }
        for p in &self.pods {
            let _ = writeln!(
                s,
                "  {:<10} {:<30} {} on {} (node veth {})",
                p.name, p.ns, p.ip, p.node, p.host_veth
            );
        }
        if let Some(p) = self.pods.first() {
            let _ = writeln!(
                s,
                "\nRun a command in a pod:   ip netns exec {} ping -c1 {INTERNET_HOST}",
                p.ns
            );
            let _ = writeln!(
                s,
                "Watch the internet host:  ip netns exec {} tcpdump -ni eth0",
                self.internet.ns
            );
        }
        s
    }

    /// Leaves the lab up (for `cargo xtask lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = down(Some(&self.id)) {
                eprintln!("lab {}: teardown: {e:#}", self.id);
            }
        }
    }
}

fn lab_namespaces(id: Option<&str>) -> Result<Vec<String>> {
    let prefix = match id {
        Some(id) => format!("{PREFIX}{id}-"),
        None => PREFIX.to_owned(),
    };
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                out.push(n);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Unmounts every bpffs below `dir` (agents' pin roots) and removes it.
fn remove_dir_with_mounts(dir: &Path) {
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        let d = dir.to_string_lossy().into_owned();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&d))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// Removes one lab (by id) or all labs: kills their processes, deletes their namespaces,
/// unmounts their pin directories. Returns the namespaces removed.
pub fn down(id: Option<&str>) -> Result<Vec<String>> {
    let nss = lab_namespaces(id)?;
    for ns in &nss {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
    }
    for ns in &nss {
        let _ = ip(&["netns", "delete", ns]);
    }
    match id {
        Some(id) => remove_dir_with_mounts(&Path::new(RUN_DIR).join(id)),
        None => remove_dir_with_mounts(Path::new(RUN_DIR)),
    }
    Ok(nss)
}

/// The labs that are up, with their descriptions.
pub fn status() -> Result<String> {
    let nss = lab_namespaces(None)?;
    let mut ids: Vec<String> = nss
        .iter()
        .filter_map(|n| n.strip_prefix(PREFIX)?.split('-').next().map(str::to_owned))
        .collect();
    ids.dedup();
    if ids.is_empty() {
        return Ok("no lab is up\n".into());
    }
    let mut s = String::new();
    for id in ids {
        match fs::read_to_string(Path::new(RUN_DIR).join(&id).join("describe.txt")) {
            Ok(d) => s.push_str(&d),
            Err(_) => {
                let _ = writeln!(s, "lab {id} (no metadata)");
                for n in nss.iter().filter(|n| n.contains(&format!("-{id}-"))) {
                    let _ = writeln!(s, "  {n}");
                }
            }
        }
        s.push('\n');
    }
    Ok(s)
}
