"""adapter/wire.py against dbus-next's own codec: for thousands of random signatures, values
and messages the bytes are the same and the parsed messages equal; what wire.py refuses is
left to the library (its bytes or its error). Seeded: a failure names its seed."""

from __future__ import annotations

import io
import random
import socket
import struct

import pytest
from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next._private.marshaller import Marshaller
from dbus_next._private.unmarshaller import Unmarshaller
from dbus_next.errors import SignatureBodyMismatchError
from example_storage.adapter import bus, wire

pytestmark = pytest.mark.skipif(bus.LIBRARY != "dbus-next",
                                reason="wire.py serves dbus-next (compared with it here)")

BASIC = "ybnqiuxtdsog"
CODEC = wire.Codec(Variant, getattr(bus, "_unchecked_variant", Variant))


def random_type(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(BASIC + "hv")
    if roll < 0.7:
        return "a" + random_type(rng, depth + 1)
    if roll < 0.85:
        return "a{" + rng.choice(BASIC) + random_type(rng, depth + 1) + "}"
    return "(" + "".join(random_type(rng, depth + 1) for _ in range(rng.randint(1, 3))) + ")"


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice("abc xyz_/é€\U0001F600") for _ in range(rng.randint(0, 12)))


def random_path(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "/"
    return "".join("/" + "".join(rng.choice("aZ09_") for _ in range(rng.randint(1, 5)))
                   for _ in range(rng.randint(1, 4)))


def random_value(rng: random.Random, code: str):  # noqa: C901 - one branch per type code
    c = code[0]
    ranges = {"y": (0, 255), "n": (-2**15, 2**15 - 1), "q": (0, 2**16 - 1),
              "i": (-2**31, 2**31 - 1), "u": (0, 2**32 - 1), "h": (0, 2**32 - 1),
              "x": (-2**63, 2**63 - 1), "t": (0, 2**64 - 1)}
    if c in ranges:
        lo, hi = ranges[c]
        return rng.choice([lo, hi, 0 if lo <= 0 else lo, rng.randint(lo, hi)])
    if c == "b":
        return rng.random() < 0.5
    if c == "d":
        return rng.choice([0.0, -1.5, 1e300, rng.random(), 3])
    if c == "s":
        return random_text(rng)
    if c == "o":
        return random_path(rng)
    if c == "g":
        return random_type(rng)
    if c == "v":
        inner = random_type(rng, 2)
        return Variant(inner, random_value(rng, inner))
    if c == "(":
        return [random_value(rng, m) for m in wire.split_signature(code[1:-1])]
    if code.startswith("a{"):
        key, value = code[2], code[3:-1]
        return {random_value(rng, key): random_value(rng, value)
                for _ in range(rng.randint(0, 4))}
    if code == "ay":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 9)))
    return [random_value(rng, code[1:]) for _ in range(rng.randint(0, 4))]


def random_body(rng: random.Random) -> tuple[str, list]:
    types = [random_type(rng) for _ in range(rng.randint(0, 4))]
    return "".join(types), [random_value(rng, t) for t in types]


def library_parse(data: bytes) -> Message:
    reader = Unmarshaller(io.BytesIO(data))
    message = reader.unmarshall()
    assert message is not None
    return message


def same_message(a: Message, b: Message) -> bool:
    attrs = ("destination", "path", "interface", "member", "message_type", "flags",
             "error_name", "reply_serial", "sender", "signature", "signature_tree", "body",
             "serial")
    return all(getattr(a, k) == getattr(b, k) for k in attrs)


@pytest.mark.parametrize("seed", range(40))
def test_bodies_are_marshalled_and_read_as_the_library_does(seed):
    rng = random.Random(seed)
    for _ in range(50):
        signature, body = random_body(rng)
        ours = bytes(CODEC.marshal_body(signature, body))
        assert ours == bytes(Marshaller(signature, body).marshall()), (seed, signature, body)
        assert CODEC.unmarshal_body(signature, ours, 0, len(ours)) == body, (seed, signature)


def random_message(rng: random.Random, negotiate: bool) -> tuple[Message, bool]:
    signature, body = random_body(rng)
    kind = rng.choice(["call", "return", "error", "signal"])
    serial = rng.randint(1, 2**32 - 1)
    fds = [rng.randint(0, 5) for _ in range(rng.randint(0, 2))]
    if kind == "call":
        msg = Message(destination=rng.choice([None, ":1.7", "org.example.Storage"]),
                      path=random_path(rng), interface=rng.choice([None, "org.x.Y"]),
                      member="Do_It", signature=signature, body=body, serial=serial,
                      flags=rng.choice([MessageFlag.NONE, MessageFlag.NO_REPLY_EXPECTED]),
                      unix_fds=fds)
    elif kind == "return":
        msg = Message(message_type=MessageType.METHOD_RETURN, destination=":1.42",
                      reply_serial=rng.randint(1, 2**32 - 1), signature=signature,
                      body=body, serial=serial, unix_fds=fds)
    elif kind == "error":
        msg = Message(message_type=MessageType.ERROR, destination=":1.42",
                      error_name="org.example.Storage.Error.Failed", reply_serial=5,
                      signature=signature, body=body, serial=serial)
    else:
        msg = Message.new_signal(random_path(rng), "org.example.Storage.Pool", "Changed",
                                 signature, body)
        msg.serial = serial
    return msg, negotiate


