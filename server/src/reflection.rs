//! Server reflection, `grpc.reflection.v1` and `grpc.reflection.v1alpha` (many clients,
//! Python's grpcio-reflection among them, speak only the older one). Both answer from one
//! [`Catalog`] built from the descriptor set that build.rs compiled: the services, each file
//! by name, and the file declaring a symbol (package-qualified message, enum, service or
//! method), each file sent with its transitive dependencies.

use crate::proto::DESCRIPTOR_SET;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tonic::Code;

/// Every file of the descriptor set, indexed.
#[derive(Debug, Default)]
pub struct Catalog {
    /// File name → (encoded FileDescriptorProto, its dependencies).
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully-qualified symbol (no leading dot) → file name.
    symbols: HashMap<String, String>,
    /// Fully-qualified message names (for extension-number queries).
    messages: HashSet<String>,
    services: Vec<String>,
}

/// What a reflection request asks, whatever the protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    FileByFilename(String),
    FileContainingSymbol(String),
    FileContainingExtension(String, i32),
    AllExtensionNumbersOfType(String),
    ListServices,
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Encoded FileDescriptorProtos: the file asked for first, then its dependencies.
    Files(Vec<Vec<u8>>),
    ExtensionNumbers(String, Vec<i32>),
    Services(Vec<String>),
    Error(Code, String),
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Catalog {
    /// The catalog of terad's own descriptor set.
    pub fn terad() -> Result<Catalog, prost::DecodeError> {
        Catalog::from_set(FileDescriptorSet::decode(DESCRIPTOR_SET)?)
    }

    pub fn from_set(set: FileDescriptorSet) -> Result<Catalog, prost::DecodeError> {
        let mut c = Catalog::default();
        for f in set.file {
            let name = f.name().to_string();
            let pkg = f.package().to_string();
            for m in &f.message_type {
                c.add_message(&pkg, m, &name);
            }
            for e in &f.enum_type {
                c.symbols.insert(join(&pkg, e.name()), name.clone());
            }
            for s in &f.service {
                let full = join(&pkg, s.name());
                for m in &s.method {
                    c.symbols.insert(join(&full, m.name()), name.clone());
                }
                c.symbols.insert(full.clone(), name.clone());
                c.services.push(full);
            }
            for x in &f.extension {
                c.symbols.insert(join(&pkg, x.name()), name.clone());
            }
            c.files
                .insert(name, (f.encode_to_vec(), f.dependency.clone()));
        }
        c.services.sort();
        Ok(c)
    }

    fn add_message(&mut self, prefix: &str, m: &DescriptorProto, file: &str) {
        let full = join(prefix, m.name());
        for n in &m.nested_type {
            self.add_message(&full, n, file);
        }
        for e in &m.enum_type {
            self.symbols.insert(join(&full, e.name()), file.into());
        }
        self.symbols.insert(full.clone(), file.into());
        self.messages.insert(full);
    }

    /// The services, fully qualified.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// `name` and its transitive dependencies, `name` first.
    fn with_deps(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            let (bytes, deps) = self.files.get(&n)?;
            out.push(bytes.clone());
            todo.extend(deps.iter().rev().cloned());
        }
        Some(out)
    }

    /// Answer one query.
    pub fn answer(&self, q: &Query) -> Answer {
        match q {
            Query::ListServices => Answer::Services(self.services.clone()),
            Query::FileByFilename(f) => self.with_deps(f).map(Answer::Files).unwrap_or_else(|| {
                Answer::Error(Code::NotFound, format!("file {f:?} is not known to terad"))
            }),
            Query::FileContainingSymbol(s) => {
                let s = s.strip_prefix('.').unwrap_or(s);
                self.symbols
                    .get(s)
                    .and_then(|f| self.with_deps(f))
                    .map(Answer::Files)
                    .unwrap_or_else(|| {
                        Answer::Error(
                            Code::NotFound,
                            format!("symbol {s:?} is not known to terad"),
                        )
                    })
            }
            Query::FileContainingExtension(t, n) => Answer::Error(
                Code::NotFound,
                format!("no extension {n} of {t:?}: terad's protos declare no extensions"),
            ),
            Query::AllExtensionNumbersOfType(t) => {
                let t = t.strip_prefix('.').unwrap_or(t);
                if self.messages.contains(t) {
                    Answer::ExtensionNumbers(t.into(), Vec::new())
                } else {
                    Answer::Error(
                        Code::NotFound,
                        format!("message type {t:?} is not known to terad"),
                    )
                }
            }
        }
    }
}

