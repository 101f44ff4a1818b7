//! Entry points shared by the cargo-fuzz targets (`rpc/fuzz/`) and the
//! bounded random test that CI runs on stable (`tests/fuzz_smoke.rs`).
//! Neither may panic or hang on any input.

use std::time::Duration;

use disk_io_api::{DiskError, OpClass};
use prost::Message;
use tonic::{Code, Request, Status};

use crate::proto::disk_service_server::DiskService;
use crate::proto::*;
use crate::server::RpcServer;
use crate::{auth, methods, wire};

/// Decodes `data` as every request message, as a `WireError` (and back),
/// and as the details of a status.
pub fn decode_all(data: &[u8]) {
    let _ = DiskTarget::decode(data);
    let _ = VolRequest::decode(data);
    let _ = DeleteVolRequest::decode(data);
    let _ = PathRequest::decode(data);
    let _ = WriteAllRequest::decode(data);
    let _ = CreateFileRequest::decode(data);
    let _ = ReadFileAtRequest::decode(data);
    let _ = RenameRequest::decode(data);
    let _ = DeleteRequest::decode(data);
    let _ = AppendRequest::decode(data);
    let _ = SessionRequest::decode(data);
    let _ = Heartbeat::decode(data);
    let _ = LockArgs::decode(data);
    let _ = LeaseArgs::decode(data);
    let _ = NotifyMsg::decode(data);
    let _ = AdminMsg::decode(data);
    if let Ok(m) = DiskInfoMsg::decode(data) {
        let _ = wire::info_from_wire(m);
    }
    if let Ok(m) = VolInfoMsg::decode(data) {
        let _ = wire::vol_from_wire(m);
    }
    if let Ok(m) = FileInfoMsg::decode(data) {
        let _ = wire::file_from_wire(m);
    }
    if let Ok(w) = WireError::decode(data) {
        let e = wire::error_from_wire(w);
        let _ = wire::error_to_wire(&e);
    }
    let s = Status::with_details(Code::Unknown, "fuzz", data.to_vec().into());
    let _ = wire::status_to_error(OpClass::ReadAll, Duration::ZERO, &s);
}

/// Splits `data` into a volume and a path (at the first `0xff` byte, lossy
/// UTF-8) and sends a signed `stat_file`, `read_all`, `list_dir` and
/// `delete` for them straight to `server`'s handlers; returns the errors.
pub async fn path_requests(server: &RpcServer, secret: &[u8], data: &[u8]) -> Vec<DiskError> {
    let (vol, path) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let vol = String::from_utf8_lossy(vol).into_owned();
    let path = String::from_utf8_lossy(path).into_owned();
    let budget = Duration::from_secs(2);
    let msg = PathRequest {
        disk: 0,
        vol: vol.clone(),
        path: path.clone(),
    };
    fn signed<T: Message>(secret: &[u8], method: &str, budget: Duration, m: T) -> Request<T> {
        let mut r = Request::new(m);
        auth::sign(secret, method, budget, &mut r);
        r
    }
    let mut errors = Vec::new();
    let mut note =
        |s: Status| errors.push(wire::status_to_error(OpClass::Probe, Duration::ZERO, &s));
    if let Err(s) = server
        .stat_file(signed(secret, methods::STAT_FILE, budget, msg.clone()))
        .await
    {
        note(s);
    }
    if let Err(s) = server
        .read_all(signed(secret, methods::READ_ALL, budget, msg.clone()))
        .await
    {
        note(s);
    }
    if let Err(s) = server
        .list_dir(signed(secret, methods::LIST_DIR, budget, msg))
        .await
    {
        note(s);
    }
    let del = DeleteRequest {
        disk: 0,
        vol,
        path,
        recursive: false,
    };
    if let Err(s) = server
        .delete(signed(secret, methods::DELETE, budget, del))
        .await
    {
        note(s);
    }
    errors
}
