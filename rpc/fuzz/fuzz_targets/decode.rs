//! Every request message, `WireError` and status details decode without
//! panicking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    disk_io_rpc::fuzzing::decode_all(data);
});
