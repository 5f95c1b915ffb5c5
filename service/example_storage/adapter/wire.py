"""The D-Bus wire format (little-endian), marshalled and unmarshalled by code made once per
signature: what dbus-next does in pure Python for every value by dispatching on the type
at each step (and, before marshalling, walking the whole body once more to verify it).

Library-free on purpose: bus.py plugs it into dbus-next (dbus-fast's own codec is
compiled) and falls back to the library whenever this module raises, so a value this
module refuses gets exactly the library's answer (its bytes or its error). Values are
what the library takes and gives: int, float, bool, str, bytes ("ay"), list (arrays,
structs), dict ("a{..}"), and the library's Variant (``variant_type``: it has ``.signature``
and ``.value``; ``make_variant(signature, value)`` builds one without re-checking a value
that came off the wire).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from struct import Struct
from typing import Any

Writer = Callable[[bytearray, Any], None]
Reader = Callable[[bytes, int], tuple[Any, int]]

_FIXED = {  # code: (struct, alignment)
    "n": (Struct("<h"), 2), "q": (Struct("<H"), 2), "i": (Struct("<i"), 4),
    "u": (Struct("<I"), 4), "h": (Struct("<I"), 4), "x": (Struct("<q"), 8),
    "t": (Struct("<Q"), 8), "d": (Struct("<d"), 8),
}
_U32 = Struct("<I")
_ALIGN = {"y": 1, "b": 4, "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8,
          **{code: align for code, (_, align) in _FIXED.items()}}
_ZEROS = [bytes(n) for n in range(8)]
_OBJECT_PATH = re.compile(r"/|(?:/[A-Za-z0-9_]+)+")


def is_object_path(text: str) -> bool:
    """Whether ``text`` is a valid D-Bus object path."""
    return _OBJECT_PATH.fullmatch(text) is not None


# At most this many signatures remembered per table: a caller chooses the signatures of the
# variants it sends, and every new one would otherwise stay in memory for good.
MAX_REMEMBERED = 2048


def _remember(table: dict, key: str, value: Any) -> Any:
    if len(table) < MAX_REMEMBERED:
        table[key] = value
    return value


class WireError(ValueError):
    """A value or message this module does not handle (the library then decides)."""


# -- signatures ------------------------------------------------------------------------

def split_signature(signature: str) -> list[str]:
    """The complete types of ``signature``; WireError if it is not a valid one."""
    types: list[str] = []
    i = 0
    while i < len(signature):
        end = _complete_type_end(signature, i, 0)
        types.append(signature[i:end])
        i = end
    return types


def _complete_type_end(sig: str, i: int, depth: int) -> int:
    if depth > 64:
        raise WireError(f"signature nested too deeply: {sig!r}")
    if i >= len(sig):
        raise WireError(f"incomplete signature {sig!r}")
    c = sig[i]
    if c in _FIXED or c in "ybsogv":
        return i + 1
    if c == "a":
        if i + 1 < len(sig) and sig[i + 1] == "{":
            key = i + 2
            if key >= len(sig) or not (sig[key] in _FIXED or sig[key] in "ybsog"):
                raise WireError(f"dict key must be a basic type in {sig!r}")
            end = _complete_type_end(sig, _complete_type_end(sig, key, depth + 1), depth + 1)
            if end >= len(sig) or sig[end] != "}":
                raise WireError(f"unclosed dict entry in {sig!r}")
            return end + 1
        return _complete_type_end(sig, i + 1, depth + 1)
    if c == "(":
        j = i + 1
        if j < len(sig) and sig[j] == ")":
            raise WireError(f"empty struct in {sig!r}")
        while j < len(sig) and sig[j] != ")":
            j = _complete_type_end(sig, j, depth + 1)
        if j >= len(sig):
            raise WireError(f"unclosed struct in {sig!r}")
        return j + 1
    raise WireError(f"invalid type code {c!r} in {sig!r}")


def _struct_members(code: str) -> list[str]:
    return split_signature(code[1:-1])


# -- marshalling -----------------------------------------------------------------------

class Codec:
    """Writers and readers per signature, for one Variant class."""

    def __init__(self, variant_type: type, make_variant: Callable[[str, Any], Any]) -> None:
        self.variant_type = variant_type
        self.make_variant = make_variant
        self._writers: dict[str, Writer] = {}
        self._readers: dict[str, Reader] = {}
        self._body_writers: dict[str, list[Writer]] = {}
        self._body_readers: dict[str, list[Reader]] = {}

    # body -----------------------------------------------------------------------------

    def marshal_body(self, signature: str, body: list) -> bytearray:
        """``body`` (one value per complete type of ``signature``) as a message body
        starting at offset 0 (8-aligned in any message)."""
        writers = self._body_writers.get(signature)
        if writers is None:
            writers = _remember(self._body_writers, signature,
                                [self.writer(t) for t in split_signature(signature)])
        if type(body) is not list or len(body) != len(writers):
            raise WireError(f"body does not match signature {signature!r}")
        buf = bytearray()
        for write, value in zip(writers, body, strict=True):
            write(buf, value)
        return buf

    def unmarshal_body(self, signature: str, data: bytes, offset: int, end: int) -> list:
        """The values of ``signature`` in ``data[offset:end]`` (``offset`` 8-aligned in
        ``data`` as in the message). WireError if they do not fill it exactly."""
        readers = self._body_readers.get(signature)
        if readers is None:
            readers = _remember(self._body_readers, signature,
                                [self.reader(t) for t in split_signature(signature)])
        values = []
        for read in readers:
            value, offset = read(data, offset)
            values.append(value)
        if offset != end:
            raise WireError("message body length does not match its signature")
        return values

    # one complete type -------------------------------------------------------------------

    def writer(self, code: str) -> Writer:
        w = self._writers.get(code)
        if w is None:
            w = _remember(self._writers, code, self._make_writer(code))
        return w

    def reader(self, code: str) -> Reader:
        r = self._readers.get(code)
        if r is None:
            r = _remember(self._readers, code, self._make_reader(code))
        return r

    def _make_writer(self, code: str) -> Writer:  # noqa: C901 - one branch per type code
        c = code[0]
        if c in _FIXED:
            pack, align = _FIXED[c][0].pack, _FIXED[c][1]
            numeric = (int, float) if c == "d" else int

            def write_fixed(buf: bytearray, v: Any) -> None:
                if not isinstance(v, numeric):
                    raise WireError(f"{c!r} needs a number")
                pad = -len(buf) & (align - 1)
                if pad:
                    buf += _ZEROS[pad]
                buf += pack(v)
            return write_fixed
        if c == "y":
            def write_byte(buf: bytearray, v: Any) -> None:
                if type(v) is not int:
                    raise WireError("'y' needs an int")
                buf.append(v)
            return write_byte
        if c == "b":
            def write_bool(buf: bytearray, v: Any) -> None:
                if not isinstance(v, bool):
                    raise WireError("'b' needs a bool")
                pad = -len(buf) & 3
                if pad:
                    buf += _ZEROS[pad]
                buf += b"\x01\x00\x00\x00" if v else b"\x00\x00\x00\x00"
            return write_bool
        if c in "so":
            path = c == "o"

            def write_string(buf: bytearray, v: Any) -> None:
                if not isinstance(v, str):
                    raise WireError(f"{c!r} needs a str")
                if path and not _OBJECT_PATH.fullmatch(v):
                    raise WireError("not an object path")
                data = v.encode()
                pad = -len(buf) & 3
                if pad:
                    buf += _ZEROS[pad]
                buf += _U32.pack(len(data))
                buf += data
                buf.append(0)
            return write_string
        if c == "g":
            return _write_signature
        if c == "v":
            variant_type, writer = self.variant_type, self.writer

            def write_variant(buf: bytearray, v: Any) -> None:
                if not isinstance(v, variant_type):
                    raise WireError("'v' needs a Variant")
                _write_signature(buf, v.signature)
                writer(v.signature)(buf, v.value)
            return write_variant
        if c == "(":
            members = [self.writer(m) for m in _struct_members(code)]
            count = len(members)

            def write_struct(buf: bytearray, v: Any) -> None:
                if not isinstance(v, list) or len(v) != count:
                    raise WireError("a struct needs a list of its members")
                pad = -len(buf) & 7
                if pad:
                    buf += _ZEROS[pad]
                for write, item in zip(members, v, strict=True):
                    write(buf, item)
            return write_struct
        if c == "a":
            return self._make_array_writer(code[1:])
        raise WireError(f"invalid type code {c!r}")

    def _make_array_writer(self, element: str) -> Writer:
        eight = _ALIGN[element[0]] == 8

        if element == "y":
            def write_bytes(buf: bytearray, v: Any) -> None:
                if not isinstance(v, bytes):
                    raise WireError("'ay' needs bytes")
                at, begin = _array_start(buf, eight)
                buf += v
                _array_finish(buf, at, begin)
            return write_bytes
        if element[0] == "{":
            key_writer = self.writer(element[1])
            value_writer = self.writer(element[2:-1])

            def write_dict(buf: bytearray, v: Any) -> None:
                if not isinstance(v, dict):
                    raise WireError("'a{..}' needs a dict")
                at, begin = _array_start(buf, eight)
                for key, value in v.items():
                    pad = -len(buf) & 7
                    if pad:
                        buf += _ZEROS[pad]
                    key_writer(buf, key)
                    value_writer(buf, value)
                _array_finish(buf, at, begin)
            return write_dict
        item_writer = self.writer(element)

        def write_array(buf: bytearray, v: Any) -> None:
            if not isinstance(v, list):
                raise WireError("an array needs a list")
            at, begin = _array_start(buf, eight)
            for item in v:
                item_writer(buf, item)
            _array_finish(buf, at, begin)
        return write_array

    # unmarshalling -------------------------------------------------------------------------

    def _make_reader(self, code: str) -> Reader:  # noqa: C901 - one branch per type code
        c = code[0]
        if c in _FIXED:
            unpack, align = _FIXED[c][0].unpack_from, _FIXED[c][1]
            size = align

            def read_fixed(data: bytes, o: int) -> tuple[Any, int]:
                o += -o & (align - 1)
                return unpack(data, o)[0], o + size
            return read_fixed
        if c == "y":
            def read_byte(data: bytes, o: int) -> tuple[Any, int]:
                return data[o], o + 1
            return read_byte
        if c == "b":
            def read_bool(data: bytes, o: int) -> tuple[Any, int]:
                o += -o & 3
                return bool(_U32.unpack_from(data, o)[0]), o + 4
            return read_bool
        if c in "so":
            return _read_string
        if c == "g":
            return _read_signature
        if c == "v":
            readers, reader, make = self._readers, self.reader, self.make_variant

            def read_variant(data: bytes, o: int) -> tuple[Any, int]:
                sig, o = _read_signature(data, o)
                read = readers.get(sig)      # only ever holds single complete types
                if read is None:
                    if len(split_signature(sig)) != 1:
                        raise WireError(f"variant signature {sig!r} is not one complete type")
                    read = reader(sig)
                value, o = read(data, o)
                return make(sig, value), o
            return read_variant
        if c == "(":
            members = [self.reader(m) for m in _struct_members(code)]

            def read_struct(data: bytes, o: int) -> tuple[Any, int]:
                o += -o & 7
                values = []
                for read in members:
                    value, o = read(data, o)
                    values.append(value)
                return values, o
            return read_struct
        if c == "a":
            return self._make_array_reader(code[1:])
        raise WireError(f"invalid type code {c!r}")

    def _make_array_reader(self, element: str) -> Reader:
        eight = _ALIGN[element[0]] == 8

        def bounds(data: bytes, o: int) -> tuple[int, int]:
            o += -o & 3
            size = _U32.unpack_from(data, o)[0]
            o += 4
            if eight:
                o += -o & 7
            end = o + size
            if end > len(data):
                raise WireError("array runs past the message")
            return o, end

        if element == "y":
            def read_bytes(data: bytes, o: int) -> tuple[Any, int]:
                o, end = bounds(data, o)
                return bytes(data[o:end]), end
            return read_bytes
        if element[0] == "{":
            read_key = self.reader(element[1])
            read_value = self.reader(element[2:-1])

            def read_dict(data: bytes, o: int) -> tuple[Any, int]:
                o, end = bounds(data, o)
                result = {}
                while o < end:
                    o += -o & 7
                    key, o = read_key(data, o)
                    result[key], o = read_value(data, o)
                if o != end:
                    raise WireError("array length does not match its elements")
                return result, o
            return read_dict
        read_item = self.reader(element)

        def read_array(data: bytes, o: int) -> tuple[Any, int]:
            o, end = bounds(data, o)
            result = []
            while o < end:
                item, o = read_item(data, o)
                result.append(item)
            if o != end:
                raise WireError("array length does not match its elements")
            return result, o
        return read_array


def _array_start(buf: bytearray, eight: bool) -> tuple[int, int]:
    """Start an array: pad to 4, a length placeholder, padding to 8 when its elements are
    8-aligned (not counted in the length). (where the length is, where elements begin)"""
    pad = -len(buf) & 3
    if pad:
        buf += _ZEROS[pad]
    at = len(buf)
    buf += b"\x00\x00\x00\x00"
    if eight:
        pad = -len(buf) & 7
        if pad:
            buf += _ZEROS[pad]
    return at, len(buf)


def _array_finish(buf: bytearray, at: int, begin: int) -> None:
    """Fill in the length of the array whose elements began at ``begin``."""
    size = len(buf) - begin
    if size > 1 << 26:
        raise WireError("array longer than 64 MiB")
    buf[at:at + 4] = _U32.pack(size)


def _write_signature(buf: bytearray, v: Any) -> None:
    if not isinstance(v, str):
        raise WireError("'g' needs a str")
    data = v.encode()
    if len(data) > 255:
        raise WireError("signature longer than 255 bytes")
    buf.append(len(data))
    buf += data
    buf.append(0)


def _read_string(data: bytes, o: int) -> tuple[str, int]:
    o += -o & 3
    size = _U32.unpack_from(data, o)[0]
    o += 4
    end = o + size
    if end >= len(data):
        raise WireError("string runs past the message")
    return bytes(data[o:end]).decode(), end + 1


def _read_signature(data: bytes, o: int) -> tuple[str, int]:
    size = data[o]
    end = o + 1 + size
    if end >= len(data):
        raise WireError("signature runs past the message")
    return bytes(data[o + 1:end]).decode(), end + 1


# -- one object's properties ------------------------------------------------------------

class PropertiesWriter:
    """Writes ``a{sv}`` for one fixed table of properties ((name, signature), in order)
    from their plain values: each dict entry starts 8-aligned, so its key and its
    variant's signature are the same bytes every time (made once here); only the values
    are written per call. The bytes a generic writer gives the same dict of Variants."""

    def __init__(self, codec: Codec, properties: tuple[tuple[str, str], ...]) -> None:
        self._items: list[tuple[str, bytes, Writer]] = []
        for name, sig in properties:
            if len(split_signature(sig)) != 1:
                raise WireError(f"property {name}: {sig!r} is not one complete type")
            key = name.encode()
            prefix = _U32.pack(len(key)) + key + b"\x00" + bytes((len(sig),)) + sig.encode()
            prefix += b"\x00"
            self._items.append((name, prefix, codec.writer(sig)))

    def write(self, buf: bytearray, values: dict[str, Any]) -> None:
        """Append the array (``buf`` ends where its message's body offset has the same
        alignment mod 8 as ``len(buf)``)."""
        at, begin = _array_start(buf, True)
        for name, prefix, write in self._items:
            pad = -len(buf) & 7
            if pad:
                buf += _ZEROS[pad]
            buf += prefix
            write(buf, values[name])
        _array_finish(buf, at, begin)


def object_entry(codec: Codec, path: str, interface: str, properties: PropertiesWriter,
                 values: dict[str, Any]) -> bytearray:
    """``oa{sa{sv}}`` of one object with one interface, from offset 0: the body of its
    InterfacesAdded, and its dict entry in GetManagedObjects' ``a{oa{sa{sv}}}``."""
    buf = bytearray()
    codec.writer("o")(buf, path)
    at, begin = _array_start(buf, True)        # a{sa{sv}} with one entry
    codec.writer("s")(buf, interface)
    properties.write(buf, values)
    _array_finish(buf, at, begin)
    return buf


