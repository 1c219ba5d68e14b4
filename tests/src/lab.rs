//! The lab: a cluster made of network namespaces.
//!
//! ```text
//!  pods --veth--> node (gateway | worker1 | worker2 ...) --eth0--+
//!                   |                                            br0 (isp) --inet0-- inet host
//!                   +--eth1-- br0 (lan)                          198.51.100.0/24 "internet"
//!  192.0.2.0/24 public node addresses (ExternalIP), 10.0.0.0/24 private underlay (InternalIP)
//! ```
//! Two layouts (`LabSpec::underlay`):
//! - `Underlay::Private`: as Hetzner Cloud, AWS and most clusters are built. Every node has a
//!   public uplink `eth0` (192.0.2.(10+i), its ExternalIP, default route via the isp) and a
//!   private segment `eth1` (10.0.0.(10+i), its InternalIP) on the `lan` switch: node to node
//!   only, no router to the internet. The tunnel and the pod routes run on the private one.
//! - `Underlay::Shared`: one network, `eth0` only; InternalIP and ExternalIP are the same
//!   192.0.2.(10+i).
//!
//! - isp: 192.0.2.1 on br0 (one veth per node), 198.51.100.1 towards the internet host; routes,
//!   no NAT.
//! - lan (private layout only): a bridge and nothing else: no address, no routing.
//! - internet host: 198.51.100.10.
//! - gateway node 192.0.2.10, workers 192.0.2.11, .12, ... Node i has pod CIDR 10.244.i.0/24
//!   (gateway: 10.244.0.0/24), routes to the other nodes' pod CIDRs (host-gw), and masquerades
//!   pod traffic leaving the cluster, as a CNI does.
//! - pods are wired as one of two CNI shapes (`LabSpec::cni`):
//!   - `Cni::Routed` (Calico, Cilium): pod `eth0` 10.244.i.x/32, default via 169.254.1.1; the
//!     node side veth `lxcN` answers ARP by proxy and has a /32 route to the pod.
//!   - `Cni::Bridge` (flannel, k3s's default): a bridge `cni0` 10.244.i.1/24 on every node,
//!     pod `eth0` 10.244.i.x/24, default via 10.244.i.1; the node side veth `vethN` is a port
//!     of `cni0`, and no route leads to a single pod.
//!
//! Dual-stack (`LabSpec::ipv6`): every segment above also carries IPv6 from the documentation
//! prefix 2001:db8::/32, mirroring the IPv4 plan: the IPv4 number is written as the last
//! group (its decimal digits read as hex, so 192.0.2.11 becomes 2001:db8:200::11 and
//! 10.244.1.2 becomes 2001:db8:244:1::2).
//! - internet segment 2001:db8:5100::/64: isp ::1, internet host ::10.
//! - nodes' public network 2001:db8:200::/64: isp ::1, node i ::(10+i) (its IPv6 ExternalIP,
//!   and InternalIP with one shared network), IPv6 default route via the isp; the extra
//!   egress IP is 2001:db8:200::100, deprecated (`preferred_lft 0`) so that the gateway's own
//!   traffic and masquerade keep ::10 as their source.
//! - private underlay 2001:db8:a00::/64: node i ::(10+i) (its IPv6 InternalIP).
//! - pods: node i has 2001:db8:244:i::/64 (cluster 2001:db8:244::/48), pod 10.244.i.x is
//!   2001:db8:244:i::x. `Cni::Routed`: the pod's `eth0` holds its /128 and routes via
//!   `fe80::ecee:eeff:feee:eeee`, the link-local address Calico's host veths have (here added
//!   to `lxcN` explicitly instead of derived from the MAC ee:ee:ee:ee:ee:ee); the node has a
//!   /128 route to the pod. `Cni::Bridge`: `cni0` holds 2001:db8:244:i::1/64, the pod its /64
//!   and routes via ::1.
//! - host-gw routes to the other nodes' IPv6 pod CIDRs via their IPv6 InternalIPs, and each
//!   node masquerades its pods' IPv6 leaving the cluster to its own IPv6 address (nftables
//!   `ip6` family), as a CNI does: a pod's IPv6 is seen from the node's address.
//! - IPv6 forwarding on the isp and the nodes; duplicate address detection off in every
//!   namespace (addresses are usable at once); nothing relies on router solicitations or
//!   advertisements (routes are static, and no namespace sends or accepts either).
//!
//! Every name is unique per lab (`egwlab-<id>-<role>`) and every address lives inside the
//! lab's own namespaces, so two labs run side by side. Dropping the `Lab` removes it; after a
//! crash `down` finds leftovers by prefix.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
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

