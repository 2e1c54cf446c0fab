"""Caffe's ``SolverParameter`` (BVLC ``caffe.proto`` field numbers), built at run time beside the net schema.

The message lives in its own descriptor pool, which also holds a copy of :mod:`segconvert.formats.caffe_schema`'s
file, so ``net_param`` / ``train_net_param`` are full ``NetParameter`` messages. The net schema is only read.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from segconvert.formats import caffe_schema

__all__ = ["SOLVER_FIELDS", "solver_message_class"]

_PKG = "segconvert.caffe_solver"
_NET_FILE = "segconvert_caffe.proto"

# (name, number, label o/r, type, default): scalar type, "msg:Name" (net schema) or "enum:Name" (this file).
SOLVER_FIELDS: list[tuple[str, int, str, str, Any]] = [
    ("net", 24, "o", "string", None),
    ("net_param", 25, "o", "msg:NetParameter", None),
    ("train_net", 1, "o", "string", None),
    ("test_net", 2, "r", "string", None),
    ("train_net_param", 21, "o", "msg:NetParameter", None),
    ("test_net_param", 22, "r", "msg:NetParameter", None),
    ("train_state", 26, "o", "msg:NetState", None),
    ("test_state", 27, "r", "msg:NetState", None),
    ("test_iter", 3, "r", "int32", None),
    ("test_interval", 4, "o", "int32", 0),
    ("test_compute_loss", 19, "o", "bool", False),
    ("test_initialization", 32, "o", "bool", True),
    ("base_lr", 5, "o", "float", None),
    ("display", 6, "o", "int32", None),
    ("average_loss", 33, "o", "int32", 1),
    ("max_iter", 7, "o", "int32", None),
    ("iter_size", 36, "o", "int32", 1),
    ("lr_policy", 8, "o", "string", None),
    ("gamma", 9, "o", "float", None),
    ("power", 10, "o", "float", None),
    ("momentum", 11, "o", "float", None),
    ("weight_decay", 12, "o", "float", None),
    ("regularization_type", 29, "o", "string", "L2"),
    ("stepsize", 13, "o", "int32", None),
    ("stepvalue", 34, "r", "int32", None),
    ("clip_gradients", 35, "o", "float", -1.0),
    ("snapshot", 14, "o", "int32", 0),
    ("snapshot_prefix", 15, "o", "string", None),
    ("snapshot_diff", 16, "o", "bool", False),
    ("snapshot_format", 37, "o", "enum:SnapshotFormat", 1),
    ("solver_mode", 17, "o", "enum:SolverMode", 1),
    ("device_id", 18, "o", "int32", 0),
    ("random_seed", 20, "o", "int64", -1),
    ("type", 40, "o", "string", "SGD"),
    ("delta", 31, "o", "float", 1e-8),
    ("momentum2", 39, "o", "float", 0.999),
    ("rms_decay", 38, "o", "float", 0.99),
    ("debug_info", 23, "o", "bool", False),
    ("snapshot_after_train", 28, "o", "bool", True),
    ("solver_type", 30, "o", "enum:SolverType", 0),
    ("layer_wise_reduce", 41, "o", "bool", True),
    ("weights", 42, "r", "string", None),
]
_ENUMS = {
    "SnapshotFormat": [("HDF5", 0), ("BINARYPROTO", 1)],
    "SolverMode": [("CPU", 0), ("GPU", 1)],
    "SolverType": [("SGD", 0), ("NESTEROV", 1), ("ADAGRAD", 2), ("RMSPROP", 3), ("ADADELTA", 4), ("ADAM", 5)],
}
_SCALAR = {
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}
_ENUM_VALUE = {name: {number: vname for vname, number in vals} for name, vals in _ENUMS.items()}


def _default_text(ftype: str, value: Any) -> str:
    if ftype == "bool":
        return "true" if value else "false"
    if ftype.startswith("enum:"):
        return _ENUM_VALUE[ftype[5:]][value]
    return repr(float(value)) if ftype == "float" else str(value)


def _solver_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="segconvert_caffe_solver.proto", package=_PKG, syntax="proto2", dependency=[_NET_FILE]
    )
    msg = fdp.message_type.add(name="SolverParameter")
    for ename, values in _ENUMS.items():
        enum = msg.enum_type.add(name=ename)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for name, number, label, ftype, default in SOLVER_FIELDS:
        fld = msg.field.add(name=name, number=number)
        fld.label = (
            descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            if label == "r"
            else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        )
        if ftype.startswith("msg:"):
            fld.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            fld.type_name = f".{caffe_schema.PACKAGE}.{ftype[4:]}"
        elif ftype.startswith("enum:"):
            fld.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
            fld.type_name = f".{_PKG}.SolverParameter.{ftype[5:]}"
        else:
            fld.type = _SCALAR[ftype]
        if default is not None:
            fld.default_value = _default_text(ftype, default)
    return fdp


@cache
def solver_message_class() -> type:
    """The generated ``SolverParameter`` message class."""
    pool = descriptor_pool.DescriptorPool()
    net_file = descriptor_pb2.FileDescriptorProto()
    caffe_schema._pool().FindFileByName(_NET_FILE).CopyToProto(net_file)
    pool.Add(net_file)
    pool.Add(_solver_file())
    desc = pool.FindMessageTypeByName(f"{_PKG}.SolverParameter")
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.22
