//! The HTTP API (axum), under `/v1`. SKELETON.

use std::sync::Arc;

use crate::Service;

/// The API's routes over `service`.
pub fn router(service: Arc<Service>) -> axum::Router {
    let _ = service;
    axum::Router::new()
}