# -- messages --------------------------------------------------------------------------

# header fields of the D-Bus specification: code -> (name, type)
HEADER_FIELDS = {1: ("path", "o"), 2: ("interface", "s"), 3: ("member", "s"),
                 4: ("error_name", "s"), 5: ("reply_serial", "u"), 6: ("destination", "s"),
                 7: ("sender", "s"), 8: ("signature", "g"), 9: ("unix_fds", "u")}
_CODE_OF = {name: (code, kind) for code, (name, kind) in HEADER_FIELDS.items()}
# the fields the libraries write, in their order (the sender is the bus daemon's to set)
_WRITTEN = ("path", "interface", "member", "error_name", "reply_serial", "destination",
            "signature", "unix_fds")
_FIXED_HEADER = Struct("<BBBBIII")


def message_bytes(codec: Codec, message_type: int, flags: int, serial: int,
                  fields: dict[str, Any], body: bytes | bytearray) -> bytes:
    """A whole little-endian message: the fixed header, ``fields`` (by name, those with a
    false value left out, written in the libraries' order) and ``body``, marshalled
    already. Writes what dbus-next writes for the same message."""
    buf = bytearray(16)
    for name in _WRITTEN:
        value = fields.get(name)
        if not value:
            continue
        code, kind = _CODE_OF[name]
        pad = -len(buf) & 7
        if pad:
            buf += _ZEROS[pad]
        buf.append(code)
        buf += _VARIANT_SIGNATURE[kind]
        codec.writer(kind)(buf, value)
    _FIXED_HEADER.pack_into(buf, 0, 0x6C, message_type, flags, 1, len(body), serial,
                            len(buf) - 16)
    pad = -len(buf) & 7
    if pad:
        buf += _ZEROS[pad]
    buf += body
    return bytes(buf)


