//! The agent registry actor: which agents are connected, which devices they run, how fast each measured,
//! whether it is healthy (heartbeats), draining, or quarantined. Connection tasks tell it about arrivals,
//! heartbeats and losses; it tells the scheduler at once when a device can take shards or stops
//! ([`DeviceUp`], [`DeviceDown`]), so the scheduler never polls it.

use super::{
    DeviceId, DeviceStatus, Target,
    metrics::FarmMetrics,
    schedule::{DeviceEntry, Removal},
    scheduler::{DeviceDown, DeviceReadmitted, DeviceUp},
};
use actix::{Actor, AsyncContext as _, Context, Handler, Message, Recipient};
use cpc_common::wire::{DeviceAdvert, DeviceReport, ROOT_ANSWERS_SINCE, SHARD_PIPE_SINCE};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

/// Application close code for an agent that stopped sending heartbeats.
const CLOSE_HEARTBEAT: u32 = 3;

/// An agent's connection and the protocol version it speaks: what sending it a shard takes.
#[derive(Debug, Clone)]
pub struct AgentLink {
    /// The connection.
    pub conn: quinn::Connection,
    /// The version its `Hello` named.
    pub protocol_version: u16,
}

impl AgentLink {
    /// Whether the agent answers a whole-iteration shard by its root and shows rows with their Merkle
    /// paths (`RunShardRoot`, `FetchRowProof`: protocol version 6 and later).
    pub fn answers_roots(&self) -> bool {
        self.protocol_version >= ROOT_ANSWERS_SINCE
    }

    /// Whether the agent serves a shard pipe (`OpenShardPipe`: protocol version 7 and later), which
    /// then carries every shard sent to it.
    pub fn uses_shard_pipe(&self) -> bool {
        self.protocol_version >= SHARD_PIPE_SINCE
    }
}

#[derive(Debug)]
struct AgentEntry {
    name: String,
    conn: quinn::Connection,
    protocol_version: u16,
    devices: Vec<DeviceAdvert>,
    last_heartbeat: Instant,
    draining: bool,
    /// The last [`DeviceReport`] of each device (agents of protocol version 4 and later).
    reports: BTreeMap<u32, DeviceReport>,
}

impl AgentEntry {
    fn link(&self) -> AgentLink {
        AgentLink { conn: self.conn.clone(), protocol_version: self.protocol_version }
    }
}

/// The registry actor.
#[derive(Debug)]
pub struct Registry {
    agents: BTreeMap<u64, AgentEntry>,
    quarantined: BTreeMap<DeviceId, String>,
    /// When each quarantine began (shown by `farm status`).
    quarantined_at: BTreeMap<DeviceId, SystemTime>,
    /// Devices an operator drained: they finish their shards in flight and get no new ones until resumed.
    drained: BTreeSet<DeviceId>,
    next_agent: u64,
    heartbeat_timeout: Duration,
    metrics: FarmMetrics,
    scheduler: Option<Subscriber>,
}

/// Where device events go.
#[derive(Debug)]
struct Subscriber {
    up: Recipient<DeviceUp>,
    down: Recipient<DeviceDown>,
    readmitted: Recipient<DeviceReadmitted>,
}

impl Registry {
    /// An empty registry dropping agents silent for `heartbeat_timeout`.
    pub fn new(heartbeat_timeout: Duration, metrics: FarmMetrics) -> Self {
        Self {
            agents: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            quarantined_at: BTreeMap::new(),
            drained: BTreeSet::new(),
            next_agent: 1,
            heartbeat_timeout,
            metrics,
            scheduler: None,
        }
    }

    /// Tells the scheduler that the agent's usable devices can take shards.
    fn announce_up(&self, agent: u64) {
        let (Some(s), Some(a)) = (&self.scheduler, self.agents.get(&agent)) else { return };
        if a.draining {
            return;
        }
        for d in &a.devices {
            let id = DeviceId { agent, index: d.index };
            if !self.quarantined.contains_key(&id) && !self.drained.contains(&id) {
                let entry = DeviceEntry { id, agent_name: a.name.clone(), advert: d.clone() };
                s.up.do_send(DeviceUp { entry, link: a.link() });
            }
        }
    }