/// The isp's address on the nodes' public network (`br0`), every node's default gateway.
pub const ISP_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The isp's address towards the internet host.
pub const ISP_INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The internet host (say, a mail server checking SPF).
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The cluster's pod network; node `i` (gateway 0, worker`i`) has `10.244.i.0/24`.
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);
/// Most workers a lab can have: node addresses run from 192.0.2.10 to .99, below
/// `EXTRA_EGRESS_IP`.
pub const MAX_WORKERS: usize = 89;
/// Most pods per node: 10.244.i.2 to 10.244.i.254.
pub const MAX_PODS_PER_NODE: usize = 253;
/// Secondary address on the gateway's uplink, usable as a dedicated egress IP.
pub const EXTRA_EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// The isp's IPv6 address on the nodes' public network (`LabSpec::ipv6`), every node's IPv6
/// default gateway.
pub const ISP_UNDERLAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);
/// The isp's IPv6 address towards the internet host.
pub const ISP_INTERNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 1);
/// The internet host's IPv6 address.
pub const INTERNET_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x10);
/// The cluster's IPv6 pod network; node `i` has `2001:db8:244:i::/64`.
pub const CLUSTER_CIDR6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x244, 0, 0, 0, 0, 0), 48);
/// The IPv6 twin of `EXTRA_EGRESS_IP` on the gateway's uplink (deprecated, so never chosen as
/// a source address by the kernel itself).
pub const EXTRA_EGRESS_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x100);
/// The pods' IPv6 default gateway with `Cni::Routed`: a link-local address on every node-side
/// veth `lxcN`, the one Calico's host veths have (EUI-64 of ee:ee:ee:ee:ee:ee).
pub const ROUTED_GATEWAY6: Ipv6Addr =
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// The IPv6 group that mirrors an IPv4 number: its decimal digits read as hex (11 -> 0x11),
/// so that 192.0.2.11 and 2001:db8:200::11 read alike.
fn mirror(n: u8) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits")
}

/// An address of the IPv6 plan: `prefix` (the first three groups) `:group4::host`, both
/// mirrored.
fn plan6(prefix: [u16; 3], group4: u8, host: u8) -> Ipv6Addr {
    let [a, b, c] = prefix;
    Ipv6Addr::new(a, b, c, mirror(group4), 0, 0, 0, mirror(host))
}

/// The nodes' public network, 2001:db8:200::/64.
const PUBLIC6: [u16; 3] = [0x2001, 0xdb8, 0x200];
/// The private underlay, 2001:db8:a00::/64.
const PRIVATE6: [u16; 3] = [0x2001, 0xdb8, 0xa00];
/// The pod network, 2001:db8:244::/48.
const PODS6: [u16; 3] = [0x2001, 0xdb8, 0x244];

/// The nodes' networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// One network: the uplink `eth0` is the underlay too (InternalIP = ExternalIP).
    Shared,
    /// A private node-to-node segment `eth1` (10.0.0.0/24, the InternalIPs) besides the public
    /// uplink `eth0` (192.0.2.0/24, the ExternalIPs).
    Private,
}

/// How pods are wired to their node, as the two families of veth CNIs do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cni {
    /// Routed veths (Calico's `cali*`, Cilium's `lxc*`): the node side `lxcN` answers ARP by
    /// proxy and has a /32 route to the pod; the pod's `eth0` holds its /32.
    Routed,
    /// A bridge (flannel's and k3s's `cni0`, 10.244.i.1/24 on node i): the node side `vethN`
    /// is a port of it, the pod's `eth0` holds its address in the node's /24 and routes via
    /// the bridge's address. No route names a single pod.
    Bridge,
}

impl Cni {
    /// Both shapes, for tests that must pass on each.
    pub const ALL: [Cni; 2] = [Cni::Routed, Cni::Bridge];
}

/// Name of the bridge of `Cni::Bridge` on every node, as flannel and k3s call it.
pub const CNI_BRIDGE: &str = "cni0";

/// What to build. `LabSpec::default()`: two workers, one pod per node (`pod-<node>-0`),
/// MTU 1500 everywhere, the extra egress IP on, offloads left on, one shared network, routed
/// veths.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Worker nodes besides the gateway node (`worker1`..`workerN`), at most `MAX_WORKERS`.
    pub workers: usize,
    /// Pods created on every node (gateway included), named `pod-<node>-<k>`.
    pub pods_per_node: usize,
    /// MTU of both ends of every pod veth.
    pub pod_mtu: u32,
    /// MTU of the node uplinks (`eth0`) and the isp bridge.
    pub underlay_mtu: u32,
    /// MTU of the isp's internet-side link (lower it to make the isp send frag-needed).
    pub internet_mtu: u32,
    /// Add `EXTRA_EGRESS_IP` to the gateway's uplink.
    pub extra_egress_ip: bool,
    /// Turn checksum offloads off on every veth, so nothing hides a wrong checksum.
    pub offloads_off: bool,
    /// One network or a private underlay besides the public one.
    pub underlay: Underlay,
    /// How pods are wired to their node.
    pub cni: Cni,
    /// Dual-stack: IPv6 on every segment besides IPv4 (see the module doc for the plan).
    /// Off by default for now, so that tests counting packets or capturing on a lab see only
    /// what they did before; it will become the default once the datapath handles IPv6.
    pub ipv6: bool,
}

