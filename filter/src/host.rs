//! The few proxy-wasm host calls used on the request path, called directly so that an unexpected host
//! status is reported to the caller instead of panicking inside the SDK (a panic traps the VM).

use crate::header_map;

const REQUEST_HEADERS: u32 = 0; // MapType::HttpRequestHeaders
const STREAM_HTTP_REQUEST: u32 = 0; // StreamType::HttpRequest
const OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    #[cfg(feature = "bench-stages")]
    fn proxy_get_header_map_value(
        map_type: u32,
        k: *const u8,
        kl: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        k: *const u8,
        kl: usize,
        v: *const u8,
        vl: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, k: *const u8, kl: usize) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
}

/// The buffer a host call hands over: `call` gets where the host writes the pointer and size of a buffer
/// it allocated through the SDK's exported allocator. `None` when the call fails; empty when the host
/// returns no bytes.
fn host_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if call(&mut data, &mut size) != OK {
        return None;
    }
    if data.is_null() {
        return (size == 0).then(Vec::new);
    }
    // SAFETY: the host allocated `size` bytes through the SDK's allocator (a boxed slice of exactly
    // `size` bytes), whose ownership passes to us.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// All request headers in one serialized buffer (owned; parse with `header_map::parse`).
pub fn request_headers() -> Option<Vec<u8>> {
    // SAFETY: the out-pointers are live for the call.
    host_buffer(|data, size| unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, data, size) })
        .filter(|b| !b.is_empty())
}

/// One request header's value (benchmark builds only: the filter reads every header in one call).
#[cfg(feature = "bench-stages")]
pub fn request_header_value(name: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: `name` and the out-pointers are live for the call.
    host_buffer(|data, size| unsafe {
        proxy_get_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len(), data, size)
    })
}

/// A property of the current context (`path`: its segments joined by NUL), e.g. `plugin_name`.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: `path` and the out-pointers are live for the call.
    host_buffer(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

/// Sets a property of the current stream (Envoy keeps it in the stream's filter state as `wasm.PATH`).
pub fn set_property(path: &[u8], value: &[u8]) -> bool {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) == OK }
}

pub fn set_request_header(name: &str, value: &[u8]) -> bool {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unsafe {
        proxy_replace_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        ) == OK
    }
}

pub fn remove_request_header(name: &str) -> bool {
    // SAFETY: as above.
    unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) == OK }
}

pub fn resume_request() -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) == OK }
}

/// Makes later calls act on stream `context_id`; false when that stream no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_effective_context(context_id) == OK }
}

pub fn increment(metric: u32, by: i64) {
    // SAFETY: no pointers. A missing metric is not worth failing a request for.
    unsafe {
        proxy_increment_metric(metric, by);
    }
}

/// Sets a gauge.
pub fn record(metric: u32, value: u64) {
    // SAFETY: no pointers.
    unsafe {
        proxy_record_metric(metric, value);
    }
}

/// The VM's linear memory in bytes (it only ever grows: a high-water mark of what the filter needed).
pub fn memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

pub fn now_ms() -> u64 {
    let mut t: u64 = 0;
    // SAFETY: `t` is a live u64.
    unsafe {
        proxy_get_current_time_nanoseconds(&mut t);
    }
    t / 1_000_000
}

pub fn set_tick_period_ms(ms: u32) {
    // SAFETY: no pointers.
    unsafe {
        proxy_set_tick_period_milliseconds(ms);
    }
}

/// Answers the current request locally. `grpc_status` < 0 means a plain HTTP reply.
pub fn send_local_response(
    status: u32,
    details: &str,
    body: &[u8],
    headers: &[(&[u8], &[u8])],
    grpc_status: i32,
) -> bool {
    let hdrs = header_map::serialize(headers);
    // SAFETY: all pointers describe live slices for the duration of the call.
    unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            hdrs.as_ptr(),
            hdrs.len(),
            grpc_status,
        ) == OK
    }
}
