//! DescribeCluster: this node is the whole cluster and its controller.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use millrace_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: DescribeClusterRequest,
) -> Result<Vec<Bytes>, String> {
    let resp = DescribeClusterResponse {
        endpoint_type: req.endpoint_type,
        cluster_id: broker.topics.cluster_id().to_string(),
        controller_id: broker.node_id,
        brokers: vec![DescribeClusterBroker {
            broker_id: broker.node_id,
            host: broker.advertised_host.clone(),
            port: broker.advertised_port,
            rack: None,
            ..Default::default()
        }],
        cluster_authorized_operations: i32::MIN,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