    /// Tells the scheduler that the agent's devices stop taking shards.
    fn announce_down(&self, agent: u64, devices: &[DeviceAdvert], why: Removal) {
        if let Some(s) = &self.scheduler {
            for d in devices {
                s.down.do_send(DeviceDown { device: DeviceId { agent, index: d.index }, why });
            }
        }
    }

    fn publish(&self) {
        let mut devices = 0;
        let mut usable = 0;
        let mut usable_ops = 0.0;
        for (&agent, entry) in &self.agents {
            for d in &entry.devices {
                devices += 1;
                let id = DeviceId { agent, index: d.index };
                if !entry.draining
                    && !self.quarantined.contains_key(&id)
                    && !self.drained.contains(&id)
                {
                    usable += 1;
                    usable_ops += d.measured_ops_per_sec;
                }
            }
        }
        self.metrics.connected(
            self.agents.len(),
            devices,
            self.quarantined.len(),
            usable,
            usable_ops,
        );
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = (self.heartbeat_timeout / 4).max(Duration::from_millis(20));
        ctx.run_interval(every, |this, _| {
            let now = Instant::now();
            let stale: Vec<u64> = this
                .agents
                .iter()
                .filter(|(_, a)| now.duration_since(a.last_heartbeat) > this.heartbeat_timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                if let Some(a) = this.agents.remove(&id) {
                    tracing::warn!(agent = id, name = %a.name, "no heartbeat: dropping the agent");
                    a.conn.close(CLOSE_HEARTBEAT.into(), b"heartbeat timeout");
                    this.announce_down(id, &a.devices, Removal::Gone);
                }
            }
            this.publish();
        });
    }
}

/// An agent passed the handshake: answers its id.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct Register {
    /// Its name.
    pub name: String,
    /// Its devices.
    pub devices: Vec<DeviceAdvert>,
    /// Its connection.
    pub conn: quinn::Connection,
    /// The protocol version of its `Hello`.
    pub protocol_version: u16,
}

impl Handler<Register> for Registry {
    type Result = u64;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> u64 {
        let id = self.next_agent;
        self.next_agent += 1;
        self.agents.insert(
            id,
            AgentEntry {
                name: msg.name,
                conn: msg.conn,
                protocol_version: msg.protocol_version,
                devices: msg.devices,
                last_heartbeat: Instant::now(),
                draining: false,
                reports: BTreeMap::new(),
            },
        );
        self.publish();
        self.announce_up(id);
        id
    }
}

/// An agent's heartbeat.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Heartbeat {
    /// The agent.
    pub agent: u64,
}

impl Handler<Heartbeat> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Heartbeat, _: &mut Self::Context) {
        if let Some(a) = self.agents.get_mut(&msg.agent) {
            a.last_heartbeat = Instant::now();
        }
    }
}

/// An agent announced it is draining (or stopped draining).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentState {
    /// The agent.
    pub agent: u64,
    /// Whether it takes no new shard.
    pub draining: bool,
}

impl Handler<AgentState> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AgentState, _: &mut Self::Context) {
        let Some(a) = self.agents.get_mut(&msg.agent) else { return };
        if a.draining == msg.draining {
            return;
        }
        a.draining = msg.draining;
        if msg.draining {
            tracing::info!(agent = msg.agent, name = %a.name, "agent is draining");
            let devices = a.devices.clone();
            self.announce_down(msg.agent, &devices, Removal::Draining);
        } else {
            self.announce_up(msg.agent);
        }
        self.publish();
    }
}

/// An agent's connection ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentGone {
    /// The agent.
    pub agent: u64,
    /// Why.
    pub reason: String,
}

