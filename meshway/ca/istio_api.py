"""Istio's CA API (`istio.io/api` security/v1alpha1/ca.proto) as protobuf message classes built at
run time from a `FileDescriptorProto`: no generated code, no build step at install.

    service IstioCertificateService {
      rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
    }
    message IstioCertificateRequest { string csr = 1; int64 validity_duration = 3;
                                      google.protobuf.Struct metadata = 4; }
    message IstioCertificateResponse { repeated string cert_chain = 1; }

The response's chain is the leaf first and the root last, as istiod answers it."""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"  # the gRPC method path
CA_AUDIENCE = "istio-ca"  # the audience of the Kubernetes token a caller presents


def _file() -> descriptor_pb2.FileDescriptorProto:
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="security/v1alpha1/ca.proto", package=PACKAGE, syntax="proto3",
                                           dependency=["google/protobuf/struct.proto"])
    request = f.message_type.add(name="IstioCertificateRequest")
    request.field.add(name="csr", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="csr")
    request.field.add(name="validity_duration", number=3, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL,
                      json_name="validityDuration")
    request.field.add(name="metadata", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=".google.protobuf.Struct", json_name="metadata")
    response = f.message_type.add(name="IstioCertificateResponse")
    response.field.add(name="cert_chain", number=1, type=F.TYPE_STRING, label=F.LABEL_REPEATED, json_name="certChain")
    service = f.service.add(name="IstioCertificateService")
    service.method.add(name="CreateCertificate", input_type=f".{PACKAGE}.IstioCertificateRequest",
                       output_type=f".{PACKAGE}.IstioCertificateResponse")
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
_pool.Add(_file())
IstioCertificateRequest = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest"))
IstioCertificateResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse"))
