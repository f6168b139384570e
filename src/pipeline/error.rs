//! The pipeline's error: every stage's error, plus the outcomes an operation reports
//! to its caller (nothing found, refused in the current state).

use crate::archive::ArchiveError;
use crate::publish::PublishError;
use crate::source::SourceError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    NotFound(String),
    /// The operation is not allowed in the current state (e.g. erasing a held flow).
    #[error("{0}")]
    Refused(String),
}

/// The S3 compliance calls fail as the archive does.
impl From<crate::archive::ComplianceError> for PipelineError {
    fn from(e: crate::archive::ComplianceError) -> Self {
        PipelineError::Archive(e.into())
    }
}