impl Handler<AgentGone> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AgentGone, _: &mut Self::Context) {
        if let Some(a) = self.agents.remove(&msg.agent) {
            tracing::info!(agent = msg.agent, name = %a.name, reason = %msg.reason, "agent left");
            self.drained.retain(|d| d.agent != msg.agent);
            self.announce_down(msg.agent, &a.devices, Removal::Gone);
        }
        self.publish();
    }
}

/// Marks a device as wrong or broken (a failed spot check, or the agent's own quarantine): it gets no more
/// shards.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Quarantine {
    /// The device.
    pub device: DeviceId,
    /// Why (logged, and shown by [`ListDevices`]).
    pub reason: String,
}

impl Handler<Quarantine> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Quarantine, _: &mut Self::Context) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.quarantined.entry(msg.device) {
            e.insert(msg.reason.clone());
            self.quarantined_at.insert(msg.device, SystemTime::now());
            tracing::error!(device = %msg.device, reason = %msg.reason, "device quarantined");
            self.metrics.quarantined_device();
            if let Some(s) = &self.scheduler {
                s.down.do_send(DeviceDown { device: msg.device, why: Removal::Quarantined });
            }
        }
        self.publish();
    }
}

/// Sends device events to `up` and `down` from now on, starting with every usable device connected now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Where a device that can take shards is announced.
    pub up: Recipient<DeviceUp>,
    /// Where a device that stops is announced.
    pub down: Recipient<DeviceDown>,
    /// Where a device whose quarantine an operator lifted is announced.
    pub readmitted: Recipient<DeviceReadmitted>,
}

impl Handler<Subscribe> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.scheduler =
            Some(Subscriber { up: msg.up, down: msg.down, readmitted: msg.readmitted });
        let agents: Vec<u64> = self.agents.keys().copied().collect();
        for agent in agents {
            self.announce_up(agent);
        }
    }
}

/// Every connected device with its state, for operators.
#[derive(Debug, Message)]
#[rtype(result = "Vec<DeviceStatus>")]
pub struct ListDevices;

impl Handler<ListDevices> for Registry {
    type Result = Vec<DeviceStatus>;

    fn handle(&mut self, _: ListDevices, _: &mut Self::Context) -> Vec<DeviceStatus> {
        let mut out = Vec::new();
        for (&agent, a) in &self.agents {
            for d in &a.devices {
                let id = DeviceId { agent, index: d.index };
                out.push(DeviceStatus {
                    agent_id: agent,
                    device: id.to_string(),
                    agent: a.name.clone(),
                    name: d.name.clone(),
                    kind: d.kind.clone(),
                    memory_bytes: d.memory_bytes,
                    measured_ops_per_sec: d.measured_ops_per_sec,
                    draining: a.draining,
                    quarantined: self.quarantined.contains_key(&id),
                    quarantine_reason: self.quarantined.get(&id).cloned(),
                    host: a.conn.remote_address().to_string(),
                    index: d.index,
                    drained: self.drained.contains(&id),
                    quarantined_at_unix_ms: self.quarantined_at.get(&id).map(|t| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    }),
                    shards_in_flight: 0,
                    report: a.reports.get(&d.index).cloned(),
                    protocol_version: a.protocol_version,
                });
            }
        }
        out
    }
}

/// An operator drains (`drain: true`) or resumes devices: a drained device finishes the shards it holds and
/// gets no new one until resumed. Answers the devices it applied to, or why it applied to none.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<DeviceId>, String>")]
pub struct OperatorDrain {
    /// Which devices.
    pub target: Target,
    /// Drain (true) or resume (false).
    pub drain: bool,
}

impl Handler<OperatorDrain> for Registry {
    type Result = Result<Vec<DeviceId>, String>;