/// Implements one version of the reflection service over a [`Catalog`]; the two versions'
/// generated types differ only in their module.
macro_rules! reflection_version {
    ($(#[$doc:meta])* $svc:ident, $ver:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $svc {
            catalog: Arc<Catalog>,
            draining: tokio::sync::watch::Receiver<bool>,
        }

        impl $svc {
            pub fn new(catalog: Arc<Catalog>, draining: tokio::sync::watch::Receiver<bool>) -> Self {
                Self { catalog, draining }
            }
        }

        #[tonic::async_trait]
        impl crate::proto::reflection::$ver::server_reflection_server::ServerReflection for $svc {
            type ServerReflectionInfoStream = tokio_stream::wrappers::ReceiverStream<
                Result<crate::proto::reflection::$ver::ServerReflectionResponse, tonic::Status>,
            >;

            async fn server_reflection_info(
                &self,
                req: tonic::Request<tonic::Streaming<crate::proto::reflection::$ver::ServerReflectionRequest>>,
            ) -> Result<tonic::Response<Self::ServerReflectionInfoStream>, tonic::Status> {
                use crate::proto::reflection::$ver as pb;
                use pb::server_reflection_request::MessageRequest as Rq;
                use pb::server_reflection_response::MessageResponse as Rs;
                let mut incoming = req.into_inner();
                let catalog = self.catalog.clone();
                let mut draining = self.draining.clone();
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    loop {
                        let msg = tokio::select! {
                            m = incoming.message() => m,
                            _ = crate::state::drained(&mut draining) => return,
                        };
                        let request = match msg {
                            Ok(Some(r)) => r,
                            Ok(None) => return,
                            Err(s) => {
                                let _ = tx.send(Err(s)).await;
                                return;
                            }
                        };
                        let query = match &request.message_request {
                            Some(Rq::FileByFilename(f)) => Some(Query::FileByFilename(f.clone())),
                            Some(Rq::FileContainingSymbol(s)) => {
                                Some(Query::FileContainingSymbol(s.clone()))
                            }
                            Some(Rq::FileContainingExtension(e)) => Some(
                                Query::FileContainingExtension(e.containing_type.clone(), e.extension_number),
                            ),
                            Some(Rq::AllExtensionNumbersOfType(t)) => {
                                Some(Query::AllExtensionNumbersOfType(t.clone()))
                            }
                            Some(Rq::ListServices(_)) => Some(Query::ListServices),
                            None => None,
                        };
                        let answer = match &query {
                            Some(q) => catalog.answer(q),
                            None => Answer::Error(
                                tonic::Code::InvalidArgument,
                                "the request sets no message_request".into(),
                            ),
                        };
                        let message_response = match answer {
                            Answer::Files(files) => Rs::FileDescriptorResponse(pb::FileDescriptorResponse {
                                file_descriptor_proto: files,
                            }),
                            Answer::ExtensionNumbers(base_type_name, extension_number) => {
                                Rs::AllExtensionNumbersResponse(pb::ExtensionNumberResponse {
                                    base_type_name,
                                    extension_number,
                                })
                            }
                            Answer::Services(names) => Rs::ListServicesResponse(pb::ListServiceResponse {
                                service: names.into_iter().map(|name| pb::ServiceResponse { name }).collect(),
                            }),
                            Answer::Error(code, error_message) => Rs::ErrorResponse(pb::ErrorResponse {
                                error_code: code as i32,
                                error_message,
                            }),
                        };
                        let response = pb::ServerReflectionResponse {
                            valid_host: request.host.clone(),
                            original_request: Some(request),
                            message_response: Some(message_response),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
            }
        }
    };
}

reflection_version!(
    /// `grpc.reflection.v1.ServerReflection`.
    ReflectionV1,
    v1
);
reflection_version!(
    /// `grpc.reflection.v1alpha.ServerReflection`.
    ReflectionV1Alpha,
    v1alpha
);

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::FileDescriptorProto;

    fn file_names(a: &Answer) -> Vec<String> {
        match a {
            Answer::Files(fs) => fs
                .iter()
                .map(|b| {
                    FileDescriptorProto::decode(&b[..])
                        .map(|f| f.name().to_string())
                        .unwrap_or_default()
                })
                .collect(),
            other => panic!("not files: {other:?}"),
        }
    }

    #[test]
    fn lists_every_service() {
        let c = Catalog::terad().expect("descriptor set decodes");
        assert_eq!(
            c.answer(&Query::ListServices),
            Answer::Services(vec![
                "grpc.health.v1.Health".into(),
                "grpc.reflection.v1.ServerReflection".into(),
                "grpc.reflection.v1alpha.ServerReflection".into(),
                "tera.auth.v1.Auth".into(),
                "tera.meta.v1.Metadata".into(),
            ])
        );
    }

    #[test]
    fn finds_files_by_name_and_by_symbol() {
        let c = Catalog::terad().expect("descriptor set decodes");
        let meta = "tera/meta/v1/meta.proto".to_string();
        for s in [
            "tera.meta.v1.Metadata",
            "tera.meta.v1.Metadata.Stat",
            ".tera.meta.v1.Entry",
            "tera.meta.v1.Kind",
            "tera.meta.v1.StatRequest",
        ] {
            let a = c.answer(&Query::FileContainingSymbol(s.into()));
            assert_eq!(file_names(&a), vec![meta.clone()], "{s}");
        }
        let a = c.answer(&Query::FileByFilename("grpc/health/v1/health.proto".into()));
        assert_eq!(
            file_names(&a),
            vec!["grpc/health/v1/health.proto".to_string()]
        );
        // A nested message.
        let a = c.answer(&Query::FileContainingSymbol(
            "grpc.health.v1.HealthCheckResponse.ServingStatus".into(),
        ));
        assert_eq!(
            file_names(&a),
            vec!["grpc/health/v1/health.proto".to_string()]
        );
        assert!(matches!(
            c.answer(&Query::FileContainingSymbol("no.Such".into())),
            Answer::Error(Code::NotFound, _)
        ));
        assert!(matches!(
            c.answer(&Query::FileByFilename("nope.proto".into())),
            Answer::Error(Code::NotFound, _)
        ));
        assert_eq!(
            c.answer(&Query::AllExtensionNumbersOfType(
                "tera.meta.v1.Entry".into()
            )),
            Answer::ExtensionNumbers("tera.meta.v1.Entry".into(), vec![])
        );
    }

    #[test]
    fn sends_dependencies_after_the_file() {
        let set = FileDescriptorSet {
            file: vec![
                FileDescriptorProto {
                    name: Some("b.proto".into()),
                    ..Default::default()
                },
                FileDescriptorProto {
                    name: Some("a.proto".into()),
                    dependency: vec!["b.proto".into()],
                    message_type: vec![DescriptorProto {
                        name: Some("A".into()),
                        ..Default::default()
                    }],
                    package: Some("p".into()),
                    ..Default::default()
                },
            ],
        };
        let c = Catalog::from_set(set).expect("catalog");
        let a = c.answer(&Query::FileContainingSymbol("p.A".into()));
        assert_eq!(
            file_names(&a),
            vec!["a.proto".to_string(), "b.proto".to_string()]
        );
    }
}
