//! `aer pod ...` and `aer vm ...`: the requests, and what is printed.

use aer::client::Client;
use aer::pod_args::{pod_json, pod_line, PodCmd};
use aer::vm_args::{vm_json, vm_line, VmCmd};
use aurae_proto::runtime as pb;

use crate::{emit, fail, OrExit};

fn line(text: impl std::fmt::Display) {
    emit(&format!("{text}\n"));
}

pub async fn pod(cmd: PodCmd, client: &mut Client, json: bool) {
    match cmd {
        PodCmd::Run(a) => {
            let req = (*a).request().unwrap_or_else(|e| fail(e));
            let r = client.run_pod(req).await.or_exit();
            let pod = r.pod.unwrap_or_default();
            if json {
                line(pod_json(&r.name, &pod));
            } else {
                line(pod_line(&r.name, &pod));
            }
        }
        PodCmd::Ls => {
            let listed = client.list(pb::ListRequest {}).await.or_exit();
            let pods = listed
                .workloads
                .iter()
                .filter_map(|w| w.pod.as_ref().map(|p| (w.id.as_str(), p)));
            if json {
                line(serde_json::Value::Array(
                    pods.map(|(n, p)| pod_json(n, p)).collect(),
                ));
            } else {
                for (n, p) in pods {
                    line(pod_line(n, p));
                }
            }
        }
    }
}

pub async fn vm(cmd: VmCmd, client: &mut Client, json: bool) {
    match cmd {
        VmCmd::Run(a) => {
            let req = (*a).request().unwrap_or_else(|e| fail(e));
            let r = client.run_virtual_machine(req).await.or_exit();
            let vm = r.vm.unwrap_or_default();
            if json {
                line(vm_json(&vm));
            } else {
                line(vm_line(&vm));
            }
        }
        VmCmd::Ls => {
            let listed = client.list(pb::ListRequest {}).await.or_exit();
            let vms = listed.workloads.iter().filter_map(|w| w.vm.as_ref());
            if json {
                line(serde_json::Value::Array(vms.map(vm_json).collect()));
            } else {
                for v in vms {
                    line(vm_line(v));
                }
            }
        }
    }
}
