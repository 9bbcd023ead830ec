//! One error type for the controller; each variant names a metric label, so failures are counted by kind.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig for cluster {cluster}: {message}")]
    Kubeconfig { cluster: String, message: String },
    #[error("cluster {cluster} unreachable: {message}")]
    Unreachable { cluster: String, message: String },
    #[error("cluster {cluster} did not answer within {seconds}s")]
    Timeout { cluster: String, seconds: u64 },
    #[error("{object}: the kind is not installed in the cluster (is Istio installed?)")]
    MissingKind { object: String },
    #[error("{object}: exists and is not managed by ksit; left untouched ({detail})")]
    NotOwned { object: String, detail: String },
    #[error("{object}: {message}")]
    Apply { object: String, message: String },
    #[error("hub: {0}")]
    Hub(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl Error {
    /// The `kind` label of `ksit_controller_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kubeconfig { .. } => "kubeconfig",
            Error::Unreachable { .. } => "unreachable",
            Error::Timeout { .. } => "timeout",
            Error::MissingKind { .. } => "missing_kind",
            Error::NotOwned { .. } => "not_owned",
            Error::Apply { .. } => "apply",
            Error::Hub(_) => "hub",
            Error::Kube(_) => "kube",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