@pytest.mark.parametrize("seed", range(20))
def test_messages_are_written_and_read_as_the_library_does(seed):
    rng = random.Random(1000 + seed)
    for _ in range(25):
        msg, negotiate = random_message(rng, rng.random() < 0.5)
        expected = bytes(msg._marshall(negotiate_unix_fd=negotiate))
        assert bytes(bus.message_bytes(msg, negotiate)) == expected, (seed, msg.signature)
        # a sender, as the bus daemon adds it, read back by both parsers
        theirs = library_parse(expected)
        mtype, flags, serial, fields, body = wire.parse_message(CODEC, expected)
        assert (mtype, flags, serial) == (theirs.message_type.value, theirs.flags.value,
                                          theirs.serial)
        assert body == theirs.body
        assert fields.get("path") == theirs.path
        assert fields.get("member") == theirs.member
        assert fields.get("signature", "") == theirs.signature


def read_all(incoming, sock: socket.socket, data: bytes, step: int) -> list[Message]:
    """Write ``data`` to ``sock`` ``step`` bytes at a time and read after each write."""
    got = []
    for at in range(0, len(data), step):
        sock.sendall(data[at:at + step])
        got += incoming.messages()
    return got


@pytest.mark.parametrize("seed", range(10))
def test_the_bus_reads_incoming_messages_as_the_library_does(seed):
    rng = random.Random(2000 + seed)
    stream = bytearray()
    sent = []
    for _ in range(20):
        msg, _ = random_message(rng, False)
        msg.unix_fds = []
        msg.sender = None
        stream += msg._marshall()
        sent.append(msg)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        # all at once, and in pieces that cut messages anywhere
        for step in (len(stream), rng.randint(1, 64)):
            got = read_all(bus._IncomingMessages(ours, False), theirs, bytes(stream), step)
            assert len(got) == len(sent)
            for msg, read in zip(sent, got, strict=True):
                assert same_message(read, library_parse(bytes(msg._marshall())))


def test_a_message_without_a_field_its_type_needs_is_left_to_the_library():
    with pytest.raises(wire.WireError):
        bus._received_message(1, 0, 5, {"path": "/"}, [], [])          # a call, no member
    with pytest.raises(wire.WireError):
        bus._received_message(3, 0, 5, {"reply_serial": 4}, [], [])    # an error, no name
    ok = bus._received_message(2, 0, 5, {"reply_serial": 4}, ["x"], [])
    assert (ok.message_type, ok.reply_serial, ok.body) == (MessageType.METHOD_RETURN, 4, ["x"])


def big_endian_ping() -> bytes:
    """A method call Peer.Ping to "/" in big-endian byte order, written by hand."""
    fields = bytearray()

    def field(code: int, sig: str, value: bytes) -> None:
        fields.extend(bytes(-len(fields) % 8))
        fields.extend(bytes([code, 1, ord(sig), 0]) + value)

    field(1, "o", struct.pack(">I", 1) + b"/\0")
    fields.extend(bytes(-len(fields) % 4))
    field(3, "s", struct.pack(">I", 4) + b"Ping\0")
    head = struct.pack(">BBBBIII", ord("B"), 1, 0, 1, 0, 77, len(fields)) + bytes(fields)
    return head + bytes(-len(head) % 8)


def test_big_endian_messages_are_left_to_the_library():
    data = big_endian_ping()
    with pytest.raises(wire.WireError):
        wire.parse_message(CODEC, data)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        (got,) = read_all(bus._IncomingMessages(ours, False), theirs, data, len(data))
    assert (got.path, got.member, got.serial) == ("/", "Ping", 77)


@pytest.mark.parametrize(("signature", "body"), [
    ("s", [5]), ("o", ["not/a/path"]), ("u", [-1]), ("u", [2**32]), ("y", [256]),
    ("b", [1]), ("as", ["abc"]), ("(si)", [["a"]]), ("a{sv}", [{"k": 5}]), ("v", ["x"]),
    ("ay", ["bytes?"]), ("s", ["\udc80"]), ("g", ["a" * 256]),
])
def test_what_wire_refuses_gets_the_library_answer(signature, body):
    with pytest.raises((wire.WireError, struct.error, ValueError)):
        CODEC.marshal_body(signature, body)
    with pytest.raises((SignatureBodyMismatchError, UnicodeEncodeError, ValueError)):
        bus.marshal(signature, body)


