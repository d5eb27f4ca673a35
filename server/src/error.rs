//! How terad's failures become gRPC statuses. Every refusal of the metadata model maps to one
//! code by its kind (never by its text), and the message says what was wrong and what to do.
//! The table is in docs/architecture.md ("Server"), and the tests below keep the two in step.

use tera_engine::meta::MetaError;
use tonic::{Code, Status};

/// The status for a metadata error.
pub fn meta_status(e: MetaError) -> Status {
    let msg = e.to_string();
    match e {
        MetaError::NotFound(_) => Status::not_found(msg),
        MetaError::AlreadyExists(_) => Status::already_exists(format!(
            "{msg} (choose another name, or move or delete the existing entry first)"
        )),
        MetaError::NotAFolder(_) => Status::failed_precondition(format!(
            "{msg} (a file is where a folder is needed)"
        )),
        MetaError::IsAFolder(_) => Status::failed_precondition(format!(
            "{msg} (a folder is where a file is needed)"
        )),
        MetaError::NotEmpty(_) => Status::failed_precondition(msg),
        // If-None-Match fails because the entry exists: no etag was read.
        MetaError::PreconditionFailed(m) if m.contains("If-None-Match") => Status::failed_precondition(
            format!("{msg}: something is already there (stat it, or upload with if_match its etag to replace it)"),
        ),
        MetaError::PreconditionFailed(_) => Status::failed_precondition(format!(
            "{msg}: the entry changed since its etag was read; stat it again and retry with the current etag"
        )),
        MetaError::InvalidPath { .. } => Status::invalid_argument(msg),
        MetaError::CursorTooOld { .. } => Status::out_of_range(msg),
        MetaError::CursorAhead { .. } => Status::invalid_argument(msg),
        MetaError::OutOfBounds(_) => Status::invalid_argument(msg),
        MetaError::Engine(e) => engine_status(e),
        // `MetaError` is non-exhaustive: a new kind is an internal error until mapped here.
        _ => Status::internal(msg),
    }
}

/// The status for an engine error reaching the server outside the metadata model's own kinds.
pub fn engine_status(e: tera_engine::Error) -> Status {
    use tera_engine::Error as E;
    let msg = e.to_string();
    match e {
        E::KeyTooLarge { .. } | E::ValueTooLarge { .. } => Status::invalid_argument(format!(
            "{msg}: the entry (its name, attributes and other fields together) is too large"
        )),
        E::BatchTooLarge { .. } => Status::invalid_argument(msg),
        E::Compacted { .. } => Status::out_of_range(msg),
        E::BudgetExhausted(_) => Status::resource_exhausted(msg),
        // The storage's own limit, not a fault: a restart starts the log's addresses again
        // (the far tier is rebuilt from the checkpoint and the log).
        E::AddressSpaceExhausted(_) => Status::resource_exhausted(format!(
            "{msg}: a partition of the server's storage has used all of its log addresses; \
             restarting the server starts them again"
        )),
        E::Poisoned(_) => Status::unavailable(format!(
            "{msg}; the server refuses writes until it is restarted (reads of what was made durable go on)"
        )),
        E::NotDurable(_) => Status::unavailable(format!(
            "{msg}; restart the server to read this namespace again"
        )),
        // The write that led a failed log flush gets the failure itself (those that shared
        // the flush get `Poisoned`); a far-tier read can fail on the device too.
        E::Io { .. } => Status::unavailable(format!(
            "{msg}: the server's storage failed. A write answered so was not acknowledged: \
             after a restart it is there whole or not at all; if the write-ahead log failed, \
             the server refuses writes until it is restarted"
        )),
        E::Corrupt { .. } => Status::data_loss(format!(
            "{msg}: the server refuses to answer from data that does not check out (damaged \
             on its device, or inconsistent)"
        )),
        _ => Status::internal(msg),
    }
}

/// A request field over its limit.
pub fn oversized(field: &str, len: usize, max: usize) -> Status {
    Status::invalid_argument(format!(
        "{field} is {len} bytes, more than the limit of {max} bytes"
    ))
}

/// The gRPC code's name as the metrics label it is recorded under (`OK`, `NOT_FOUND`, ...).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: MetaError) -> Code {
        meta_status(e).code()
    }

    #[test]
    fn metadata_errors_map_to_their_codes() {
        let s = || "/a/b".to_string();
        assert_eq!(code(MetaError::NotFound(s())), Code::NotFound);
        assert_eq!(code(MetaError::AlreadyExists(s())), Code::AlreadyExists);
        assert_eq!(code(MetaError::NotAFolder(s())), Code::FailedPrecondition);
        assert_eq!(code(MetaError::IsAFolder(s())), Code::FailedPrecondition);
        assert_eq!(code(MetaError::NotEmpty(s())), Code::FailedPrecondition);
        assert_eq!(
            code(MetaError::PreconditionFailed(s())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(MetaError::InvalidPath {
                path: "a".into(),
                reason: "not absolute".into()
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(MetaError::CursorTooOld {
                cursor: 3,
                oldest: 10
            }),
            Code::OutOfRange
        );
        assert_eq!(
            code(MetaError::CursorAhead {
                cursor: 30,
                revision: 10
            }),
            Code::InvalidArgument
        );
        let none_match = meta_status(MetaError::PreconditionFailed(
            "/a exists (If-None-Match)".into(),
        ));
        assert!(
            !none_match.message().contains("etag was read"),
            "{}",
            none_match.message()
        );
    }

    #[test]
    fn engine_errors_map_by_kind() {
        let e = tera_engine::Error::ValueTooLarge { len: 9, max: 1 };
        assert_eq!(code(MetaError::Engine(e)), Code::InvalidArgument);
        let e = tera_engine::Error::Poisoned("fsync failed".into());
        assert_eq!(code(MetaError::Engine(e)), Code::Unavailable);
        let e = tera_engine::Error::AddressSpaceExhausted("partition 3".into());
        assert_eq!(code(MetaError::Engine(e)), Code::ResourceExhausted);
        let e = tera_engine::Error::NotDurable("fsync failed".into());
        assert_eq!(code(MetaError::Engine(e)), Code::Unavailable);
        let e = tera_engine::Error::Io {
            op: "write",
            path: "wal-0.log".into(),
            source: std::io::Error::from_raw_os_error(libc::EFBIG),
        };
        assert_eq!(code(MetaError::Engine(e)), Code::Unavailable);
        let e = tera_engine::Error::Corrupt {
            path: "far/seg-1".into(),
            offset: 8,
            reason: "checksum".into(),
        };
        assert_eq!(code(MetaError::Engine(e)), Code::DataLoss);
        let e = tera_engine::Error::Config("x".into());
        assert_eq!(code(MetaError::Engine(e)), Code::Internal);
    }

    #[test]
    fn messages_say_what_to_do() {
        let m = meta_status(MetaError::PreconditionFailed("/f: etag 2, not 1".into()));
        assert!(m.message().contains("stat it again"), "{}", m.message());
        let m = meta_status(MetaError::CursorTooOld {
            cursor: 1,
            oldest: 5,
        });
        assert!(
            m.message()
                .contains("revision (usage) first, then list it again"),
            "{}",
            m.message()
        );
        assert_eq!(oversized("mime", 300, 255).code(), Code::InvalidArgument);
    }
}
