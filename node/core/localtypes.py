"""Between the local API's protobuf messages (proto/fcnode/v1/local.proto) and
the plain dicts that the services return and the CLI prints.

The messages are declared in the order of the keys the CLI has always printed,
so that ``to_dict(message)`` is, key for key, the dict the service returned and
``fcnode ... --json`` stays the same. The conventions (documented in the .proto):
- an ``optional`` field that is not set is absent from the dict;
- a message named ...List or ...Map with exactly one field stands for that
  field's value (a list or map with presence, or a nested map);
- a message whose fields are all one oneof stands for the member that is set;
- a ``Nullable...`` message stands for its ``value``, or None when unset;
- a string field ``X_json`` holds a JSON document: the dict key is ``X``; a
  message with only such a field stands for the document.

Pure: no I/O. A dict key with no field is a programming error (the service and
the .proto drifted apart) and raises, naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from node.core.types import ValidationError

M = TypeVar("M", bound=Message)
_JSON = "_json"


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _wrapper(desc: Descriptor) -> FieldDescriptor | None:
    """The one field of a ...List/...Map message, which stands for its value."""
    if desc.name.endswith(("List", "Map")) and len(desc.fields) == 1:
        return desc.fields[0]
    return None


def _nullable(field: FieldDescriptor) -> bool:
    return (field.message_type is not None and not field.is_repeated
            and field.message_type.name.startswith("Nullable"))


def _oneof_only(desc: Descriptor) -> bool:
    return (len(desc.oneofs) == 1 and bool(desc.fields)
            and all(f.containing_oneof is desc.oneofs[0] for f in desc.fields))


# -- message -> dict -----------------------------------------------------------
def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def _field_value(msg: Message, field: FieldDescriptor) -> Any:
    value = getattr(msg, field.name)
    if _is_map(field):
        vfield = field.message_type.fields_by_name["value"]
        return {k: _value(vfield, value[k]) for k in sorted(value)}
    if field.is_repeated:
        return [_value(field, v) for v in value]
    return _value(field, value)


def to_dict(msg: Message) -> Any:
    """The dict (or, for wrapper messages, the list or map) a message stands for."""
    desc = msg.DESCRIPTOR
    inner = _wrapper(desc)
    if inner is not None:
        return _field_value(msg, inner)
    if len(desc.fields) == 1 and desc.fields[0].name.endswith(_JSON):
        text = getattr(msg, desc.fields[0].name)
        return json.loads(text) if text else None
    if _oneof_only(desc):
        which = msg.WhichOneof(desc.oneofs[0].name)
        return None if which is None else to_dict(getattr(msg, which))
    out: dict[str, Any] = {}
    for field in desc.fields:
        if _nullable(field):
            out[field.name] = (getattr(msg, field.name).value if msg.HasField(field.name)
                               else None)
            continue
        if field.has_presence and not field.is_repeated and not msg.HasField(field.name):
            continue
        if field.name.endswith(_JSON) and field.type == FieldDescriptor.TYPE_STRING:
            text = getattr(msg, field.name)
            out[field.name[:-len(_JSON)]] = json.loads(text) if text else None
            continue
        out[field.name] = _field_value(msg, field)
    return out


# -- dict -> message -----------------------------------------------------------
def _set_item(field: FieldDescriptor, target: Any, value: Any) -> None:
    """Append one value to a repeated field."""
    if field.message_type is not None:
        fill(target.add(), value)
    else:
        target.append(value)


def _set(msg: Message, field: FieldDescriptor, value: Any) -> None:
    if _is_map(field) and not isinstance(value, dict):
        raise TypeError(f"{field.full_name} must be an object, not {type(value).__name__}")
    if field.is_repeated and not _is_map(field) and not isinstance(value, list | tuple):
        raise TypeError(f"{field.full_name} must be a list, not {type(value).__name__}")
    if _is_map(field):
        target = getattr(msg, field.name)
        vfield = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if vfield.message_type is not None:
                fill(target[k], v)
            else:
                target[k] = v
    elif field.is_repeated:
        target = getattr(msg, field.name)
        for v in value:
            _set_item(field, target, v)
    elif _nullable(field):
        getattr(msg, field.name).value = value
    elif field.message_type is not None:
        fill(getattr(msg, field.name), value)
        getattr(msg, field.name).SetInParent()  # present even when empty
    elif field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        setattr(msg, field.name, field.enum_type.values_by_name[value].number)
    else:
        setattr(msg, field.name, value)


def fill(msg: M, data: Any) -> M:
    """Set ``msg`` from the dict (or list, or map) it stands for; None is unset."""
    desc = msg.DESCRIPTOR
    inner = _wrapper(desc)
    if inner is not None:
        _set(msg, inner, data)
        return msg
    if _oneof_only(desc):
        raise TypeError(f"{desc.full_name}: set a member of its oneof, not a dict")
    if not isinstance(data, dict):
        raise TypeError(f"{desc.full_name} must be an object, not {type(data).__name__}")
    fields = desc.fields_by_name
    for key, value in data.items():
        field = fields.get(key)
        if field is None and (key + _JSON) in fields:
            if value is not None:
                setattr(msg, key + _JSON, json.dumps(value, ensure_ascii=False))
            continue
        if field is None:
            raise KeyError(f"{desc.full_name} has no field {key!r}")
        if value is None:
            continue
        _set(msg, field, value)
    return msg


def build(cls: type[M], data: Any) -> M:
    return fill(cls(), data)

class Request:
    """A request's fields as a mapping, for the operations that plug in from
    outside node/ (federation/runtime.py): they read fields by name."""

    def __init__(self, data: Mapping[str, Any] | Message | None = None) -> None:
        self.data = dict(to_dict(data) if isinstance(data, Message) else data or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def strings(self, key: str) -> list[str]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError(f"{key} must be a list of strings")
        return value