@pytest.mark.parametrize("signature", ["a", "(", "()", "a{vs}", "a{s}", "{ss}", "z", "(ss"])
def test_invalid_signatures_are_refused(signature):
    with pytest.raises(wire.WireError):
        wire.split_signature(signature)


def test_truncated_or_padded_messages_are_refused():
    msg = Message.new_signal("/a", "org.x.Y", "Z", "su", ["text", 7])
    msg.serial = 3
    data = bytes(msg._marshall())
    for cut in (len(data) - 1, len(data) - 4, 20):
        with pytest.raises((wire.WireError, struct.error, IndexError)):
            wire.parse_message(CODEC, data[:cut])
    with pytest.raises(wire.WireError):
        wire.parse_message(CODEC, data + bytes(8))


@pytest.mark.parametrize("seed", range(20))
def test_object_entries_are_what_the_library_writes_for_variants(seed):
    rng = random.Random(3000 + seed)
    for _ in range(20):
        names = rng.sample(["Name", "Key", "P", "LongerPropertyName", "Size", "X1"],
                           rng.randint(0, 6))
        table = tuple((n, random_type(rng, 1)) for n in names)
        values = {n: random_value(rng, sig) for n, sig in table}
        path = random_path(rng)
        ours = bytes(wire.object_entry(CODEC, path, "org.example.I", wire.PropertiesWriter(
            CODEC, table), values))
        theirs = bytes(Marshaller("oa{sa{sv}}", [path, {"org.example.I": {
            n: Variant(sig, values[n]) for n, sig in table}}]).marshall())
        assert ours == theirs, (seed, table)
        assert bus.object_entry(path, "org.example.I", table, values) == theirs


def test_signatures_a_caller_chooses_do_not_pile_up(monkeypatch):
    """Variants with ever new signatures (a caller picks them) are read correctly, and the
    tables of readers stop growing at wire.MAX_REMEMBERED."""
    monkeypatch.setattr(wire, "MAX_REMEMBERED", 50)
    codec = wire.Codec(Variant, getattr(bus, "_unchecked_variant", Variant))
    for width in range(1, 200):
        sig = "(" + "s" * width + ")"
        value = [f"x{i}" for i in range(width)]
        data = bytes(Marshaller("a{sv}", [{"k": Variant(sig, value)}]).marshall())
        (got,) = codec.unmarshal_body("a{sv}", data, 0, len(data))
        assert got["k"].signature == sig and got["k"].value == value
    assert len(codec._readers) <= 50 and len(codec._body_readers) <= 50


def test_the_librarys_signature_cache_is_bounded(monkeypatch):
    from dbus_next.signature import SignatureTree

    monkeypatch.setattr(bus, "MAX_SIGNATURE_TREES", len(SignatureTree._cache) + 20)
    for width in range(1, 100):
        tree = SignatureTree._get("(" + "u" * width + ")")
        assert tree.signature == "(" + "u" * width + ")"
    assert len(SignatureTree._cache) <= bus.MAX_SIGNATURE_TREES
    assert SignatureTree._get("s") is SignatureTree._get("s")      # still a cache


def test_a_variant_of_more_than_one_type_is_refused():
    """A variant's signature must be one complete type, also once its parts are known."""
    codec = wire.Codec(Variant, getattr(bus, "_unchecked_variant", Variant))
    good = bytes(Marshaller("v", [Variant("s", "x")]).marshall())
    assert codec.unmarshal_body("v", good, 0, len(good))[0].value == "x"
    bad = b"\x02ss\x00" + b"\x01\x00\x00\x00x\x00\x00\x00" + b"\x01\x00\x00\x00y\x00"
    with pytest.raises(wire.WireError):
        codec.unmarshal_body("v", bad, 0, len(bad))


def test_header_fields_of_another_type_or_unknown_are_refused():
    msg = Message(destination="org.x", path="/a", interface="org.x.Y", member="Do",
                  serial=3)
    data = bytearray(msg._marshall())
    member_at = data.index(bytes((3, 1, ord("s"), 0)))        # MEMBER: "s"
    wrong_type = bytearray(data)
    wrong_type[member_at + 2] = ord("o")
    unknown = bytearray(data)
    unknown[member_at] = 42
    for bad in (wrong_type, unknown):
        with pytest.raises(wire.WireError):
            wire.parse_message(CODEC, bytes(bad))
    assert wire.parse_message(CODEC, bytes(data))[3]["member"] == "Do"