    fn handle(&mut self, msg: OperatorDrain, _: &mut Self::Context) -> Self::Result {
        let (agent, only) = match msg.target {
            Target::Device(d) => (d.agent, Some(d.index)),
            Target::Agent(a) => (a, None),
        };
        let Some(a) = self.agents.get(&agent) else {
            return Err(format!("no agent{agent} is connected"));
        };
        let devices: Vec<DeviceAdvert> =
            a.devices.iter().filter(|d| only.is_none_or(|i| i == d.index)).cloned().collect();
        if devices.is_empty() {
            return Err(format!("agent{agent} has no device {}", only.unwrap_or_default()));
        }
        let ids: Vec<DeviceId> =
            devices.iter().map(|d| DeviceId { agent, index: d.index }).collect();
        if msg.drain {
            let newly: Vec<DeviceAdvert> = devices
                .into_iter()
                .filter(|d| self.drained.insert(DeviceId { agent, index: d.index }))
                .collect();
            for d in &newly {
                tracing::info!(device = %DeviceId { agent, index: d.index }, "device drained by the operator");
            }
            self.announce_down(agent, &newly, Removal::Draining);
        } else {
            let mut resumed = false;
            for id in &ids {
                if self.drained.remove(id) {
                    tracing::info!(device = %id, "device resumed by the operator");
                    resumed = true;
                }
            }
            if resumed {
                // Announces every usable device of the agent; one that was up already is unchanged.
                self.announce_up(agent);
            }
        }
        self.publish();
        Ok(ids)
    }
}

/// What the self-test of a device needs: its agent's connection and advert, and whether it is quarantined.
#[derive(Debug, Clone)]
pub struct DeviceLookup {
    /// Its agent's connection.
    pub conn: quinn::Connection,
    /// What its agent announced.
    pub advert: DeviceAdvert,
    /// Why it is quarantined, if it is.
    pub quarantine_reason: Option<String>,
}

/// Finds a connected device.
#[derive(Debug, Message)]
#[rtype(result = "Option<DeviceLookup>")]
pub struct Lookup {
    /// The device.
    pub device: DeviceId,
}

impl Handler<Lookup> for Registry {
    type Result = Option<DeviceLookup>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        let a = self.agents.get(&msg.device.agent)?;
        let advert = a.devices.iter().find(|d| d.index == msg.device.index)?.clone();
        Some(DeviceLookup {
            conn: a.conn.clone(),
            advert,
            quarantine_reason: self.quarantined.get(&msg.device).cloned(),
        })
    }
}

/// Lifts a device's quarantine (after it passed its self-test): it takes shards again unless drained, and
/// the scheduler accepts its answers again. Answers an error when the device is not quarantined.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Readmit {
    /// The device.
    pub device: DeviceId,
}

impl Handler<Readmit> for Registry {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Readmit, _: &mut Self::Context) -> Self::Result {
        let id = msg.device;
        let Some(a) = self.agents.get(&id.agent) else {
            return Err(format!("{id} is not connected"));
        };
        let Some(advert) = a.devices.iter().find(|d| d.index == id.index).cloned() else {
            return Err(format!("{id} is not connected"));
        };
        if self.quarantined.remove(&id).is_none() {
            return Err(format!("{id} is not quarantined"));
        }
        self.quarantined_at.remove(&id);
        tracing::info!(device = %id, "device readmitted");
        if let Some(s) = &self.scheduler
            && !a.draining
            && !self.drained.contains(&id)
        {
            let entry = DeviceEntry { id, agent_name: a.name.clone(), advert };
            s.readmitted.do_send(DeviceReadmitted { entry, link: a.link() });
        }
        self.publish();
        Ok(())
    }
}

/// An agent's report of one device's counters and readings.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceReported {
    /// The agent.
    pub agent: u64,
    /// The report.
    pub report: DeviceReport,
}

impl Handler<DeviceReported> for Registry {
    type Result = ();

    fn handle(&mut self, msg: DeviceReported, _: &mut Self::Context) {
        let Some(a) = self.agents.get_mut(&msg.agent) else { return };
        // Only devices the agent announced: a peer cannot grow the map past its own devices. (The per-device
        // series of these counters are the agent's own metrics, labelled by host and GPU UUID.)
        if a.devices.iter().any(|d| d.index == msg.report.device) {
            a.reports.insert(msg.report.device, msg.report);
        }
    }
}