impl LabSpec {
    fn validate(&self) -> Result<()> {
        if self.workers > MAX_WORKERS {
            bail!(
                "workers = {}: a lab has at most {MAX_WORKERS}",
                self.workers
            );
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            bail!(
                "pods_per_node = {}: a node holds at most {MAX_PODS_PER_NODE}",
                self.pods_per_node
            );
        }
        for (what, mtu) in [
            ("pod_mtu", self.pod_mtu),
            ("underlay_mtu", self.underlay_mtu),
            ("internet_mtu", self.internet_mtu),
        ] {
            if !(576..=65535).contains(&mtu) {
                bail!("{what} = {mtu}: use 576..=65535");
            }
        }
        Ok(())
    }
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
            underlay: Underlay::Shared,
            cni: Cni::Routed,
            ipv6: false,
        }
    }
}

/// A Kubernetes node: a namespace with an uplink on the underlay, a pod CIDR, host-gw routes
/// to the other nodes' pod CIDRs and the CNI's masquerade.
#[derive(Clone, Debug)]
pub struct Node {
    /// `gateway`, `worker1`, `worker2`, ...
    pub name: String,
    /// Network namespace (`egwlab-<id>-<name>`).
    pub ns: String,
    /// The InternalIP, on the underlay the tunnel runs on: 10.0.0.(10 + i) on the private
    /// segment, or the same as `external_ip` with one shared network (gateway: i = 0).
    pub underlay_ip: Ipv4Addr,
    /// The ExternalIP, on the uplink: 192.0.2.10 for the gateway, 192.0.2.(10 + i) for worker
    /// i. What the internet sees of the node (its masquerade address).
    pub external_ip: Ipv4Addr,
    /// The IPv6 InternalIP (`LabSpec::ipv6`): 2001:db8:a00::(10 + i) on the private segment,
    /// or the same as `external_ip6` with one shared network.
    pub underlay_ip6: Option<Ipv6Addr>,
    /// The IPv6 ExternalIP (`LabSpec::ipv6`): 2001:db8:200::(10 + i), the node's IPv6
    /// masquerade address.
    pub external_ip6: Option<Ipv6Addr>,
    /// The uplink device inside `ns` (default route, towards the internet): always `eth0`.
    pub uplink: String,
    /// The underlay device inside `ns`: `eth1` on the private segment, else `eth0`.
    pub underlay_dev: String,
    /// 0 for the gateway, i for worker i: the node's pod CIDR is 10.244.<index>.0/24.
    pub index: u8,
}

impl Node {
    /// The pod CIDR as text, `10.244.<index>.0/24`.
    pub fn pod_cidr(&self) -> String {
        let (net, len) = self.pod_net();
        format!("{net}/{len}")
    }

    /// The pod CIDR as network address and prefix length.
    pub fn pod_net(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 244, self.index, 0), 24)
    }

    /// The IPv6 pod CIDR as text, `2001:db8:244:<index>::/64`, on a dual-stack lab.
    pub fn pod_cidr6(&self) -> Option<String> {
        self.pod_net6().map(|(net, len)| format!("{net}/{len}"))
    }

    /// The IPv6 pod CIDR as network address and prefix length, on a dual-stack lab.
    pub fn pod_net6(&self) -> Option<(Ipv6Addr, u8)> {
        self.external_ip6.map(|_| (plan6(PODS6, self.index, 0), 64))
    }
}

/// A pod: a namespace with `eth0` 10.244.<node>.x, wired to its node as `LabSpec::cni` says.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    /// Network namespace (`egwlab-<id>-<name>`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on a dual-stack lab: 2001:db8:244:<node>::x for 10.244.<node>.x.
    pub ip6: Option<Ipv6Addr>,
    /// Name of the node it runs on.
    pub node: String,
    /// Node-side veth (in the node's namespace): `lxc<n>` with proxy ARP on and a /32 route
    /// to `ip` (`Cni::Routed`; on a dual-stack lab also `ROUTED_GATEWAY6` and a /128 route to
    /// `ip6`), or `veth<n>`, a port of `cni0` (`Cni::Bridge`).
    pub host_veth: String,
}

/// A namespace that is not a node: the isp router or the internet host.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    /// Its main address (the isp: `ISP_UNDERLAY`; the internet host: `INTERNET_HOST`).
    pub ip: Ipv4Addr,
    /// Its main IPv6 address on a dual-stack lab (`ISP_UNDERLAY6`, `INTERNET_HOST6`).
    pub ip6: Option<Ipv6Addr>,
}

