//! `aer metadata` and `aer meta get|set`: the requests, and what is
//! printed.

use aer::client::InstanceRoute;
use aer::meta_args::{record_json, record_text, set_request, MetaCmd};
use aurae_proto::metadata as pb;
use aurae_proto::metadata::metadata_client::MetadataClient;
use tonic::transport::Channel;

use crate::{emit, fail, Command, OrExit};

pub async fn run(cmd: Command, channel: Channel, route: InstanceRoute, json: bool) {
    let mut meta = MetadataClient::with_interceptor(channel, route);
    let r = match cmd {
        Command::Meta(MetaCmd::Get { id }) => meta.get(pb::GetRequest { id }).await,
        Command::Meta(MetaCmd::Set {
            id,
            entries,
            remove,
        }) => {
            let req = set_request(id, &entries, remove).unwrap_or_else(|e| fail(e));
            meta.set(req).await
        }
        _ => meta.own(pb::OwnRequest {}).await,
    }
    .or_exit();
    if json {
        emit(&format!("{}\n", record_json(&r)));
    } else {
        emit(&record_text(&r));
    }
}
