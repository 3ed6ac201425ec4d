//! `aer metadata` and `aer meta get|set`: the requests, and what is
//! printed.

use aer::client::InstanceRoute;
use aer::meta_args::{record_json, record_text, set_request, split_set_args, target, MetaCmd};
use aurae_proto::metadata as pb;
use aurae_proto::metadata::metadata_client::MetadataClient;
use tonic::transport::Channel;

use crate::{emit, fail, Command, OrExit};

/// `instance` is `--instance`: where `aer metadata` is sent, or for
/// `meta`, whose record it is when no ID is given (see [`target`]).
pub async fn run(cmd: Command, channel: Channel, instance: Option<String>, json: bool) {
    let client = |route: Option<&str>| {
        let route = InstanceRoute::new(route).unwrap_or_else(|e| fail(e));
        MetadataClient::with_interceptor(channel.clone(), route)
    };
    let r = match cmd {
        Command::Meta(MetaCmd::Get { id }) => {
            let t = target(instance.as_deref(), id.as_deref()).unwrap_or_else(|e| fail(e));
            client(t.route.as_deref())
                .get(pb::GetRequest { id: t.id })
                .await
        }
        Command::Meta(MetaCmd::Set { args, remove }) => {
            let (id, entries) = split_set_args(instance.as_deref(), &args);
            let t = target(instance.as_deref(), id.as_deref()).unwrap_or_else(|e| fail(e));
            let req = set_request(t.id, &entries, remove).unwrap_or_else(|e| fail(e));
            client(t.route.as_deref()).set(req).await
        }
        _ => client(instance.as_deref()).own(pb::OwnRequest {}).await,
    }
    .or_exit();
    if json {
        emit(&format!("{}\n", record_json(&r)));
    } else {
        emit(&record_text(&r));
    }
}
