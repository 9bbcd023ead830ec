//! A reference point for `make bench`, never shipped: the "trivial filter" the benchmark issue measures ksit
//! against (read `:path`, add a header, count), written as most proxy-wasm filters are, on the stock SDK:
//! its dispatcher and a context per stream, every callback exported, one host call per header read or
//! written and one per counted request. The bench runs it on its own listener beside ksit, so the two are
//! compared on the same machine in the same run.

#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(TrivialRoot { requests: 0 }));
}}

struct TrivialRoot {
    requests: u32,
}

impl Context for TrivialRoot {}

impl RootContext for TrivialRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.requests =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "trivial_requests")
                .unwrap_or(0);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Trivial {
            requests: self.requests,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Trivial {
    requests: u32,
}

impl Context for Trivial {}

impl HttpContext for Trivial {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self
            .get_http_request_header_bytes(":path")
            .unwrap_or_default();
        self.add_http_request_header_bytes("x-trivial-path-len", path.len().to_string().as_bytes());
        let _ = proxy_wasm::hostcalls::increment_metric(self.requests, 1);
        Action::Continue
    }
}
