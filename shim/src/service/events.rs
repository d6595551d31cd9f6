//! Task events to containerd, in the order containerd requires (create before start, exec-added
//! before exec-started, exit before delete). Events go through ONE queue (the crate's
//! RemotePublisher), so the order of `publish` calls is the order containerd sees.

use std::time::SystemTime;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

pub enum Event {
    Create {
        id: String,
        bundle: String,
        pid: u32,
        stdin: String,
        stdout: String,
        stderr: String,
        terminal: bool,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    /// `exec_id` is the container id for the init process, as containerd expects.
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Delete {
        id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Oom {
        id: String,
    },
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

impl Event {
    fn into_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create { id, bundle, pid, stdin, stdout, stderr, terminal } => (
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id,
                    bundle,
                    pid,
                    io: Some(TaskIO { stdin, stdout, stderr, terminal, ..Default::default() }).into(),
                    ..Default::default()
                }),
            ),
            Event::Start { id, pid } => {
                (topics::TASK_START_EVENT_TOPIC, Box::new(TaskStart { container_id: id, pid, ..Default::default() }))
            }
            Event::ExecAdded { id, exec_id } => (
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded { container_id: id, exec_id, ..Default::default() }),
            ),
            Event::ExecStarted { id, exec_id, pid } => (
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted { container_id: id, exec_id, pid, ..Default::default() }),
            ),
            Event::Exit { id, exec_id, pid, status, at } => (
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id,
                    id: exec_id,
                    pid,
                    exit_status: status,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Delete { id, pid, status, at } => (
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: id.clone(),
                    id,
                    pid,
                    exit_status: status,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Paused { id } => {
                (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: id, ..Default::default() }))
            }
            Event::Resumed { id } => {
                (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: id, ..Default::default() }))
            }
            Event::Oom { id } => {
                (topics::TASK_OOM_EVENT_TOPIC, Box::new(TaskOOM { container_id: id, ..Default::default() }))
            }
        }
    }
}

pub struct Publisher {
    remote: RemotePublisher,
    namespace: String,
}

impl Publisher {
    pub fn new(remote: RemotePublisher, namespace: &str) -> Publisher {
        Publisher { remote, namespace: namespace.to_string() }
    }

    /// Queues an event; failures are logged (containerd retries state through Wait/State anyway).
    pub async fn publish(&self, event: Event) {
        let (topic, msg) = event.into_message();
        if let Err(e) = self.remote.publish(Context::default(), topic, &self.namespace, msg).await {
            log::warn!("publishing {topic} to containerd: {e}");
        }
    }
}