/// A running lab. Dropping it tears everything down (unless `keep` was called).
pub struct Lab {
    id: String,
    spec: LabSpec,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    isp: Host,
    internet: Host,
    /// The private segment's switch (`Underlay::Private` only).
    lan: Option<String>,
    keep: bool,
    next_veth: u32,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The message lab tests fail with when they are not root.
pub const NEED_ROOT: &str = "lab tests need root (CAP_NET_ADMIN): run as root \
     (the datapath tests also need CAP_BPF)";

/// Panics with a clear message unless running as root. Lab tests call this first: without
/// root they fail, they never pass silently.
pub fn require_root() {
    if !is_root() {
        panic!("{NEED_ROOT}");
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

/// Starts `args` (program and arguments) inside namespace `ns`, network namespace only (see
/// `command_in`). `down` and the lab's teardown kill whatever is still running there.
pub fn spawn(ns: &str, args: &[&str]) -> Result<Child> {
    let Some((program, rest)) = args.split_first() else {
        bail!("spawn in {ns}: no command given");
    };
    command_in(ns, program)?
        .args(rest)
        .spawn()
        .with_context(|| format!("starting {args:?} in {ns}"))
}

/// Runs `f` on a fresh thread that entered namespace `ns` (`setns(CLONE_NEWNET)` on
/// `/run/netns/<ns>`), and returns its result. Sockets created in `f` live in `ns` for their
/// whole life, also when they are handed back and used from other threads. A panic in `f`
/// is propagated; failing to enter the namespace panics.
///
/// `f` may borrow from the caller (the thread is scoped), so it need not be `'static`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on this thread only (CLONE_NEWNET affects the calling thread).
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("setns {path}: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
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
    /// Builds a lab. Fails with a clear message when not root or when the spec is out of
    /// range; whatever was built before an error is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        if !is_root() {
            bail!("the lab needs root (CAP_NET_ADMIN): run as root");
        }
        spec.validate()?;
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
                ip6: spec.ipv6.then_some(ISP_UNDERLAY6),
            },
            internet: Host {
                ns: ns("inet"),
                ip: INTERNET_HOST,
                ip6: spec.ipv6.then_some(INTERNET_HOST6),
            },
            lan: (spec.underlay == Underlay::Private).then(|| ns("lan")),
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
        let mut kv: Vec<String> = ["all", "default"]
            .map(|conf| format!("net.ipv4.conf.{conf}.rp_filter=0"))
            .into();
        if self.spec.ipv6 {
            // Interfaces take their settings from `default` when they are created, or moved
            // into this namespace (a pod's eth0). No DAD: an address is usable at once, a
            // link-local one included; no router solicitation or advertisement: every route
            // is static.
            for conf in ["all", "default"] {
                for setting in [
                    "disable_ipv6=0",
                    "accept_dad=0",
                    "accept_ra=0",
                    "router_solicitations=0",
                ] {
                    kv.push(format!("net.ipv6.conf.{conf}.{setting}"));
                }
            }
        }
        sysctl(name, &kv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Routing on in `ns`: IPv4, and IPv6 on a dual-stack lab.
    fn forwarding_on(&self, ns: &str) -> Result<()> {
        if self.spec.ipv6 {
            sysctl(
                ns,
                &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            )
        } else {
            sysctl(ns, &["net.ipv4.ip_forward=1"])
        }
    }

    /// `ip -6 addr add <addr> dev <dev> nodad` in `ns`.
    fn addr6(ns: &str, addr: &str, dev: &str) -> Result<()> {
        ipn(ns, &["-6", "addr", "add", addr, "dev", dev, "nodad"]).map(|_| ())
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
        self.forwarding_on(&isp)?;
        ipn(&isp, &["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
        ipn(&isp, &["addr", "add", "192.0.2.1/24", "dev", "br0"])?;
        ipn(&isp, &["link", "set", "br0", "up"])?;
        if self.spec.ipv6 {
            Self::addr6(&isp, &format!("{ISP_UNDERLAY6}/64"), "br0")?;
        }
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
        if self.spec.ipv6 {
            Self::addr6(&isp, &format!("{ISP_INTERNET6}/64"), "inet0")?;
            Self::addr6(&inet, &format!("{INTERNET_HOST6}/64"), "eth0")?;
            ipn(
                &inet,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &ISP_INTERNET6.to_string(),
                ],
            )?;
        }
        self.offload_off(&isp, "inet0")?;
        self.offload_off(&inet, "eth0")?;
        // the private segment's switch
        if let Some(lan) = self.lan.clone() {
            self.add_ns(&lan)?;
            ipn(&lan, &["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
            ipn(&lan, &["link", "set", "br0", "up"])?;
        }

        // nodes
        let mut names = vec!["gateway".to_owned()];
        names.extend((1..=self.spec.workers).map(|i| format!("worker{i}")));
        for (i, name) in names.iter().enumerate() {
            let external_ip = Ipv4Addr::new(192, 0, 2, 10 + i as u8);
            let external_ip6 = self.spec.ipv6.then(|| plan6(PUBLIC6, 0, 10 + i as u8));
            let private = self.lan.is_some();
            let node = Node {
                name: name.clone(),
                ns: format!("{PREFIX}{}-{name}", self.id),
                underlay_ip: if private {
                    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
                } else {
                    external_ip
                },
                external_ip,
                underlay_ip6: if private {
                    external_ip6.map(|_| plan6(PRIVATE6, 0, 10 + i as u8))
                } else {
                    external_ip6
                },
                external_ip6,
                uplink: "eth0".into(),
                underlay_dev: if private { "eth1" } else { "eth0" }.into(),
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
                if let (Some(cidr), Some(via)) = (other.pod_cidr6(), other.underlay_ip6) {
                    ipn(
                        &n.ns,
                        &["-6", "route", "add", &cidr, "via", &via.to_string()],
                    )?;
                }
            }
        }
        if self.spec.extra_egress_ip {
            let gw = self.nodes[0].ns.clone();
            ipn(&gw, &["addr", "add", "192.0.2.100/24", "dev", "eth0"])?;
            if self.spec.ipv6 {
                // Deprecated: usable, but never the kernel's choice of source address (the
                // newest global address would be, and the gateway's masquerade with it).
                ipn(
                    &gw,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{EXTRA_EGRESS_IP6}/64"),
                        "dev",
                        "eth0",
                        "nodad",
                        "preferred_lft",
                        "0",
                    ],
                )?;
            }
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
        self.forwarding_on(&n.ns)?;
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
                &format!("{}/24", n.external_ip),
                "dev",
                "eth0",
            ],
        )?;
        ipn(&n.ns, &["link", "set", "eth0", "up"])?;
        ipn(&n.ns, &["route", "add", "default", "via", "192.0.2.1"])?;
        if let Some(ip6) = n.external_ip6 {
            Self::addr6(&n.ns, &format!("{ip6}/64"), "eth0")?;
            ipn(
                &n.ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &ISP_UNDERLAY6.to_string(),
                ],
            )?;
        }
        if self.spec.cni == Cni::Bridge {
            let (net, _) = n.pod_net();
            let gw = Ipv4Addr::new(net.octets()[0], net.octets()[1], net.octets()[2], 1);
            ipn(&n.ns, &["link", "add", CNI_BRIDGE, "type", "bridge"])?;
            ipn(
                &n.ns,
                &["addr", "add", &format!("{gw}/24"), "dev", CNI_BRIDGE],
            )?;
            ipn(&n.ns, &["link", "set", CNI_BRIDGE, "up"])?;
            if n.external_ip6.is_some() {
                let gw6 = plan6(PODS6, n.index, 1);
                Self::addr6(&n.ns, &format!("{gw6}/64"), CNI_BRIDGE)?;
            }
        }
        self.offload_off(isp, &port)?;
        self.offload_off(&n.ns, "eth0")?;
        if let Some(lan) = &self.lan {
            ipn(
                lan,
                &[
                    "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth1",
                    "mtu", &mtu, "netns", &n.ns,
                ],
            )?;
            ipn(lan, &["link", "set", &port, "master", "br0", "up"])?;
            ipn(
                &n.ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", n.underlay_ip),
                    "dev",
                    "eth1",
                ],
            )?;
            ipn(&n.ns, &["link", "set", "eth1", "up"])?;
            if let Some(ip6) = n.underlay_ip6 {
                Self::addr6(&n.ns, &format!("{ip6}/64"), "eth1")?;
            }
            self.offload_off(lan, &port)?;
            self.offload_off(&n.ns, "eth1")?;
        }
        // The CNI's masquerade of pod traffic leaving the cluster.
        let rules = "table ip lab_cni {\n\
             chain postrouting {\n\
               type nat hook postrouting priority srcnat; policy accept;\n\
               ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 oifname \"eth0\" masquerade\n\
             }\n\
           }\n";
        // And of their IPv6, to the node's own IPv6 address, on a dual-stack lab.
        let (net6, len6) = CLUSTER_CIDR6;
        let rules6 = match n.external_ip6 {
            Some(_) => format!(
                "table ip6 lab_cni6 {{\n\
                   chain postrouting {{\n\
                     type nat hook postrouting priority srcnat; policy accept;\n\
                     ip6 saddr {net6}/{len6} ip6 daddr != {net6}/{len6} oifname \"eth0\" \
                       masquerade\n\
                   }}\n\
                 }}\n"
            ),
            None => String::new(),
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &n.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            child.stdin.as_mut().expect("stdin"),
            format!("{rules}{rules6}").as_bytes(),
        )?;
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

    /// Adds a pod to `node` (next free address of its pod CIDR, node veth `lxc<n>` or
    /// `veth<n>`) and
    /// returns a copy of it. Fails on an unknown node, a full node, or a name that is taken
    /// (pod, node, `isp` or `inet`) or unusable as a namespace name.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        let Some(n) = self.nodes.iter().find(|n| n.name == node).cloned() else {
            bail!("lab {}: no node {node} to add pod {name} to", self.id);
        };
        let ns = format!("{PREFIX}{}-{name}", self.id);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("pod name {name:?}: use letters, digits, '-', '_' and '.'");
        }
        if self.namespaces().contains(&ns) {
            bail!("lab {}: the name {name} is taken", self.id);
        }
        let count = self.pods.iter().filter(|p| p.node == node).count();
        if count >= MAX_PODS_PER_NODE {
            bail!("node {node} is full ({MAX_PODS_PER_NODE} pods)");
        }
        let ip = Ipv4Addr::new(10, 244, n.index, 2 + count as u8);
        let ip6 = n
            .external_ip6
            .map(|_| plan6(PODS6, n.index, 2 + count as u8));
        self.next_veth += 1;
        let veth = match self.spec.cni {
            Cni::Routed => format!("lxc{}", self.next_veth),
            Cni::Bridge => format!("veth{}", self.next_veth),
        };
        let pod = Pod {
            name: name.to_owned(),
            ns,
            ip,
            ip6,
            node: node.to_owned(),
            host_veth: veth.clone(),
        };
        self.add_ns(&pod.ns)?;
        self.plug(&n, &pod, std::time::Duration::ZERO)?;
        self.pods.push(pod.clone());
        self.write_meta()?;
        Ok(pod)
    }

    /// Wires `pod` (its namespace exists) to node `n` as the CNI shape does: the veth pair,
    /// the addresses and routes, and the node side's settings. The pod's `eth0` is up
    /// `address_after` before its address is there (the bridge plugin sets the veth up when it
    /// creates it, and runs IPAM before it configures the address).
    fn plug(&self, n: &Node, pod: &Pod, address_after: std::time::Duration) -> Result<()> {
        let mtu = self.spec.pod_mtu.to_string();
        let veth = &pod.host_veth;
        let ip = pod.ip;
        ipn(
            &n.ns,
            &[
                "link", "add", veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &pod.ns,
            ],
        )?;
        match self.spec.cni {
            Cni::Routed => {
                ipn(&n.ns, &["link", "set", veth, "up"])?;
                sysctl(
                    &n.ns,
                    &[
                        &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
                        &format!("net.ipv4.neigh.{veth}.proxy_delay=0"),
                    ],
                )?;
                ipn(&n.ns, &["route", "add", &format!("{ip}/32"), "dev", veth])?;
                if let Some(ip6) = pod.ip6 {
                    Self::addr6(&n.ns, &format!("{ROUTED_GATEWAY6}/64"), veth)?;
                    ipn(
                        &n.ns,
                        &["-6", "route", "add", &format!("{ip6}/128"), "dev", veth],
                    )?;
                }
                ipn(&pod.ns, &["link", "set", "eth0", "up"])?;
                std::thread::sleep(address_after);
                ipn(
                    &pod.ns,
                    &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
                )?;
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
                if let Some(ip6) = pod.ip6 {
                    Self::addr6(&pod.ns, &format!("{ip6}/128"), "eth0")?;
                    ipn(
                        &pod.ns,
                        &[
                            "-6",
                            "route",
                            "add",
                            "default",
                            "via",
                            &ROUTED_GATEWAY6.to_string(),
                            "dev",
                            "eth0",
                        ],
                    )?;
                }
            }
            Cni::Bridge => {
                // As the bridge plugin does it: the veth joins the bridge first, the pod's
                // address comes after.
                ipn(&n.ns, &["link", "set", veth, "master", CNI_BRIDGE, "up"])?;
                let gw = Ipv4Addr::new(10, 244, n.index, 1);
                ipn(&pod.ns, &["link", "set", "eth0", "up"])?;
                std::thread::sleep(address_after);
                ipn(
                    &pod.ns,
                    &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
                )?;
                ipn(
                    &pod.ns,
                    &["route", "add", "default", "via", &gw.to_string()],
                )?;
                if let Some(ip6) = pod.ip6 {
                    Self::addr6(&pod.ns, &format!("{ip6}/64"), "eth0")?;
                    let gw6 = plan6(PODS6, n.index, 1);
                    ipn(
                        &pod.ns,
                        &["-6", "route", "add", "default", "via", &gw6.to_string()],
                    )?;
                }
            }
        }
        self.offload_off(&n.ns, veth)?;
        self.offload_off(&pod.ns, "eth0")?;
        Ok(())
    }

    /// Removes the pod's veth pair (the node side, and with it the pod's `eth0`), as a CNI's
    /// DEL does: the pod's namespace stays.
    pub fn unplug_pod(&self, name: &str) -> Result<()> {
        let pod = self.pod(name);
        ipn(&self.node(&pod.node).ns, &["link", "del", &pod.host_veth])?;
        Ok(())
    }

    /// Wires an unplugged pod again, as a CNI's ADD does (same names and address), the pod's
    /// address coming `address_after` after its interface is up.
    pub fn replug_pod(&self, name: &str, address_after: std::time::Duration) -> Result<()> {
        let pod = self.pod(name).clone();
        let node = self.node(&pod.node).clone();
        self.plug(&node, &pod, address_after)
    }

    /// The lab's id: its namespaces are `egwlab-<id>-<role>`.
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }
    /// All nodes, the gateway node first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The node called `name`; panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in lab {}", self.id))
    }
    /// The gateway node (192.0.2.10).
    pub fn gateway(&self) -> &Node {
        &self.nodes[0]
    }
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    /// The pod called `name`; panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in lab {}", self.id))
    }
    /// The internet host, `INTERNET_HOST`.
    pub fn internet(&self) -> &Host {
        &self.internet
    }
    /// The router between the nodes' public network and the internet.
    pub fn isp(&self) -> &Host {
        &self.isp
    }
    /// The private segment's switch namespace (`Underlay::Private` only).
    pub fn lan(&self) -> Option<&str> {
        self.lan.as_deref()
    }

    /// Every namespace of this lab: isp, internet host, lan switch, nodes, pods.
    pub fn namespaces(&self) -> Vec<String> {
        [&self.isp.ns, &self.internet.ns]
            .into_iter()
            .chain(self.lan.as_ref())
            .chain(self.nodes.iter().map(|n| &n.ns))
            .chain(self.pods.iter().map(|p| &p.ns))
            .cloned()
            .collect()
    }

    /// This lab's directory: metadata, and where agents pin (`bpf/<node>`).
    pub fn dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.id)
    }

    /// Pin root for an agent on `node`.
    pub fn pin_root(&self, node: &str) -> PathBuf {
        self.dir().join("bpf").join(node)
    }

    /// Writes `describe.txt` (for `status`) and `lab.json` (for tools) into `dir()`.
    fn write_meta(&self) -> Result<()> {
        let ipv6 = self.spec.ipv6;
        let json = serde_json::json!({
            "id": self.id,
            "namespaces": self.namespaces(),
            "isp": {
                "ns": self.isp.ns, "underlay_ip": ISP_UNDERLAY, "internet_ip": ISP_INTERNET,
                "underlay_ip6": self.isp.ip6, "internet_ip6": ipv6.then_some(ISP_INTERNET6),
            },
            "internet": { "ns": self.internet.ns, "ip": self.internet.ip, "ip6": self.internet.ip6 },
            "lan": self.lan,
            "ipv6": ipv6,
            "extra_egress_ip": self.spec.extra_egress_ip.then_some(EXTRA_EGRESS_IP),
            "extra_egress_ip6": (self.spec.extra_egress_ip && ipv6).then_some(EXTRA_EGRESS_IP6),
            "cni": match self.spec.cni { Cni::Routed => "routed", Cni::Bridge => "bridge" },
            "nodes": self.nodes.iter().map(|n| serde_json::json!({
                "name": n.name, "ns": n.ns, "underlay_ip": n.underlay_ip,
                "external_ip": n.external_ip, "uplink": n.uplink,
                "underlay_dev": n.underlay_dev, "pod_cidr": n.pod_cidr(),
                "underlay_ip6": n.underlay_ip6, "external_ip6": n.external_ip6,
                "pod_cidr6": n.pod_cidr6(),
            })).collect::<Vec<_>>(),
            "pods": self.pods.iter().map(|p| serde_json::json!({
                "name": p.name, "ns": p.ns, "ip": p.ip, "ip6": p.ip6, "node": p.node,
                "host_veth": p.host_veth,
            })).collect::<Vec<_>>(),
        });
        fs::write(self.dir().join("describe.txt"), self.describe())?;
        fs::write(
            self.dir().join("lab.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        Ok(())
    }

    /// Namespaces, addresses, and how to look around.
    pub fn describe(&self) -> String {
        // " <IPv6 address>" after an IPv4 one, on a dual-stack lab.
        fn and6(ip6: Option<impl std::fmt::Display>) -> String {
            ip6.map(|a| format!(" {a}")).unwrap_or_default()
        }
        let ipv6 = self.spec.ipv6;
        let mut s = String::new();
        let _ = writeln!(s, "lab {}", self.id);
        let _ = writeln!(
            s,
            "  {:<10} {:<30} {ISP_UNDERLAY}{} (nodes), {ISP_INTERNET}{} (internet)",
            "isp",
            self.isp.ns,
            and6(self.isp.ip6),
            and6(ipv6.then_some(ISP_INTERNET6)),
        );
        let _ = writeln!(
            s,
            "  {:<10} {:<30} {}{}",
            "internet",
            self.internet.ns,
            self.internet.ip,
            and6(self.internet.ip6)
        );
        if let Some(lan) = &self.lan {
            let _ = writeln!(
                s,
                "  {:<10} {lan:<30} private node segment 10.0.0.0/24{}",
                "lan",
                and6(ipv6.then_some("2001:db8:a00::/64"))
            );
        }
        for n in &self.nodes {
            let underlay = if n.underlay_ip == n.external_ip {
                String::new()
            } else {
                format!(
                    ", underlay {}{} on {}",
                    n.underlay_ip,
                    and6(n.underlay_ip6),
                    n.underlay_dev
                )
            };
            let _ = writeln!(
                s,
                "  {:<10} {:<30} {}{} uplink {}{underlay}, pods {}{}",
                n.name,
                n.ns,
                n.external_ip,
                and6(n.external_ip6),
                n.uplink,
                n.pod_cidr(),
                and6(n.pod_cidr6()),
            );
        }
        let _ = writeln!(
            s,
            "  {:<10} {}",
            "pods",
            match (self.spec.cni, ipv6) {
                (Cni::Routed, false) =>
                    "routed veths lxcN (proxy ARP, a /32 route each), as Calico, Cilium",
                (Cni::Routed, true) =>
                    "routed veths lxcN (proxy ARP, a /32 and a /128 route each, IPv6 via \
                     fe80::ecee:eeff:feee:eeee on lxcN), as Calico, Cilium",
                (Cni::Bridge, false) =>
                    "veths vethN on the bridge cni0 (10.244.N.1/24), as flannel, k3s",
                (Cni::Bridge, true) =>
                    "veths vethN on the bridge cni0 (10.244.N.1/24, 2001:db8:244:N::1/64), \
                     as flannel, k3s",
            }
        );
        if self.spec.extra_egress_ip {
            let _ = writeln!(
                s,
                "  {:<10} {:<30} {EXTRA_EGRESS_IP}{} (secondary on the gateway's uplink)",
                "egress ip",
                self.gateway().ns,
                and6(ipv6.then_some(EXTRA_EGRESS_IP6)),
            );
        }
        for p in &self.pods {
            let _ = writeln!(
                s,
                "  {:<10} {:<30} {}{} on {} (node veth {})",
                p.name,
                p.ns,
                p.ip,
                and6(p.ip6),
                p.node,
                p.host_veth
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

/// Removes one lab (by id) or every lab: kills the processes left in their namespaces
/// (agents, servers), deletes the namespaces, unmounts and removes their directories under
/// `RUN_DIR`. Namespaces are found by name prefix, so this also works after a crash that
/// lost the metadata; whatever is already gone is skipped. Returns the namespaces removed,
/// and fails only if some of them could not be deleted.
pub fn down(id: Option<&str>) -> Result<Vec<String>> {
    if let Some(id) = id {
        if id.is_empty() || id.contains(['-', '/']) {
            bail!("{id:?} is not a lab id (see `status`)");
        }
    }
    let nss = lab_namespaces(id)?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    for ns in &nss {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if pid != me && pid > 1 {
                    // SAFETY: plain syscall; a pid that is already gone only yields ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    let mut failed = Vec::new();
    for ns in &nss {
        if let Err(e) = ip(&["netns", "delete", ns]) {
            if Path::new("/run/netns").join(ns).exists() {
                failed.push(format!("{ns}: {e:#}"));
            }
        }
    }
    match id {
        Some(id) => remove_dir_with_mounts(&Path::new(RUN_DIR).join(id)),
        None => remove_dir_with_mounts(Path::new(RUN_DIR)),
    }
    if !failed.is_empty() {
        bail!("could not delete: {}", failed.join("; "));
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
    // Directories of labs whose namespaces are gone (a half-finished teardown).
    let mut stale: Vec<String> = fs::read_dir(RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|d| !ids.contains(d))
        .collect();
    stale.sort();
    if ids.is_empty() && stale.is_empty() {
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
    for id in stale {
        let _ = writeln!(
            s,
            "lab {id}: no namespaces left, only {RUN_DIR}/{id} (remove it with `down {id}`)\n"
        );
    }
    Ok(s)
}