_VARIANT_SIGNATURE = {kind: bytes((1, ord(kind), 0)) for kind in "osug"}


def _read_u32(data: bytes, o: int) -> tuple[int, int]:
    o += -o & 3
    return _U32.unpack_from(data, o)[0], o + 4


_KIND_READERS: dict[str, Reader] = {"o": _read_string, "s": _read_string,
                                    "g": _read_signature, "u": _read_u32}
# header field code -> (name, its variant's signature as written, reader of its value)
_HEADER_READERS = {code: (name, _VARIANT_SIGNATURE[kind], _KIND_READERS[kind])
                   for code, (name, kind) in HEADER_FIELDS.items()}


def parse_message(codec: Codec, data: bytes) -> tuple[int, int, int, dict[str, Any], list]:
    """(type, flags, serial, header fields by name, body values) of the little-endian
    message ``data`` (exactly one message). WireError for anything unusual (another
    byte order or protocol version, an unknown header field, a length that does not
    add up): the library then reads it."""
    endian, mtype, flags, version, body_len, serial, fields_len = \
        _FIXED_HEADER.unpack_from(data, 0)
    if endian != 0x6C or version != 1:
        raise WireError("not a little-endian D-Bus 1 message")
    end = 16 + fields_len
    if end > len(data):
        raise WireError("header fields run past the message")
    fields: dict[str, Any] = {}
    o = 16
    while o < end:
        o += -o & 7
        code = data[o]
        spec = _HEADER_READERS.get(code)
        if spec is None:
            raise WireError(f"unknown header field {code}")
        name, variant_signature, read = spec
        if data[o + 1:o + 4] != variant_signature:    # its value's signature: one code
            raise WireError(f"header field {code} has another type")
        fields[name], o = read(data, o + 4)
    if o != end:
        raise WireError("header fields length does not add up")
    body_start = end + (-end & 7)
    if body_start + body_len != len(data):
        raise WireError("body length does not add up")
    signature = fields.get("signature", "")
    body = codec.unmarshal_body(signature, data, body_start, len(data)) if body_len else []
    return mtype, flags, serial, fields, body
