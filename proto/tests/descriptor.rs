//! The reflection descriptor set: it decodes, names both packages and every service, and carries
//! the contracts' rules (a comment on every element, UNSPECIFIED = 0 first in every enum).

use std::collections::HashSet;

use fovea_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

// Field numbers of descriptor.proto, which make up source-location paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_ONEOF: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the descriptor set decodes")
}

#[test]
fn descriptor_set_lists_both_packages_and_every_service() {
    let set = descriptor_set();
    let packages: HashSet<&str> = set.file.iter().map(|file| file.package()).collect();
    assert_eq!(packages, HashSet::from(["fovea.v1", "fovea.worker.v1"]));

    let mut services: Vec<String> = set
        .file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .map(|s| format!("{}.{}", file.package(), s.name()))
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "fovea.v1.Generation",
            "fovea.worker.v1.KvTransfer",
            "fovea.worker.v1.Prefiller",
            "fovea.worker.v1.VisionEncoder",
            "fovea.worker.v1.Worker",
        ]
    );
    let generation = set
        .file
        .iter()
        .flat_map(|file| &file.service)
        .find(|service| service.name() == "Generation")
        .unwrap();
    let methods: Vec<&str> = generation.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Generate", "ListModels", "Tokenize"]);
    assert!(generation.method[0].server_streaming());
}

#[test]
fn every_enum_starts_with_unspecified_zero() {
    fn check(prefix: &str, enumeration: &EnumDescriptorProto) {
        let first = &enumeration.value[0];
        assert_eq!(first.number(), 0, "{prefix}{}", enumeration.name());
        assert!(
            first.name().ends_with("_UNSPECIFIED"),
            "{prefix}{}",
            enumeration.name()
        );
    }
    fn check_message(prefix: &str, message: &DescriptorProto) {
        let prefix = format!("{prefix}{}.", message.name());
        message.enum_type.iter().for_each(|e| check(&prefix, e));
        message
            .nested_type
            .iter()
            .for_each(|m| check_message(&prefix, m));
    }
    for file in descriptor_set().file {
        file.enum_type.iter().for_each(|e| check("", e));
        file.message_type.iter().for_each(|m| check_message("", m));
    }
}

#[test]
fn every_message_field_enum_value_service_and_method_has_a_comment() {
    for file in descriptor_set().file {
        let commented: HashSet<Vec<i32>> = file
            .source_code_info
            .as_ref()
            .expect("protoc was asked for source info")
            .location
            .iter()
            .filter(|location| !location.leading_comments().trim().is_empty())
            .map(|location| location.path.clone())
            .collect();
        let mut expected = Vec::new();
        for (i, message) in file.message_type.iter().enumerate() {
            message_paths(vec![FILE_MESSAGE, i as i32], message, &mut expected);
        }
        for (i, enumeration) in file.enum_type.iter().enumerate() {
            enum_paths(vec![FILE_ENUM, i as i32], enumeration, &mut expected);
        }
        for (i, service) in file.service.iter().enumerate() {
            expected.push((vec![FILE_SERVICE, i as i32], service.name().to_owned()));
            for (j, method) in service.method.iter().enumerate() {
                let path = vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32];
                expected.push((path, format!("{}.{}", service.name(), method.name())));
            }
        }
        let missing: Vec<&str> = expected
            .iter()
            .filter(|(path, _)| !commented.contains(path))
            .map(|(_, name)| name.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "{}: no comment on {missing:?}",
            file.name()
        );
    }
}

/// The paths of a message, its fields, oneofs, nested messages and enums, with readable names.
fn message_paths(path: Vec<i32>, message: &DescriptorProto, out: &mut Vec<(Vec<i32>, String)>) {
    let name = message.name();
    let child = |kind: i32, index: usize| [path.as_slice(), &[kind, index as i32]].concat();
    for (i, field) in message.field.iter().enumerate() {
        out.push((child(MESSAGE_FIELD, i), format!("{name}.{}", field.name())));
    }
    for (i, oneof) in message.oneof_decl.iter().enumerate() {
        // proto3 `optional` fields are synthetic oneofs named after the field, with no comment of
        // their own.
        if !oneof.name().starts_with('_') {
            out.push((child(MESSAGE_ONEOF, i), format!("{name}.{}", oneof.name())));
        }
    }
    for (i, nested) in message.nested_type.iter().enumerate() {
        message_paths(child(MESSAGE_NESTED, i), nested, out);
    }
    for (i, enumeration) in message.enum_type.iter().enumerate() {
        enum_paths(child(MESSAGE_ENUM, i), enumeration, out);
    }
    out.push((path, name.to_owned()));
}

/// The paths of an enum and its values, with readable names.
fn enum_paths(
    path: Vec<i32>,
    enumeration: &EnumDescriptorProto,
    out: &mut Vec<(Vec<i32>, String)>,
) {
    for (i, value) in enumeration.value.iter().enumerate() {
        let value_path = [path.as_slice(), &[ENUM_VALUE, i as i32]].concat();
        out.push((value_path, value.name().to_owned()));
    }
    out.push((path, enumeration.name().to_owned()));
}
