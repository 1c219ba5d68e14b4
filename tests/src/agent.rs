//! Running the real agent binary on lab nodes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::lab::{command_in, Lab};

/// The agent binary of this build (`target/<profile>/egress-agent`), or `EGRESS_AGENT_BIN`.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("egress-agent")
}

/// `EGRESS_TEST_TIME_SCALE` (default 1): waits for the agent are this many times longer. The
/// kernel matrix sets it in its QEMU guests, where software emulation makes loading the
/// datapath through the verifier some ten times slower.
pub fn time_scale() -> u32 {
    std::env::var("EGRESS_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// An agent process on one lab node; killed on drop.
pub struct Agent {
    pub node: String,
    pub ns: String,
    pub pin_root: PathBuf,
    pub config: PathBuf,
    /// The agent's `--state-dir` (policy status for `inspect policies`).
    pub state_dir: PathBuf,
    /// `KUBECONFIG` for `--kubernetes` agents.
    pub kubeconfig: Option<PathBuf>,
    /// Extra environment of the agent process (test knobs such as
    /// `EGRESS_FORCE_LEGACY_TC=1`), kept across restarts.
    pub env: Vec<(String, String)>,
    /// The agent binary it runs (`None`: this build's, [`agent_binary`]), kept across
    /// restarts.
    pub bin: Option<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// Starts `egress-agent run` on `node` with `config`, pinning under the lab's directory.
    pub fn start(lab: &Lab, node: &str, config: &Path) -> Result<Agent> {
        Agent::start_with_env(lab, node, config, &[])
    }

    /// `start` with extra environment variables for the agent process.
    pub fn start_with_env(
        lab: &Lab,
        node: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        Agent::start_binary(lab, node, config, env, None)
    }

    /// `start_with_env` with another agent binary (`None`: this build's): an earlier build,
    /// for the upgrade test. It is kept across restarts; set [`Agent::bin`] to `None` and
    /// restart to upgrade to this build.
    pub fn start_binary(
        lab: &Lab,
        node: &str,
        config: &Path,
        env: &[(&str, &str)],
        bin: Option<&Path>,
    ) -> Result<Agent> {
        let n = lab.node(node);
        let pin_root = lab.pin_root(node);
        let log = lab.dir().join(format!("agent-{node}.log"));
        let mut a = Agent {
            node: node.to_owned(),
            ns: n.ns.clone(),
            pin_root,
            config: config.to_owned(),
            state_dir: lab.dir().join(format!("state-{node}")),
            kubeconfig: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            bin: bin.map(Path::to_owned),
            child: None,
            log,
        };
        a.spawn()?;
        Ok(a)
    }

    /// Starts `egress-agent run --kubernetes` on `node`: settings from `config`, the cluster
    /// from the API server that `kubeconfig` names.
    pub fn start_kubernetes(
        lab: &Lab,
        node: &str,
        config: &Path,
        kubeconfig: &Path,
    ) -> Result<Agent> {
        Agent::start_kubernetes_with_env(lab, node, config, kubeconfig, &[])
    }

    /// `start_kubernetes` with extra environment variables for the agent process.
    pub fn start_kubernetes_with_env(
        lab: &Lab,
        node: &str,
        config: &Path,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let n = lab.node(node);
        let mut a = Agent {
            node: node.to_owned(),
            ns: n.ns.clone(),
            pin_root: lab.pin_root(node),
            config: config.to_owned(),
            state_dir: lab.dir().join(format!("state-{node}")),
            kubeconfig: Some(kubeconfig.to_owned()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            bin: None,
            child: None,
            log: lab.dir().join(format!("agent-{node}.log")),
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = self.bin.clone().unwrap_or_else(agent_binary);
        if !bin.exists() {
            bail!(
                "agent binary {} not found: build it with `cargo build -p egress-agent`",
                bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = command_in(&self.ns, &bin)?;
        cmd.args(["run", "--node", &self.node, "--gc-interval-s", "1"]);
        if let Some(k) = &self.kubeconfig {
            cmd.arg("--kubernetes").env("KUBECONFIG", k);
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no clean-up of any kind, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again (after `kill`).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the agent process is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the agent attached its programs, from its log (`tcx` or `legacy`), once loaded.
    pub fn tc_mode(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("datapath loaded"))?;
        let mode = line.split("tc=").nth(1)?.split_whitespace().next()?;
        Some(mode.to_owned())
    }

    /// Runs `egress-agent inspect <what> --json` against this agent's pins.
    pub fn inspect(&self, what: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.inspect_text(what, true)?)?)
    }

    /// Runs `egress-agent inspect <what>` (the table, or with `json` the JSON text) on the
    /// agent's node (its network namespace: interface names are the node's).
    pub fn inspect_text(&self, what: &str, json: bool) -> Result<String> {
        let mut cmd = command_in(&self.ns, agent_binary())?;
        cmd.args(["inspect", what]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()?;
        if !out.status.success() {
            bail!("inspect {what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs `egress-agent inspect nat --check` on this agent's pins: whether the NAT table
    /// holds its invariants (exit status 0), and what the check printed.
    pub fn nat_check(&self) -> (bool, String) {
        let mut cmd = command_in(&self.ns, agent_binary()).expect("egress-agent in the node");
        let out = cmd
            .args(["inspect", "nat", "--check", "--pin-root"])
            .arg(&self.pin_root)
            .output()
            .expect("run egress-agent inspect nat --check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Panics, with every problem `inspect nat --check` found, unless this node's NAT table
    /// holds its invariants (see `egress_agent::nat_check`).
    pub fn assert_nat_consistent(&self) {
        let (ok, text) = self.nat_check();
        assert!(
            ok,
            "the NAT table of {} is inconsistent:\n{text}",
            self.node
        );
    }

    /// Waits until the agent has programmed `n` local endpoints.
    pub fn wait_endpoints(&self, n: usize, timeout: Duration) -> Result<()> {
        let timeout = timeout * time_scale();
        let start = Instant::now();
        loop {
            if let Ok(v) = self.inspect("endpoints") {
                if v.as_array().map_or(0, |a| a.len()) >= n {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "agent on {} did not program {n} endpoints in {timeout:?}; log:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent has saved its policy status (`<state dir>/policies.json`): it
    /// does so after its first pass, after the endpoints are programmed.
    pub fn wait_status(&self, timeout: Duration) -> Result<()> {
        let timeout = timeout * time_scale();
        let start = Instant::now();
        let path = self.state_dir.join("policies.json");
        while !path.exists() {
            if start.elapsed() > timeout {
                bail!(
                    "agent on {} saved no status in {timeout:?}; log:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Agent {
    /// A drop counter of this node by its reason's name (as `inspect counters` prints it);
    /// panics on a reason the agent does not know.
    pub fn drops(&self, reason: &str) -> u64 {
        let c = self.inspect("counters").expect("inspect counters");
        c["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop reason {reason} in {c:#}"))
    }
}

/// Starts an agent on every node of `lab` with `config` and waits until each has programmed
/// all of its node's pods. Keyed by node name.
pub fn start_all(lab: &Lab, config: &Path) -> BTreeMap<String, Agent> {
    start_all_with_env(lab, config, &[])
}

/// `start_all` with extra environment variables for every agent.
pub fn start_all_with_env(
    lab: &Lab,
    config: &Path,
    env: &[(&str, &str)],
) -> BTreeMap<String, Agent> {
    let agents: BTreeMap<String, Agent> = lab
        .nodes()
        .iter()
        .map(|n| {
            let a = Agent::start_with_env(lab, &n.name, config, env).expect("start agent");
            (n.name.clone(), a)
        })
        .collect();
    for a in agents.values() {
        let pods = lab.pods().iter().filter(|p| p.node == a.node).count();
        a.wait_endpoints(pods, Duration::from_secs(20))
            .expect("agent programs its pods");
        a.wait_status(Duration::from_secs(20))
            .expect("agent saves its status");
    }
    agents
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The "mail" policy's Ready condition in an agent's status file (`<state dir>/policies.json`):
/// (status, reason, message).
pub fn ready_condition(state_dir: &Path) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(state_dir.join("policies.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let c = v["mail"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str().unwrap_or("").to_owned(),
    ))
}
